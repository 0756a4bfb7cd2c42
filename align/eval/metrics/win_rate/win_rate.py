"""Win rate of pairwise comparisons with a bootstrap interval, as an ``evaluate`` module that loads offline.

    import evaluate, align.eval
    metric = evaluate.load(str(align.eval.metric_path("win_rate")))
    metric.compute(predictions=[1, 0.5, 0, 1], n_bootstrap=2000, seed=0, confidence=0.95)

The computation is ``align.eval.head_to_head``: ties (0.5) count half; the interval and p-value agree.
"""

import datasets
import evaluate

from align.eval.compare_stats import head_to_head

_DESCRIPTION = """Share of pairwise comparisons won (1 = win, 0.5 = tie, 0 = loss; ties count half) with a
bootstrap percentile confidence interval, and the counts of wins, ties and losses."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float): one outcome per comparison, in [0, 1].
    n_bootstrap (int): resamples for the interval (default 2000).
    confidence (float): coverage of the interval (default 0.95).
    seed (int): seed of the resampling (default 0).
Returns:
    win_rate, ci_low, ci_high, p_value, significant, confidence, wins, ties, losses, n, n_bootstrap.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class WinRate(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("float64")}),
        )

    def _compute(self, predictions, n_bootstrap=2000, confidence=0.95, seed=0):
        return head_to_head(predictions, n_bootstrap=n_bootstrap, confidence=confidence, seed=seed)
