"""Compare RLHF and DPO across run folders: one table and one reward-vs-KL frontier.

    python examples/compare_runs.py runs/quickstart runs/quickstart_seed1 --out runs/compare

The same as `align compare RUN_DIR ... --out DIR`; here as a script to show the Python API and to
print each run's policies from their evaluate stages.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from align.report.compare import compare_runs
from align.state import read_marker


def evaluate_metrics(run_dir: Path) -> dict:
    for stage in sorted(run_dir.iterdir()):
        marker = read_marker(stage) if stage.is_dir() else None
        if marker and marker["kind"] == "evaluate":
            return json.loads((stage / "metrics.json").read_text())
    raise SystemExit(f"{run_dir} has no finished evaluate stage")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", default="runs/compare")
    args = parser.parse_args(argv)
    for run in map(Path, args.runs):
        metrics = evaluate_metrics(run)
        judge = metrics["primary_judge"]
        for name, m in metrics["policies"].items():
            wr = m["win_rate"]
            print(f"{run.name}/{name}: {judge} {m['scores'][judge]:+.3f}, win rate vs {wr['vs']} "
                  f"{wr['win_rate']:.2f} [{wr['ci_low']:.2f}, {wr['ci_high']:.2f}], KL {m['kl']:.2f}")
    page = compare_runs(args.runs, args.out)
    print(f"frontier written to {page}")
    return page


if __name__ == "__main__":
    main()
