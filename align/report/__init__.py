"""RLHF-vs-DPO comparison: tables, matplotlib plots, markdown + one self-contained HTML page.

``build_report(eval_dir, out_dir)`` reports on one evaluate stage; ``compare_runs(run_dirs, out_dir)``
puts several runs on one reward-vs-KL frontier.
"""

from align.report.build import build_report
from align.report.compare import compare_runs
from align.report.load import load_evaluation

__all__ = ["build_report", "compare_runs", "load_evaluation"]
