"""Time the quickstart chain stage by stage, record peak memory, and collect per-seed results.

    python benchmarks/quickstart.py --seeds 0 1 2 [--recipe recipes/quickstart.yaml] [--out runs/bench]
    python benchmarks/quickstart.py --seeds 0 --processes 2 --out runs/bench_2proc

Each seed runs `align run RECIPE --set seed=S` in a fresh folder (a subprocess, so peak RSS is the
run's own) and prints a markdown table: wall time, every stage's seconds, peak memory, and for each
aligned policy its gold score, win rate vs SFT with the 95 % interval, and KL. ``--processes N``
runs it under `accelerate launch` (recipes/accelerate/two_processes.yaml) with every per-process
batch divided by N, so the global batches, and the results within noise, equal one process's.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path


def same_global_batches(recipe: str, processes: int) -> list[str]:
    """``--set`` overrides dividing each stage's per-process batch by the number of processes."""
    from align.recipe import load_recipe

    overrides = []
    for name, stage in load_recipe(recipe).stages.items():
        for key in ("per_device_train_batch_size", "rollout_batch_size"):
            value = (stage.spec.get("args") or {}).get(key)
            if value:
                if value % processes:
                    raise SystemExit(f"stages.{name}.args.{key}={value} is not divisible by {processes} processes")
                overrides += ["--set", f"stages.{name}.args.{key}={value // processes}"]
    return overrides


def run_seed(recipe: str, out: Path, seed: int, processes: int = 1) -> dict:
    command = [sys.executable, "-m", "align"]
    if processes > 1:
        config = Path(__file__).resolve().parents[1] / "recipes" / "accelerate" / "two_processes.yaml"
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config),
                   "--num_processes", str(processes), "-m", "align"]
    command += ["run", recipe, "--set", f"seed={seed}", "--output-dir", str(out)]
    command += same_global_batches(recipe, processes) if processes > 1 else []
    started = time.time()
    proc = subprocess.run(command, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    wall = time.time() - started
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child so far
    stages = {}
    for marker in sorted(out.glob("*/.align_complete.json")):
        data = json.loads(marker.read_text())
        stages[data["stage"]] = data["metrics"].get("stage_seconds")
    evaluation = json.loads(next(p for p in out.glob("*/metrics.json") if '"primary_judge"' in p.read_text()).read_text())
    return {"seed": seed, "wall_s": round(wall, 1), "peak_rss_mib": round(peak_mib), "stage_s": stages,
            "policies": {name: {"score": m["scores"][evaluation["primary_judge"]], "kl": m["kl"],
                                "win_rate": m["win_rate"]["win_rate"], "ci": [m["win_rate"]["ci_low"], m["win_rate"]["ci_high"]]}
                         for name, m in evaluation["policies"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="recipes/quickstart.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--out", default="runs/bench")
    parser.add_argument("--processes", type=int, default=1, help="data-parallel processes (accelerate launch)")
    args = parser.parse_args()
    results = [run_seed(args.recipe, Path(args.out) / f"seed{s}", s, args.processes) for s in args.seeds]
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    stage_names = list(results[0]["stage_s"])
    print("| seed | wall (s) | peak RSS (MiB) | " + " | ".join(stage_names) + " |")
    print("|---" * (3 + len(stage_names)) + "|")
    for r in results:
        print(f"| {r['seed']} | {r['wall_s']} | {r['peak_rss_mib']} | " + " | ".join(str(r["stage_s"][s]) for s in stage_names) + " |")
    print("\n| seed | policy | gold score | win rate vs reference [95 % CI] | KL (nats) |\n|---|---|---|---|---|")
    for r in results:
        for name, p in r["policies"].items():
            print(f"| {r['seed']} | {name} | {p['score']:+.3f} | {p['win_rate']:.2f} [{p['ci'][0]:.2f}, {p['ci'][1]:.2f}] | {p['kl']:.2f} |")


if __name__ == "__main__":
    main()
