"""Pretraining throughput and quality on tiny Shakespeare, at a fixed wall-clock budget.

    python benchmarks/pretrain_shakespeare.py --budget 124 [--text ../shared/data/tinyshakespeare/input.txt]

Runs recipes/shakespeare.yaml (byte-level BPE + llama-tiny, last 10 % of the text held out) with
max_steps chosen so that training takes about --budget seconds on this machine (a 20-step probe
measures the step time first), then prints tokens/s, achieved FLOP/s against this machine's
measured float32 matmul FLOP/s, and held-out bits per byte. The reference point (../shared/data
README): nanoGPT's 4-layer/128-wide character model reaches 2.72 bits per byte in 124 s here.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def matmul_flops(n: int = 1024, reps: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    start = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def train_flops_per_token(config, block_size: int) -> float:
    """6N for the weights (forward + backward) plus the attention score/value matmuls."""
    from transformers import LlamaForCausalLM

    n = sum(p.numel() for p in LlamaForCausalLM(config).parameters())
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * block_size


def run(text: str, out: Path, steps: int, extra: list[str]):
    from align.recipe import load_recipe
    from align.runner import run_recipe

    recipe = load_recipe(REPO / "recipes" / "shakespeare.yaml",
                         [f"datasets.text.path={text}", f"stages.pretrain.args.max_steps={steps}",
                          "stages.pretrain.args.eval_steps=100000", "stages.pretrain.args.save_steps=100000", *extra],
                         output_dir=str(out))
    return run_recipe(recipe, echo=lambda *a: None)["pretrain"], recipe.stages["pretrain"].spec.get("block_size", 256)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--budget", type=float, default=124.0, help="training seconds")
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        probe, _ = run(args.text, Path(tmp) / "probe", 20, args.set)
        steps = int(args.budget / (probe["train_runtime_s"] / 20))
        result, block_size = run(args.text, Path(tmp) / "run", steps, args.set)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(Path(tmp) / "run" / "pretrain")
    peak = matmul_flops()
    achieved = result["tokens_per_second"] * train_flops_per_token(config, block_size)
    print(json.dumps({
        "steps": steps, "train_seconds": round(result["train_runtime_s"], 1), "parameters": result["parameters"],
        "tokens_per_second": round(result["tokens_per_second"]), "achieved_gflops": round(achieved / 1e9, 2),
        "matmul_gflops": round(peak / 1e9, 2), "utilisation": round(achieved / peak, 3),
        "heldout_bits_per_byte": round(result["bits_per_byte"], 3), "heldout_loss": round(result["eval_loss"], 3),
        "torch_threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
