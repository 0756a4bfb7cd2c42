"""Evaluation: generation, judges, KL to a reference, perplexity / bits per byte and win rates.

The metrics also ship as offline ``evaluate`` modules (perplexity, win_rate, distinct_n):
``evaluate.load(str(metric_path("perplexity")))``; the evaluate stage computes through them.
"""

from pathlib import Path

from align.eval.compare_stats import (across_seeds, equal_kl_difference, frontier_fit, head_to_head, holm,
                                      length_controlled_win_rate, paired_difference)
from align.eval.generation import generate, generate_chat
from align.eval.judge_factory import build_judge
from align.eval.judges import FunctionJudge, Judge, LLMJudge, RewardModelJudge
from align.eval.kl import ESTIMATOR as KL_ESTIMATOR
from align.eval.kl import kl_to_reference, sequence_logprobs
from align.eval.stats import perplexity

METRICS_DIR = Path(__file__).parent / "metrics"


def metric_path(name: str) -> Path:
    """The folder of one of align's evaluate modules ("perplexity", "win_rate"), for ``evaluate.load``."""
    path = METRICS_DIR / name
    if not (path / f"{name}.py").exists():
        from align.errors import AlignError

        known = sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").exists())
        raise AlignError(f"no align metric named {name!r}; available: {', '.join(known)}.")
    return path


__all__ = ["generate", "generate_chat", "Judge", "FunctionJudge", "RewardModelJudge", "LLMJudge", "build_judge",
           "sequence_logprobs", "kl_to_reference", "KL_ESTIMATOR", "perplexity", "metric_path",
           "paired_difference", "head_to_head", "across_seeds", "frontier_fit", "equal_kl_difference",
           "length_controlled_win_rate", "holm"]
