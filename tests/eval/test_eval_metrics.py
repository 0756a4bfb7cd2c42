import math

import evaluate
import numpy as np
import pytest
import torch

import align.eval
from align.errors import AlignError
from align.eval.stats import windows

TEXTS = ["the cat is good.", "ünïcödé ☃ — ça marche, 日本語 too", "a"]


@pytest.fixture(scope="module")
def perplexity_metric():
    return evaluate.load(str(align.eval.metric_path("perplexity")))


@pytest.fixture(scope="module")
def win_rate_metric():
    return evaluate.load(str(align.eval.metric_path("win_rate")))


def direct_nlls(model, tokenizer, texts) -> list[float]:
    """NLL of each text from one forward pass: every token, the first predicted from BOS."""
    nlls = []
    for text in texts:
        ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1]
        nlls.append(float(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum")))
    return nlls


def test_perplexity_module_agrees_with_the_model_logits(perplexity_metric, tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    result = perplexity_metric.compute(predictions=TEXTS, model_id=str(tiny_model_dir), batch_size=2)
    nlls = direct_nlls(model, tiny_tokenizer, TEXTS)
    tokens = [len(tiny_tokenizer(t, add_special_tokens=False)["input_ids"]) for t in TEXTS]
    assert result["nlls"] == pytest.approx(nlls, abs=1e-4)
    assert result["perplexities"] == pytest.approx([math.exp(n / k) for n, k in zip(nlls, tokens)], rel=1e-4)
    assert result["tokens"] == sum(tokens)
    n_bytes = sum(len(t.encode("utf-8")) for t in TEXTS)
    assert result["bytes"] == n_bytes > sum(len(t) for t in TEXTS)  # non-ASCII: more bytes than characters
    assert result["bits_per_byte"] == pytest.approx(sum(nlls) / (math.log(2) * n_bytes), rel=1e-6)
    assert result["mean_perplexity"] == pytest.approx(np.mean(result["perplexities"]))
    # the python API and a preloaded model give the same numbers
    assert align.eval.perplexity(model, tiny_tokenizer, TEXTS)["nlls"] == pytest.approx(nlls, abs=1e-4)
    preloaded = perplexity_metric.compute(predictions=TEXTS, model=model, tokenizer=tiny_tokenizer)
    assert preloaded["total_nll"] == pytest.approx(result["total_nll"], abs=1e-4)


def test_long_texts_use_sliding_windows(tiny_model_dir, tiny_tokenizer):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    text = "the quick dog loves the blue lamp but hates the price. " * 6
    full = align.eval.perplexity(model, tiny_tokenizer, [text])
    windowed = align.eval.perplexity(model, tiny_tokenizer, [text], max_length=24, stride=8)
    assert windowed["tokens"] == full["tokens"] > 24  # every token is scored once, none truncated
    assert windowed["total_nll"] == pytest.approx(full["total_nll"], rel=0.1)  # less context, similar NLL
    with pytest.raises(AlignError, match="stride"):
        align.eval.perplexity(model, tiny_tokenizer, [text], max_length=24, stride=24)


@pytest.mark.parametrize("n, max_length, stride", [(5, 10, 4), (50, 10, 4), (50, 10, 9), (51, 8, 1)])
def test_windows_score_every_token_once_with_enough_context(n, max_length, stride):
    scored = []
    for begin, first, end in windows(n, max_length, stride):
        assert end - begin <= max_length and first - begin >= min(first, max_length - stride)
        scored += range(first, end)
    assert scored == list(range(1, n))


def test_win_rate_counts_ties_half(win_rate_metric):
    result = win_rate_metric.compute(predictions=[1, 1, 0.5, 0, 0.5, 1], n_bootstrap=500, seed=1)
    assert result["win_rate"] == pytest.approx(4 / 6)
    assert (result["wins"], result["ties"], result["losses"], result["n"]) == (3, 2, 1, 6)
    assert result["ci_low"] <= result["win_rate"] <= result["ci_high"]
    assert result == align.eval.head_to_head([1, 1, 0.5, 0, 0.5, 1], n_bootstrap=500, seed=1)  # one win-rate interval
    with pytest.raises(AlignError, match=r"\[0, 1\]"):
        align.eval.head_to_head([1, 2])


def test_win_rate_interval_covers_the_true_rate_at_about_the_nominal_rate(win_rate_metric):
    rng = np.random.default_rng(0)
    true_rate, covered = 0.65, 0
    simulations = 200
    for i in range(simulations):
        outcomes = (rng.random(100) < true_rate).astype(float)
        result = win_rate_metric.compute(predictions=outcomes, n_bootstrap=1000, seed=i)
        covered += result["ci_low"] <= true_rate <= result["ci_high"]
    assert 0.90 <= covered / simulations <= 0.98


def test_metric_path_names_the_available_modules():
    with pytest.raises(AlignError, match="perplexity, win_rate"):
        align.eval.metric_path("bleu")
