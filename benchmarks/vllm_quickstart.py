"""The quickstart with vLLM sampling against transformers' generate, stage by stage, on the same machine.

    make vllm-env
    HF_HUB_OFFLINE=1 .venv-vllm/bin/python benchmarks/vllm_quickstart.py [--out runs/bench_vllm]

Both runs use .venv-vllm (transformers 5.19), so only the sampler differs. First the whole quickstart with
``generation.backend: transformers`` (the default) in ``OUT/transformers``; then a copy of that run folder
with ``backend: vllm`` on preferences, ppo and eval, so the stages that do not sample (tokenizer, pretrain, sft)
are reused and everything downstream of preferences runs again (reward and dpo too: they read the new pairs).
Stage seconds come from each stage's completion marker and include engine start (the engine lives for the
whole ``align run`` process: started once by preferences, reused by ppo and eval when the shapes allow).
Prints a markdown table; also written to ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from align.recipe import load_recipe

SAMPLING = ("preferences", "ppo", "eval")


def run(recipe: str, out: Path, overrides: list[str]) -> float:
    command = [sys.executable, "-m", "align", "run", recipe, "--output-dir", str(out), *overrides]
    started = time.time()
    proc = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    return time.time() - started


def stage_seconds(out: Path) -> dict:
    seconds = {}
    for marker in out.glob("*/.align_complete.json"):
        data = json.loads(marker.read_text())
        seconds[data["stage"]] = data["metrics"].get("stage_seconds")
    return seconds


def gold(out: Path) -> dict:
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {name: m["scores"]["gold"] for name, m in metrics["policies"].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--out", default="runs/bench_vllm", type=Path)
    args = parser.parse_args()
    base, fast = args.out / "transformers", args.out / "vllm"
    shutil.rmtree(args.out, ignore_errors=True)
    wall = {"transformers": run(args.recipe, base, [])}
    shutil.copytree(base, fast)
    for stage in ("preferences", "reward", "ppo", "dpo", "eval", "export", "report"):
        shutil.rmtree(fast / stage, ignore_errors=True)
    wall["vllm"] = run(args.recipe, fast, [a for s in SAMPLING for a in ("--set", f"stages.{s}.generation.backend=vllm")])
    t, v = stage_seconds(base), stage_seconds(fast)
    order = list(load_recipe(args.recipe).stages)
    t = {stage: t[stage] for stage in sorted(t, key=order.index)}
    lines = ["| stage | transformers (s) | vllm (s) |", "|---|---:|---:|"]
    for stage in t:
        lines.append(f"| {stage}{'' if stage in SAMPLING else ' (no sampling)'} | {t[stage]:.0f} | "
                     f"{v.get(stage, t[stage]):.0f} |")
    total_t = sum(t.values())
    total_v = sum(v.get(stage, t[stage]) for stage in t)
    lines.append(f"| **whole quickstart** | **{total_t:.0f}** | **{total_v:.0f}** |")
    lines.append("")
    lines.append(f"wall clock of each `align run`: transformers {wall['transformers']:.0f} s (whole chain), vllm "
                 f"{wall['vllm']:.0f} s (from preferences on)")
    lines.append(f"gold score (eval): transformers {json.dumps(gold(base))}, vllm {json.dumps(gold(fast))}")
    table = "\n".join(lines)
    (args.out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":  # vLLM may spawn processes: nothing runs on import
    main()
