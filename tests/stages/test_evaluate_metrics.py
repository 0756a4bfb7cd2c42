"""The evaluate stage computes through `evaluate` modules (align's bundled ones and a user's own), and the
report shows the extra metrics per policy."""

from __future__ import annotations

import json

import pytest

from align.errors import AlignError
from align.recipe import build_recipe
from align.runner import run_recipe

USER_METRIC = '''
import datasets
import evaluate


class ShortShare(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description="share of responses under k words", citation="", inputs_description="",
                                   features=datasets.Features({"predictions": datasets.Value("string")}))

    def _compute(self, predictions, k=5):
        return {"short_share": sum(len(p.split()) < k for p in predictions) / len(predictions), "note": "text"}
'''


def recipe(tmp_path, model_dir, metrics):
    return build_recipe({
        "name": "m", "output_dir": str(tmp_path / "run"),
        "datasets": {"prompts": {"builtin": "reviews", "split": "eval_prompts", "limit": 6}},
        "judges": {"length": {"function": "align.testing:length_judge"}},
        "stages": {
            "eval": {"kind": "evaluate", "policies": {"a": str(model_dir), "b": str(model_dir)}, "judges": ["length"],
                     "prompts": "prompts", "generation": {"max_new_tokens": 6}, "n_bootstrap": 50,
                     "metrics": metrics},
            "report": {"kind": "report", "eval": "${stages.eval}"},
        }})


def test_extra_metrics_and_evaluate_modules(tiny_model_dir, tmp_path, monkeypatch):
    import evaluate

    loaded, original = [], evaluate.load
    monkeypatch.setattr(evaluate, "load", lambda path, *a, **k: loaded.append(str(path)) or original(path, *a, **k))
    user = tmp_path / "short_share.py"
    user.write_text(USER_METRIC)
    run_recipe(recipe(tmp_path, tiny_model_dir, ["distinct_n", {"module": str(user), "args": {"k": 3}}]),
               echo=lambda *_: None)
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    extra = metrics["policies"]["a"]["extra_metrics"]
    assert set(extra) == {"distinct_n/distinct_1", "distinct_n/distinct_2", "distinct_n/mean_words",
                          "short_share/short_share"}  # non-numeric results are left out
    assert 0.0 <= extra["distinct_n/distinct_2"] <= 1.0 and 0.0 <= extra["short_share/short_share"] <= 1.0
    assert any(p.endswith("win_rate") for p in loaded) and any(p.endswith("distinct_n") for p in loaded)
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert "distinct_n/distinct_2" in report and "short_share/short_share" in report
    # what each policy was sampled after, from its own template (align's tokenizer opens replies with <|assistant|>)
    assert metrics["policies"]["a"]["context"] == {"generation_prompt": "<|assistant|>", "source": "template",
                                                    "problems": []}
    assert "a, b after '<|assistant|>', the chat template's generation prompt" in report


def test_a_bad_metric_fails_before_sampling(tiny_model_dir, tmp_path):
    with pytest.raises(AlignError, match=r"stages\.eval\.metrics: cannot load the evaluate module 'no_such_metric_dir/x.py'"):
        run_recipe(recipe(tmp_path, tiny_model_dir, ["no_such_metric_dir/x.py"]), echo=lambda *_: None)
    assert not (tmp_path / "run" / "eval" / "samples.jsonl").exists()


def test_distinct_n_by_hand():
    from align.eval.metrics.distinct_n.distinct_n import distinct

    # "a good lamp" / "a good phone": unigrams a,good,lamp,a,good,phone -> 4 unique of 6; bigrams 3 unique of 4
    assert distinct(["a good lamp", "A good phone"], 2) == {"distinct_1": 4 / 6, "distinct_2": 3 / 4, "mean_words": 3.0}


def test_context_check_names_the_policy_and_stops_when_asked(caplog):
    """Each policy's context problems (found once, by sampling_context) are said under its name."""
    import logging
    from types import SimpleNamespace

    from align.errors import AlignError
    from align.stages.evaluate import context_verdict

    context = {"generation_prompt": "<think>\n", "source": "template", "problems": ["sampled after an open <think>"]}

    def ctx(mode):
        return SimpleNamespace(spec={"context_check": mode} if mode else {}, is_main_process=True,
                               where=lambda key: f"stages.eval.{key}")

    with caplog.at_level(logging.INFO, logger="align"):
        context_verdict(ctx(None), "dpo", context)
    assert [r.getMessage() for r in caplog.records] == ["stages.eval.policies.dpo: sampled after an open <think>"]
    with pytest.raises(AlignError, match=r"stages\.eval\.policies\.dpo: sampled after an open <think>"):
        context_verdict(ctx("error"), "dpo", context)
    caplog.clear()
    context_verdict(ctx("off"), "dpo", context)
    context_verdict(ctx(None), "sft", {**context, "problems": []})
    assert caplog.records == []
