"""``model_kwargs:`` (TRL ModelConfig names) per stage and per judge: checked by validate, applied by every loader."""

from __future__ import annotations

import logging

import pytest

from align.errors import AlignError
from align.recipe import build_recipe
from align.stages import stage_kind

CHAT = {"builtin": "reviews", "split": "sft", "size": 8}


def problems(spec: dict, kind: str = "sft") -> list[str]:
    return stage_kind(kind).check({"kind": kind, "model": "m", "dataset": "chat", **spec}, "stages.s")


def test_validate_names_an_unknown_option_and_a_bad_attention():
    found = problems({"model_kwargs": {"attn_implmentation": "sdpa"}})
    assert any(p.startswith("stages.s.model_kwargs.attn_implmentation: unknown model option") and
               "attn_implementation" in p for p in found)
    found = problems({"model_kwargs": {"attn_implementation": "flash_attn_9"}})
    assert any(p.startswith("stages.s.model_kwargs.attn_implementation: unknown attention implementation") and
               "sdpa" in p for p in found)
    assert problems({"model_kwargs": {"attn_implementation": "kernels-community/flash-attn2"}}) == []
    assert any("trust_remote_code: expected true or false" in p
               for p in problems({"model_kwargs": {"trust_remote_code": "yes"}}))
    assert any("model_kwargs.dtype" in p and "contradicts" in p
               for p in problems({"dtype": "float32", "model_kwargs": {"dtype": "bfloat16"}}))
    assert any(p.startswith("stages.s.args.model_init_kwargs: align loads the model itself")
               for p in problems({"args": {"model_init_kwargs": {"attn_implementation": "eager"}}}))
    for kind in ("dpo", "grpo", "reward", "evaluate", "preferences"):
        spec = {"model_kwargs": {"bogus": 1}}
        assert any("stages.s.model_kwargs.bogus" in p for p in stage_kind(kind).check(spec, "stages.s")), kind
    assert problems({"model_kwargs": {"attn_implementation": "eager", "trust_remote_code": False,
                                      "revision": "main", "dtype": "bfloat16"}}) == []


def test_a_judge_takes_model_kwargs_and_validate_checks_them():
    from align.eval.judge_factory import judge_problems

    assert judge_problems({"llm": "m", "model_kwargs": {"attn_implementation": "eager"}}, "judges.j") == []
    found = judge_problems({"reward_model": "m", "model_kwargs": {"revison": "main"}}, "judges.j")
    assert found and found[0].startswith("judges.j.model_kwargs.revison: unknown model option")
    assert judge_problems({"function": "a:b", "model_kwargs": {}}, "judges.j")  # a function loads no model


def test_a_stage_loads_its_models_with_its_options(tmp_path, hub_replica):
    from accelerate import PartialState

    from align.stages.context import StageContext
    from align.stages.training import load_for_training

    path = str(hub_replica("qwen3"))
    for options, expected in (({}, "sdpa"), ({"attn_implementation": "eager"}, "eager")):
        recipe = build_recipe({"name": "k", "output_dir": str(tmp_path), "datasets": {"chat": CHAT}, "stages": {
            "sft": {"kind": "sft", "model": path, "dataset": "chat", "model_kwargs": options}}})
        model, _ = load_for_training(StageContext(recipe, recipe.stages["sft"], PartialState()))
        assert model.config._attn_implementation == expected


def test_loaders_and_judges_apply_the_options(hub_replica, tiny_model_dir, caplog):
    import torch

    from align.eval.judges import LLMJudge
    from align.models import load_causal_lm, load_sequence_classifier

    path = hub_replica("llama3")
    assert load_causal_lm(path, model_kwargs={"dtype": "bfloat16"}).dtype == torch.bfloat16
    classifier, _ = load_sequence_classifier(path, model_kwargs={"attn_implementation": "eager"})
    assert classifier.config._attn_implementation == "eager"
    judge = LLMJudge(str(tiny_model_dir), name="j", model_kwargs={"attn_implementation": "eager"})
    assert judge.model.config._attn_implementation == "eager"
    with caplog.at_level(logging.WARNING, logger="align"):
        load_causal_lm(path, field="stages.s.model", model_kwargs={"trust_remote_code": True})
    assert "stages.s.model: trust_remote_code is on" in caplog.text
    caplog.clear()
    load_causal_lm(path, field="stages.s.model")
    assert "trust_remote_code" not in caplog.text


def test_a_bad_option_at_run_time_is_an_align_error(tmp_path):
    from accelerate import PartialState

    from align.stages.context import StageContext
    from align.stages.training import model_kwargs

    recipe = build_recipe({"name": "k", "output_dir": str(tmp_path), "datasets": {"chat": CHAT}, "stages": {
        "sft": {"kind": "sft", "model": "m", "dataset": "chat", "model_kwargs": {"attn_implementation": "fast"}}}})
    with pytest.raises(AlignError, match=r"stages\.sft\.model_kwargs\.attn_implementation"):
        model_kwargs(StageContext(recipe, recipe.stages["sft"], PartialState()))
