"""Pretraining quality on tiny Shakespeare at a fixed wall-clock budget, against nanoGPT's CPU model.

    python benchmarks/pretrain_shakespeare.py --budget 105 [--text ../shared/data/tinyshakespeare/input.txt]
                                              [--set stages.pretrain.block_size=256 ...]

Runs recipes/shakespeare.yaml (byte-level BPE learned from the first 90 % of the text, a small Llama,
the last 10 % held out by character position as nanoGPT splits it) in this process, and trains for
exactly ``--budget`` seconds: the recipe's learning-rate schedule (warmup, then cosine to zero) is laid
over the wall-clock budget instead of over ``max_steps``, and training stops when the budget is spent.
(One callback, added to the pretrain stage's ``Trainer`` for this process only, does both; nothing is
estimated beforehand, so no probe run and no unused budget.) Then prints the steps and tokens it
managed, training time and the whole process's wall time (interpreter start to the saved model,
imports, tokenizer, packing, held-out evaluation and saving included), the training FLOP/s against
this machine's measured float32 matmul FLOP/s, and held-out bits per byte.

The reference point (../shared/data/README.md): nanoGPT's 4-layer, 128-wide character model reaches
2.72 bits per byte on the same held-out 10 % in 78-124 s whole-process wall time on this machine kind.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
from transformers import TrainerCallback

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def process_seconds() -> float:
    """Wall time since this process started (interpreter start-up and imports included)."""
    return time.time() - psutil.Process().create_time()


def matmul_flops(n: int = 2048, trials: int = 5) -> dict:
    """float32 n x n matmul FLOP/s on all torch threads: the best and the median of ``trials`` timings
    of ~1 s each, after a warm-up. The best is what this machine can do; the spread shows how much
    other work on the cores disturbed the measurement."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        torch.mm(a, b)
    flop = 2 * n**3
    reps = max(3, int(1.0 / (flop / 150e9)))  # ~1 s at 150 GFLOP/s
    rates = []
    for _ in range(trials):
        start = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        rates.append(flop * reps / (time.perf_counter() - start))
    return {"best": max(rates), "median": statistics.median(rates)}


def train_flops_per_token(config, block_size: int) -> float:
    """Training FLOPs per token, PaLM's way: 6 per weight that multiplies (forward + backward; the
    input embedding is a lookup, the output projection a matmul, tied or not) plus 12 * layers *
    width * context for the attention score and value matmuls (computed densely)."""
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM(config)
    n = sum(p.numel() for p in model.parameters())
    if not config.tie_word_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return 6 * n + 12 * config.num_hidden_layers * config.hidden_size * block_size


class WallClockSchedule(TrainerCallback):
    """The run's LR schedule over wall-clock time: at each step the multiplier is what the configured
    schedule (``lr_scheduler_type``, ``warmup_steps``) gives at ``elapsed / budget`` of its length,
    and training stops once the next step would end past the budget."""

    RESOLUTION = 10_000  # the schedule is evaluated on this many virtual steps

    def __init__(self, budget: float):
        self.budget = budget
        self.start = self.last = None
        self.step_seconds = 0.0

    def on_train_begin(self, args, state, control, lr_scheduler=None, optimizer=None, **_):
        from transformers import get_scheduler

        shape = get_scheduler(args.lr_scheduler_type, optimizer=torch.optim.SGD([torch.zeros(1)], lr=1.0),
                              num_warmup_steps=args.get_warmup_steps(self.RESOLUTION),
                              num_training_steps=self.RESOLUTION, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        multiplier = shape.lr_lambdas[0]
        # LambdaLR calls these after every optimizer step to set the next step's learning rate.
        lr_scheduler.lr_lambdas = [lambda _step: multiplier(round(self.progress() * self.RESOLUTION))
                                   for _ in lr_scheduler.lr_lambdas]
        self.start = self.last = time.perf_counter()

    def progress(self) -> float:
        return min((time.perf_counter() - self.start) / self.budget, 1.0)

    def on_step_end(self, args, state, control, **_):
        now = time.perf_counter()
        self.step_seconds, self.last = now - self.last, now
        if now - self.start + self.step_seconds / 2 >= self.budget:
            control.should_training_stop = True


def run(text: str, out: Path, budget: float, extra: list[str]) -> dict:
    import transformers

    from align.recipe import load_recipe
    from align.runner import run_recipe

    schedule = WallClockSchedule(budget)

    class BudgetTrainer(transformers.Trainer):  # the pretrain stage builds `transformers.Trainer`
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.add_callback(schedule)

    transformers.Trainer = BudgetTrainer
    recipe = load_recipe(REPO / "recipes" / "shakespeare.yaml",
                         [f"datasets.text.path={text}", "stages.pretrain.args.max_steps=1000000",
                          "stages.pretrain.args.eval_steps=1000000", "stages.pretrain.args.save_steps=1000000", *extra],
                         output_dir=str(out))
    metrics = run_recipe(recipe, echo=lambda *a: None)
    return {**metrics["pretrain"], "tokenizer": metrics["tokenizer"],
            "block_size": recipe.stages["pretrain"].spec.get("block_size", 256)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", default=str(REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt"))
    parser.add_argument("--budget", type=float, default=105.0, help="training seconds")
    parser.add_argument("--set", action="append", default=[], help="extra recipe overrides")
    parser.add_argument("--out", help="keep the run folder here (default: a temporary folder)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(args.out) if args.out else Path(tmp) / "run"
        result = run(args.text, out, args.budget, args.set)
        wall = process_seconds()
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(out / "pretrain")
    peak = matmul_flops()
    achieved = result["tokens_per_second"] * train_flops_per_token(config, result["block_size"])
    print(json.dumps({
        "steps": result["steps"],
        "train_seconds": round(result["train_runtime_s"], 1), "process_wall_seconds": round(wall, 1),
        "parameters": result["parameters"], "tokens_seen": result["tokens_seen"],
        "epochs": round(result["tokens_seen"] / result["train_tokens"], 2),
        "tokens_per_second": round(result["tokens_per_second"]), "achieved_gflops": round(achieved / 1e9, 1),
        "matmul_gflops_best": round(peak["best"] / 1e9, 1), "matmul_gflops_median": round(peak["median"] / 1e9, 1),
        "mfu": round(achieved / peak["best"], 3),
        "heldout_bits_per_byte": round(result["bits_per_byte"], 4), "heldout_loss": round(result["eval_loss"], 4),
        "train_loss": round(result["train_loss"], 4), "torch_threads": torch.get_num_threads(),
        "tokenizer_vocab": result["tokenizer"]["vocab_size"],
    }, indent=2))


if __name__ == "__main__":
    main()
