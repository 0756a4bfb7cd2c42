"""``align validate`` says, before any training, what a stage will do with the model it is given: the scalar head
a family without a sequence-classification class gets, and whether replies are trained after the context the
policy is sampled after (issue 22)."""

from __future__ import annotations

from align.recipe import build_recipe
from align.validate import check_recipe


def recipe(tmp_path, stages: dict):
    return build_recipe({"name": "families", "seed": 0, "output_dir": str(tmp_path / "run"),
                         "datasets": {"chat": {"builtin": "reviews", "split": "sft", "limit": 4}},
                         "stages": stages})


def test_validate_reports_the_scalar_head_and_the_context(hub_replica, tmp_path):
    granite, r1 = str(hub_replica("granite3")), str(hub_replica("r1_distill"))
    result = check_recipe(recipe(tmp_path, {
        "sft": {"kind": "sft", "model": r1, "dataset": "chat"},
        "sft_trained": {"kind": "sft", "model": r1, "dataset": "chat", "generation_prompt": "trained"},
        "reward_sft": {"kind": "sft", "model": granite, "dataset": "chat"},
    }))
    assert result.ok, result.problems
    notes = "\n".join(result.checked)
    assert "stages.sft: the stage will warn: the policy is sampled after a context" in notes
    assert "stages.sft_trained: one context" in notes
    assert "stages.reward_sft: one context" in notes

    strict = check_recipe(recipe(tmp_path, {
        "sft": {"kind": "sft", "model": r1, "dataset": "chat", "context_check": "error"}}))
    assert len(strict.problems) == 1 and strict.problems[0].startswith("stages.sft: the policy is sampled after")


def test_validate_says_a_family_without_a_classifier_class_gets_a_scalar_head(hub_replica, tmp_path):
    granite = str(hub_replica("granite3"))
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text('{"prompt": "Review a lamp.", "chosen": " Bright.", "rejected": " Dim."}\n' * 4)
    result = check_recipe(build_recipe({
        "name": "families", "seed": 0, "output_dir": str(tmp_path / "run"),
        "datasets": {"pairs": {"path": str(pairs)}},
        "stages": {"reward": {"kind": "reward", "model": granite, "dataset": "pairs"}}}))
    assert result.ok, result.problems
    assert any("no sequence-classification class for granite" in c and "GraniteForSequenceClassification" in c
               for c in result.checked), result.checked
