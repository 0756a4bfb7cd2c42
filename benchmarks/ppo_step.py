"""Where a PPO iteration's time goes, from a finished ppo stage's logs.

    python benchmarks/ppo_step.py runs/quickstart/ppo

Reads trainer_state.json (logged every iteration: time/generation covers sampling plus the policy,
reference and value forward passes; time/scoring the reward model and reward functions;
time/optimization the PPO epochs) and prints rollouts per second and the split.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/quickstart/ppo")
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    rows = [h for h in history if "time/generation" in h]
    if not rows:
        raise SystemExit(f"{folder}: no PPO iterations logged")
    parts = {k: statistics.fmean(h[f"time/{k}"] for h in rows) for k in ("generation", "scoring", "optimization")}
    total = sum(parts.values())
    rollouts = rows[0]["episode"] // rows[0]["step"]  # episodes per iteration, all processes
    print(f"{len(rows)} iterations, {rollouts} rollouts each, mean response {statistics.fmean(h['response_length'] for h in rows):.1f} tokens")
    print(f"rollouts per second: {rollouts / total:.1f} ({total:.2f} s per iteration)")
    for name, seconds in parts.items():
        print(f"  {name:<13} {seconds:6.2f} s  {seconds / total:5.1%}")


if __name__ == "__main__":
    main()
