"""Distinct-n: the share of n-grams in a set of responses that are unique (Li et al. 2016), as an ``evaluate``
module that loads offline. A policy that collapses onto a few phrasings (a known failure of over-optimised RLHF
and of DPO at small beta) scores low even when a judge rates each response well.

    import evaluate, align.eval
    metric = evaluate.load(str(align.eval.metric_path("distinct_n")))
    metric.compute(predictions=["a good lamp", "a good phone"], n=2)   # {"distinct_1": ..., "distinct_2": ...}

Tokens are whitespace-separated words, lower-cased, so policies with different tokenizers compare.
"""

import datasets
import evaluate

_DESCRIPTION = """distinct_k = unique k-grams / all k-grams over all responses together, for k = 1..n (0 when there
are no k-grams), and the mean number of words per response."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the responses of one policy.
    n (int): the largest n-gram size (default 2).
Returns:
    distinct_1 .. distinct_n, mean_words.
"""


def distinct(responses, n: int = 2) -> dict:
    words = [r.lower().split() for r in responses]
    result = {}
    for k in range(1, n + 1):
        grams = [tuple(w[i:i + k]) for w in words for i in range(len(w) - k + 1)]
        result[f"distinct_{k}"] = len(set(grams)) / len(grams) if grams else 0.0
    result["mean_words"] = sum(map(len, words)) / len(words) if words else 0.0
    return result


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class DistinctN(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="Li et al., A Diversity-Promoting Objective Function for Neural Conversation Models, 2016",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, n=2):
        return distinct(predictions, n)
