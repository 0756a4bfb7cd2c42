"""Perplexity / bits per byte of a causal LM on text.

Plain functions used by the stages directly and wrapped by the ``evaluate`` modules under
``align/eval/metrics/`` (``evaluate.load(str(align.eval.metric_path("perplexity")))``).
"""

from __future__ import annotations

import math

from align.errors import AlignError
from align.eval.kl import token_logprobs


def context_length(model, tokenizer) -> int:
    """The longest window the model takes: its position table, or the tokenizer's limit if smaller."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    limits = [n for n in limits if n is not None and n < 1_000_000]  # tokenizers say 1e30 for "unset"
    if not limits:
        raise AlignError("perplexity: neither the model nor the tokenizer says how long a context it takes; "
                         "pass max_length.")
    return min(limits)


def windows(n_tokens: int, max_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, first, end): score tokens [first, end) given ids[begin:end]; every token 1..n-1 once.

    A text that fits is one window. A longer one is cut into ``stride`` scored tokens per window,
    each window carrying up to ``max_length - stride`` earlier tokens as context (the sliding
    window of HF's perplexity guide); so tokens late in a long text see at most ``max_length - 1``
    tokens of context, and at least ``max_length - stride``.
    """
    if n_tokens <= max_length:
        return [(0, 1, n_tokens)]
    out = []
    for first in range(1, n_tokens, stride):
        end = min(first + stride, n_tokens)
        out.append((max(0, end - max_length), first, end))
    return out


def perplexity(model, tokenizer, texts: list[str], *, batch_size: int = 8, max_length: int | None = None,
               stride: int | None = None) -> dict:
    """Token NLL of each text under a causal LM, as perplexities and bits per byte.

    Every text starts from BOS (EOS where the tokenizer has no BOS), so its first token is
    predicted too and every UTF-8 byte is covered: bits per byte = total NLL / (ln 2 * bytes),
    which compares models with different tokenizers. No EOS is appended (the end of a text is not
    scored). Texts longer than ``max_length`` (default: the model's context) are scored with
    sliding windows that advance by ``stride`` tokens (default ``max_length // 2``), never truncated.
    """
    start_id = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start_id is None:
        raise AlignError("perplexity: the tokenizer has neither a BOS nor an EOS token to predict the first token from.")
    if not texts:
        raise AlignError("perplexity: no texts to score.")
    max_length = int(max_length or context_length(model, tokenizer))
    stride = int(stride or max(1, max_length // 2))
    if not 1 <= stride < max_length:
        raise AlignError(f"perplexity: stride must be at least 1 and less than max_length ({max_length}), got {stride}.")
    sequences, starts, owners, n_tokens = [], [], [], []
    for i, text in enumerate(texts):
        if not text:
            raise AlignError(f"perplexity: text {i} is empty; an empty text has no tokens to score.")
        ids = [start_id] + tokenizer(text, add_special_tokens=False)["input_ids"]
        n_tokens.append(len(ids) - 1)
        for begin, first, end in windows(len(ids), max_length, stride):
            sequences.append(ids[begin:end])
            starts.append(first - begin)
            owners.append(i)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start_id
    logps = token_logprobs(model, sequences, starts, pad_id=pad_id, batch_size=batch_size)
    nlls = [0.0] * len(texts)
    for owner, logp in zip(owners, logps):
        nlls[owner] -= float(logp.double().sum())
    total_nll, tokens = sum(nlls), sum(n_tokens)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    perplexities = [math.exp(nll / n) for nll, n in zip(nlls, n_tokens)]
    return {"perplexities": perplexities, "mean_perplexity": sum(perplexities) / len(perplexities),
            "perplexity": math.exp(total_nll / tokens), "nlls": nlls, "total_nll": total_nll, "tokens": tokens,
            "bytes": n_bytes, "bits_per_byte": total_nll / (math.log(2) * n_bytes), "max_length": max_length,
            "stride": stride}
