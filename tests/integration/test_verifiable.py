"""recipes/verifiable.yaml at micro size: tokenizer -> pretrain -> sft -> grpo || ppo -> evaluate -> report, the
rewards reading the dataset's ``answer`` column, the held-out accuracy and its gain over SFT with an interval in
metrics.json and the report. (The recipe's own size, and the gain it measures, are in the README.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.recipe import load_recipe
from align.runner import run_recipe

REPO = Path(__file__).resolve().parents[2]
MICRO = [  # tiny everything: the test is that the chain runs and reports, not that it learns
    "datasets.corpus.size=64", "datasets.chat.size=32", "datasets.prompts.size=16", "datasets.heldout.size=12",
    "stages.pretrain.model.preset=llama-micro", "stages.pretrain.args.max_steps=2",
    "stages.pretrain.args.save_steps=2", "stages.pretrain.block_size=32",
    "stages.sft.args.max_steps=2", "stages.sft.args.per_device_train_batch_size=8",
    "stages.grpo.args.max_steps=1", "stages.grpo.args.per_device_train_batch_size=8",
    "stages.grpo.args.num_generations=4", "stages.grpo.args.save_steps=1",
    "stages.ppo.args.max_steps=1", "stages.ppo.args.rollout_batch_size=8", "stages.ppo.args.eval_steps=0",
    "stages.ppo.args.save_steps=1", "stages.ppo.args.eval_prompts=8",
    "stages.eval.n_bootstrap=200",
]


@pytest.mark.slow
def test_verifiable_recipe_runs_and_reports_held_out_accuracy(tmp_path, monkeypatch):
    from align.data import verifiable

    seen = []
    original = verifiable.correct

    def correct(completions, answer, **kwargs):  # the real reward, watched: every caller passes the answer column
        seen.append(len(answer))
        return original(completions, answer, **kwargs)

    monkeypatch.setattr(verifiable, "correct", correct)
    recipe = load_recipe(REPO / "recipes" / "verifiable.yaml", MICRO, output_dir=str(tmp_path))
    metrics = run_recipe(recipe, echo=lambda *_: None)
    assert seen  # grpo, ppo and evaluate called it with the answers
    evaluation = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert evaluation["n_prompts"] == 12
    for name in ("sft", "grpo", "ppo"):
        accuracy = evaluation["policies"][name]["scores"]["correct"]
        assert 0.0 <= accuracy <= 1.0
    for name in ("grpo", "ppo"):
        gain = evaluation["policies"][name]["score_vs_reference"]["correct"]
        assert gain["kind"] == "paired" and gain["ci_low"] <= gain["difference"] <= gain["ci_high"]
        assert gain["difference"] == pytest.approx(evaluation["policies"][name]["scores"]["correct"]
                                                   - evaluation["policies"]["sft"]["scores"]["correct"])
    assert metrics["grpo"]["reward_last"] is not None
    report = (tmp_path / "report" / "report.md").read_text()
    assert "correct" in report
