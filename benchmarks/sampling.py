"""Where sampling time goes on a small model, and what batch size and thread count do to it.

    python benchmarks/sampling.py [--model runs/quickstart/sft] [--samples 256] [--new-tokens 64]

Samples ``--samples`` responses of exactly ``--new-tokens`` tokens (stop tokens disabled, so every
configuration does the same work) with ``align.eval.generation``'s declared decoding, at several
generation batch sizes and torch thread counts, and prints tokens per second. A second table splits
one batch's time into the model's forward passes and everything else ``generate`` does per token
(logits processing, sampling, cache bookkeeping, stopping criteria), from a forward hook's timings.
Without ``--model`` it builds a llama-tiny with a 2,048-token vocabulary (the quickstart's shapes).
"""

from __future__ import annotations

import argparse
import time

import torch


def tiny_model():
    from align.data.builtin import load_builtin
    from align.models import build_model
    from align.stages.tokenizer import train_bpe

    tokenizer = train_bpe(load_builtin("reviews", "pretrain", size=2000)["text"], vocab_size=2048)
    return build_model({"preset": "llama-tiny"}, tokenizer, seed=0), tokenizer


def sample(model, tokenizer, prompts, batch_size: int, new_tokens: int) -> float:
    """Seconds to sample ``new_tokens`` tokens for every prompt."""
    from align.eval.generation import decoding_config, declared_decoding, pad_batch, prompt_ids

    config = decoding_config(max_new_tokens=new_tokens, stop_ids=[], pad_id=tokenizer.pad_token_id)
    config.min_new_tokens = new_tokens  # never stop early: equal work everywhere
    encoded = [prompt_ids(tokenizer, p) for p in prompts]
    start = time.perf_counter()
    with torch.inference_mode(), declared_decoding(model, config):
        for i in range(0, len(encoded), batch_size):
            ids, mask = pad_batch(encoded[i:i + batch_size], tokenizer.pad_token_id, "left")
            model.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    return time.perf_counter() - start


def forward_share(model, tokenizer, prompts, batch_size: int, new_tokens: int) -> tuple[float, float]:
    """(total, forward) seconds for one batch: the rest is generate's own per-token work."""
    spent = [0.0]

    def before(*_):
        spent.append(-time.perf_counter())

    def after(*_):
        spent[0] += time.perf_counter() + spent.pop()

    hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
    try:
        total = sample(model, tokenizer, prompts[:batch_size], batch_size, new_tokens)
    finally:
        for h in hooks:
            h.remove()
    return total, spent[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a causal LM folder with a chat template (default: a fresh llama-tiny)")
    parser.add_argument("--samples", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    args = parser.parse_args()
    from align.data.builtin import load_builtin

    if args.model:
        from align.models import load_causal_lm, load_tokenizer

        model, tokenizer = load_causal_lm(args.model), load_tokenizer(args.model)
    else:
        model, tokenizer = tiny_model()
    model.eval()
    prompts = list(load_builtin("reviews", "prompts", size=args.samples)["prompt"])[:args.samples]
    sample(model, tokenizer, prompts[:8], 8, 4)  # warm-up
    print(f"| torch threads | batch size | seconds for {len(prompts)} x {args.new_tokens} tokens | tokens / s |")
    print("|---|---|---|---|")
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for batch_size in args.batch_sizes:
            seconds = sample(model, tokenizer, prompts, batch_size, args.new_tokens)
            print(f"| {threads} | {batch_size} | {seconds:.2f} | {len(prompts) * args.new_tokens / seconds:,.0f} |", flush=True)
    print("\n| batch size | seconds per token step | forward | generate's own work |\n|---|---|---|---|")
    for batch_size in args.batch_sizes:
        total, forward = forward_share(model, tokenizer, prompts, batch_size, args.new_tokens)
        steps = args.new_tokens
        print(f"| {batch_size} | {1000 * total / steps:.1f} ms | {forward / total:.0%} | {1 - forward / total:.0%} |", flush=True)


if __name__ == "__main__":
    main()
