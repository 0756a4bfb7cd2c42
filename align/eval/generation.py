"""Batched sampling from a causal LM, formatted exactly as the policy saw prompts in training.

Prompts are a user message (a string) or a conversation (a list of ``{"role", "content"}``
messages); both go through the tokenizer's chat template with the generation prompt, so the model
answers as the assistant and stops at the end-of-turn token. ``chat=False`` continues a string as
raw text (a pretrained model that never saw the template).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from align.errors import AlignError


def as_messages(prompt) -> list[dict]:
    """A user message becomes a one-turn conversation; a conversation is used as given."""
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def prompt_ids(tokenizer, prompt, *, chat: bool = True) -> list[int]:
    """Token ids the model is conditioned on: the chat template up to the assistant's turn, or raw text."""
    if chat:
        if tokenizer.chat_template is None:
            raise AlignError("this tokenizer has no chat template, so prompts cannot be formatted as a conversation; "
                             "continue them as raw text instead (chat=False, `align generate --raw`).")
        return tokenizer.apply_chat_template(as_messages(prompt), add_generation_prompt=True, tokenize=True,
                                             return_dict=True)["input_ids"]
    if not isinstance(prompt, str):
        raise AlignError(f"chat=False continues raw text, so each prompt must be a string; got {type(prompt).__name__}.")
    return tokenizer(prompt)["input_ids"]


def pad_batch(sequences: list[list[int]], pad_id: int, side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """input_ids and attention_mask for token lists of unequal length, padded on ``side``."""
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        cols = slice(width - len(seq), width) if side == "left" else slice(0, len(seq))
        ids[row, cols] = torch.tensor(seq, dtype=torch.long)
        mask[row, cols] = 1
    return ids, mask


def stop_ids(model, tokenizer) -> list[int]:
    """EOS and any end-of-turn token the model's generation config adds (e.g. ``<|im_end|>``)."""
    ids = model.generation_config.eos_token_id if model.generation_config is not None else None
    ids = [ids] if isinstance(ids, int) else list(ids or [])
    return sorted({tokenizer.eos_token_id, *ids} - {None})


@contextlib.contextmanager
def eval_mode(model):
    """Dropout off and no autograd for the duration, the model's training flag restored after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device):
    """Seed the RNG for one call without disturbing the caller's random state."""
    if seed is None:
        yield
        return
    cuda = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


def generate(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, greedy: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 16,
             seed: int | None = None, chat: bool = True) -> list[str]:
    """One response per prompt, decoded without special tokens.

    Left padding keeps every prompt's last token next to the first generated one, which batched
    decoding with a KV cache needs; the padding is done here, so the tokenizer is left untouched.
    ``top_k=0`` and ``top_p=1.0`` mean no truncation (they override generation_config defaults such
    as top_k=50): at temperature 1 the samples then come from the model's own distribution, which
    is what sample-based KL estimates assume. ``greedy`` ignores the three sampling settings.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    decoding = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature, top_p=top_p,
                                                          top_k=top_k)
    encoded = [prompt_ids(tokenizer, p, chat=chat) for p in prompts]
    device = model.device
    responses = []
    with seeded(seed, device), eval_mode(model):
        for start in range(0, len(encoded), batch_size):
            ids, mask = pad_batch(encoded[start:start + batch_size], pad_id, "left")
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                                 max_new_tokens=max_new_tokens, eos_token_id=stop_ids(model, tokenizer),
                                 pad_token_id=pad_id, use_cache=True, **decoding)
            responses += tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
    return responses


def generate_chat(model_or_path, prompts, *, tokenizer=None, **kwargs) -> list[str]:
    """``generate`` for a model folder (a stage output, LoRA merged) or a loaded model; used by ``align generate``."""
    from align.models import load_causal_lm, load_tokenizer

    if isinstance(model_or_path, (str, Path)):
        model = load_causal_lm(model_or_path, field="stage_dir")
        tokenizer = tokenizer or load_tokenizer(model_or_path, field="stage_dir")
    else:
        model = model_or_path
        tokenizer = tokenizer or load_tokenizer(model.name_or_path)
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return generate(model, tokenizer, prompts, **kwargs)
