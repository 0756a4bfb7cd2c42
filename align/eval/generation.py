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


def prompt_ids(tokenizer, prompt, *, chat: bool = True, options: dict | None = None) -> list[int]:
    """Token ids the model is conditioned on: the chat template up to the assistant's turn (with the stage's
    ``chat_template_kwargs`` and the row's ``options``: its tools and template arguments), or raw text."""
    if chat:
        from align.chat_templates import render

        if tokenizer.chat_template is None:
            raise AlignError("this tokenizer has no chat template, so prompts cannot be formatted as a conversation; "
                             "continue them as raw text instead (chat=False, `align generate --raw`).")
        return render(tokenizer, as_messages(prompt), options, add_generation_prompt=True, tokenize=True,
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
    ids = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
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


NEUTRAL_DECODING = {  # every logits processor transformers applies while sampling, switched off
    "top_k": 0, "top_p": 1.0, "min_p": None, "top_h": None, "typical_p": 1.0, "epsilon_cutoff": 0.0,
    "eta_cutoff": 0.0, "repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "no_repeat_ngram_size": 0,
    "encoder_no_repeat_ngram_size": 0, "bad_words_ids": None, "suppress_tokens": None, "begin_suppress_tokens": None,
    "sequence_bias": None, "min_length": 0, "min_new_tokens": None, "forced_bos_token_id": None,
    "forced_eos_token_id": None, "exponential_decay_length_penalty": None, "renormalize_logits": False,
    "guidance_scale": None, "watermarking_config": None, "num_beams": 1, "num_return_sequences": 1,
    "remove_invalid_values": False, "stop_strings": None, "length_penalty": 1.0,
}


def decoding_config(*, max_new_tokens: int, stop_ids: list[int], pad_id: int, greedy: bool = False,
                    temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0):
    """A GenerationConfig built from scratch: neutral except what is declared here. A checkpoint's
    ``generation_config.json`` (Qwen's repetition_penalty 1.05, Llama's temperature 0.6 and top_p 0.9, a min_p or
    suppress_tokens ...) must not change what is sampled: log-probs, KL and win rates assume the declared
    distribution. Use it through ``declared_decoding`` so transformers cannot fill unset fields from the model."""
    from transformers import GenerationConfig

    sampling = dict(do_sample=False) if greedy else dict(do_sample=True, temperature=temperature)
    return GenerationConfig(**{**NEUTRAL_DECODING, **sampling, **({} if greedy else {"top_p": top_p, "top_k": top_k})},
                            max_new_tokens=max_new_tokens, eos_token_id=list(stop_ids), pad_token_id=pad_id,
                            use_cache=True)


def neutral_generation_config(model):
    """The model's generation_config with every sampling setting neutral and its stop/pad/BOS ids kept: for
    trainers (TRL's GRPO/RLOO) that declare a few settings and let transformers fill the rest from the model."""
    from transformers import GenerationConfig

    own = model.generation_config
    return GenerationConfig(**NEUTRAL_DECODING, do_sample=True, temperature=1.0, bos_token_id=own.bos_token_id,
                            eos_token_id=own.eos_token_id, pad_token_id=own.pad_token_id)


@contextlib.contextmanager
def declared_decoding(model, config):
    """``model.generate`` samples with exactly ``config``: transformers fills every field left unset from the
    model's own generation_config, so that is swapped for ``config`` for the duration."""
    target = model.get_base_model() if hasattr(model, "get_base_model") else model  # a peft model generates with its base
    saved = target.generation_config
    target.generation_config = config
    try:
        yield config
    finally:
        target.generation_config = saved


def ignored_generation_settings(model) -> dict:
    """What the checkpoint's generation_config asks for that align's declared decoding leaves out (for the log)."""
    own = getattr(model, "generation_config", None)
    if own is None:
        return {}
    defaults = own._get_default_generation_params()
    values = {k: getattr(own, k, None) for k in ("do_sample", "temperature", *NEUTRAL_DECODING)}
    return {k: v for k, v in values.items() if v is not None and v not in (defaults.get(k), NEUTRAL_DECODING.get(k))}


def response_ids(generated: torch.Tensor, stop: list[int]) -> list[list[int]]:
    """Each row's sampled tokens up to and including its first stop token (padding after it dropped)."""
    rows = []
    for row in generated.tolist():
        end = next((i + 1 for i, token in enumerate(row) if token in stop), len(row))
        rows.append(row[:end])
    return rows


def generate(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, greedy: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 16,
             seed: int | None = None, chat: bool = True, return_ids: bool = False, options: list | None = None):
    """One response per prompt, decoded without special tokens; with ``return_ids`` also
    ``(prompt_ids, response_ids)`` per prompt: the exact tokens sampled, for scoring (KL) without re-tokenising.
    ``options``: per prompt, what its dataset row adds to rendering it (``chat_templates.row_options``: tools,
    template arguments).

    Left padding keeps every prompt's last token next to the first generated one, which batched
    decoding with a KV cache needs; the padding is done here, so the tokenizer is left untouched.
    Decoding is exactly what is declared here (``decoding_config``): ``top_k=0`` and ``top_p=1.0`` mean no
    truncation, and nothing from the checkpoint's generation_config applies, so at temperature 1 the samples come
    from the model's own distribution, which sample-based KL estimates assume. ``greedy`` ignores the sampling settings.
    """
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stop = stop_ids(model, tokenizer)
    config = decoding_config(max_new_tokens=max_new_tokens, stop_ids=stop, pad_id=pad_id, greedy=greedy,
                             temperature=temperature, top_p=top_p, top_k=top_k)
    options = options or [None] * len(prompts)
    encoded = [prompt_ids(tokenizer, p, chat=chat, options=o) for p, o in zip(prompts, options, strict=True)]
    device = model.device
    texts, ids = [], []
    with seeded(seed, device), eval_mode(model), declared_decoding(model, config):
        for start in range(0, len(encoded), batch_size):
            batch_ids, mask = pad_batch(encoded[start:start + batch_size], pad_id, "left")
            out = model.generate(input_ids=batch_ids.to(device), attention_mask=mask.to(device), generation_config=config)
            sampled = response_ids(out[:, batch_ids.shape[1]:], stop)
            ids += sampled
            texts += tokenizer.batch_decode(sampled, skip_special_tokens=True)
    return (texts, list(zip(encoded, ids))) if return_ids else texts


def generate_chat(model_or_path, prompts, *, tokenizer=None, model_kwargs: dict | None = None, **kwargs) -> list[str]:
    """``generate`` for a model folder (a stage output, LoRA merged) or a loaded model; used by ``align generate``.
    ``model_kwargs``: how to load the folder (``align.models.MODEL_KWARGS``)."""
    from align.models import load_causal_lm, load_tokenizer

    from align.chat_templates import prepare_chat_template

    if isinstance(model_or_path, (str, Path)):
        model = load_causal_lm(model_or_path, field="stage_dir", model_kwargs=model_kwargs)
        tokenizer = tokenizer or load_tokenizer(model_or_path, field="stage_dir", model_kwargs=model_kwargs)
    else:
        model = model_or_path
        tokenizer = tokenizer or load_tokenizer(model.name_or_path)
    chat_template = kwargs.pop("chat_template", None)
    if kwargs.get("chat", True):
        prepare_chat_template(tokenizer, chat_template, where="chat_template")
    note_ignored_settings(model, "generate")
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    return generate(model, tokenizer, prompts, **kwargs)


def note_ignored_settings(model, where: str) -> dict:
    """Say once which of the checkpoint's own sampling settings the declared decoding overrides."""
    import logging

    ignored = ignored_generation_settings(model)
    if ignored:
        logging.getLogger("align").info(
            "%s: the model's generation_config.json sets %s; align samples with the declared decoding instead, so "
            "scores, log-probs and KL refer to the distribution actually sampled.", where,
            ", ".join(f"{k}={v}" for k, v in ignored.items()))
    return ignored
