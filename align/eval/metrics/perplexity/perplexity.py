"""Perplexity and bits per byte of a causal LM on texts, as an ``evaluate`` module that loads offline.

    import evaluate, align.eval
    metric = evaluate.load(str(align.eval.metric_path("perplexity")))
    metric.compute(predictions=texts, model_id="runs/x/sft")          # a model folder or stage output
    metric.compute(predictions=texts, model=model, tokenizer=tokenizer)  # or a loaded model

The computation is ``align.eval.perplexity`` (see its docstring): every text starts from BOS so
every byte is predicted, and long texts are scored with sliding windows, never truncated.
"""

import datasets
import evaluate

from align.eval.stats import perplexity

_DESCRIPTION = """Per-text token negative log-likelihood under a causal LM -> perplexities, their mean, the
corpus perplexity, total NLL (nats), tokens, UTF-8 bytes and bits per byte (total NLL / (ln 2 * bytes)),
which compares models with different tokenizers."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of str): the texts to score.
    model_id (str): a model folder, stage output (LoRA merged) or hub id; or pass `model` and `tokenizer`.
    model, tokenizer: an already loaded causal LM and its tokenizer.
    batch_size (int): windows per forward pass (default 8).
    max_length (int): longest window in tokens (default: the model's context).
    stride (int): tokens scored per window of a long text (default max_length // 2).
Returns:
    perplexities, mean_perplexity, perplexity, nlls, total_nll, tokens, bytes, bits_per_byte, max_length, stride.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Perplexity(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            module_type="metric",
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("string")}),
        )

    def _compute(self, predictions, model_id=None, model=None, tokenizer=None, batch_size=8, max_length=None,
                 stride=None):
        from align.errors import AlignError
        from align.models import load_causal_lm, load_tokenizer

        if model is None:
            if model_id is None:
                raise AlignError("perplexity metric: pass model_id (a model folder) or model and tokenizer.")
            model = load_causal_lm(model_id, field="model_id")
        tokenizer = tokenizer or load_tokenizer(model_id or model.name_or_path)
        return perplexity(model, tokenizer, list(predictions), batch_size=batch_size, max_length=max_length,
                          stride=stride)
