"""KL(pi || pi_ref) of a policy to its reference, estimated from the policy's own samples.

For a response y ~ pi(.|x) with tokens y_t and r_t = log pi_ref(y_t|x, y_<t) - log pi(y_t|x, y_<t):

- k1 = sum_t -r_t: the log-likelihood ratio of the sequence. Unbiased, but a single sample can be
  negative and its variance grows with the KL.
- k3 = sum_t (exp(r_t) - 1 - r_t): every term is >= 0, and since E_{y_t~pi}[exp(r_t)] = 1 each term
  is an unbiased estimate of that step's KL, so the sum is unbiased for the sequence KL too, with
  lower variance (Schulman, "Approximating KL divergence", 2020).

Both need samples from pi itself at temperature 1 without top-k/top-p truncation; otherwise they
estimate something else. ``kl_from_ids`` scores the exact token ids that were sampled (what the
evaluate stage uses): re-rendering decoded text through a chat template would score tokens that were
never sampled (Qwen's newline after ``<|im_end|>``, Llama-3's ``|trim``) and lose a model's
non-canonical tokenisation of its own output. ``kl_to_reference`` takes text, for responses that
came from elsewhere.
"""

from __future__ import annotations

import torch

from align.errors import AlignError
from align.eval.generation import as_messages, eval_mode, pad_batch, prompt_ids

ESTIMATOR = ("k1 = sum over response tokens of (log pi - log pi_ref) on the policy's own samples (unbiased); "
             "k3 = sum of (exp(r) - 1 - r) with r = log pi_ref - log pi (unbiased, always >= 0, lower variance)")


def common_prefix_length(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def conversation_ids(tokenizer, prompt, response: str, *, chat: bool = True, options: dict | None = None
                     ) -> tuple[list[int], int]:
    """Token ids of prompt + response and the index where the response starts.

    With the chat template the whole conversation is rendered at once (as SFT/DPO/reward training
    see it) and the response starts where it stops agreeing with the generation prompt.
    """
    from align.chat_templates import render

    context = prompt_ids(tokenizer, prompt, chat=chat, options=options)
    if not chat:
        return context + tokenizer(response, add_special_tokens=False)["input_ids"], len(context)
    full = render(tokenizer, as_messages(prompt) + [{"role": "assistant", "content": response}], options,
                  tokenize=True, return_dict=True)["input_ids"]
    return full, common_prefix_length(full, context)


def token_logprobs(model, sequences: list[list[int]], starts: list[int], *, pad_id: int = 0,
                   batch_size: int = 16) -> list[torch.Tensor]:
    """log p(x_t | x_<t) for t >= starts[i] in each sequence (float32, on CPU).

    Right padding: with a causal mask the real tokens never see the padding after them.
    """
    if min(starts, default=1) < 1:
        raise ValueError("a scored token needs at least one token of context before it")
    out = []
    with eval_mode(model):
        for i in range(0, len(sequences), batch_size):
            batch, batch_starts = sequences[i:i + batch_size], starts[i:i + batch_size]
            ids, mask = pad_batch(batch, pad_id, "right")
            ids, mask = ids.to(model.device), mask.to(model.device)
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
            logp = (logits.gather(-1, ids[:, 1:, None]).squeeze(-1) - logits.logsumexp(-1)).cpu()
            out += [logp[row, start - 1:len(seq) - 1] for row, (seq, start) in enumerate(zip(batch, batch_starts))]
    return out


def sequence_logprobs(model, tokenizer, prompts: list, responses: list[str], *, batch_size: int = 16,
                      chat: bool = True) -> list[torch.Tensor]:
    """Per-token log-probabilities of each response's tokens given its prompt."""
    encoded = [conversation_ids(tokenizer, p, r, chat=chat) for p, r in zip(prompts, responses, strict=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return token_logprobs(model, [ids for ids, _ in encoded], [start for _, start in encoded], pad_id=pad_id,
                          batch_size=batch_size)


def kl_estimates(logp: torch.Tensor, ref_logp: torch.Tensor) -> tuple[float, float]:
    """(k1, k3) for one sampled response, from its per-token log-probs under pi and pi_ref."""
    r = (ref_logp - logp).double()
    return float(-r.sum()), float((r.exp() - 1 - r).sum())


def vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


def kl_from_ids(policy, reference, sampled: list[tuple[list[int], list[int]]], *, pad_id: int = 0,
                batch_size: int = 16) -> dict:
    """Per-sample KL(pi || pi_ref), k1 and k3 (see module doc), from ``(prompt_ids, response_ids)`` pairs as
    ``generate(return_ids=True)`` returns them: the log-probs of exactly the sampled tokens, under both models."""
    if vocab_size(policy) != vocab_size(reference):
        raise AlignError(f"KL to the reference is undefined: the policy predicts {vocab_size(policy)} tokens and the "
                         f"reference {vocab_size(reference)}, so they do not share a tokenizer. Compare them with bits "
                         f"per byte and judges instead.")
    sequences, starts = [list(p) + list(r) for p, r in sampled], [len(p) for p, _ in sampled]
    logp = token_logprobs(policy, sequences, starts, pad_id=pad_id, batch_size=batch_size)
    ref_logp = token_logprobs(reference, sequences, starts, pad_id=pad_id, batch_size=batch_size)
    k1, k3 = zip(*(kl_estimates(a, b) for a, b in zip(logp, ref_logp))) if logp else ((), ())
    return {"estimator": ESTIMATOR, "k1": list(k1), "k3": list(k3), "response_tokens": [len(x) for x in logp],
            "k1_mean": sum(k1) / len(k1) if k1 else None, "k3_mean": sum(k3) / len(k3) if k3 else None}


def kl_to_reference(policy, reference, tokenizer, prompts: list, responses: list[str], *, reference_tokenizer=None,
                    batch_size: int = 16, chat: bool = True) -> dict:
    """``kl_from_ids`` for responses given as text (sampled from ``policy`` elsewhere), re-tokenised with the
    chat formatting of generation.

    Both models must share ``tokenizer``: the KL between distributions over different token
    vocabularies is not defined, so a mismatch is an error rather than a number.
    """
    if reference_tokenizer is not None and reference_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise AlignError("KL to the reference is undefined: the policy and the reference use different tokenizers "
                         "(different vocabularies), so their next-token distributions are over different sets. "
                         "Compare them with bits per byte and judges instead.")
    encoded = [conversation_ids(tokenizer, p, r, chat=chat) for p, r in zip(prompts, responses, strict=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return kl_from_ids(policy, reference, [(ids[:start], ids[start:]) for ids, start in encoded], pad_id=pad_id,
                       batch_size=batch_size)
