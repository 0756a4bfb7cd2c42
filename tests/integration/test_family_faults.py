"""Issue 22's stage-to-stage faults on the families that showed them: each stage's output is what the next one can
load and run. A family without a sequence-classification class (Granite) still gets a reward and a value model; a
MoE's saved SFT model keeps the config it shipped, so the next stage can sample from it."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow
SMALL = {"per_device_train_batch_size": 4, "logging_steps": 1, "max_length": 128}


def run(out, stages: dict) -> dict:
    from align.recipe import build_recipe
    from align.runner import run_recipe

    recipe = build_recipe({
        "name": "faults", "seed": 0, "output_dir": str(out),
        "datasets": {"chat": {"builtin": "reviews", "split": "sft", "limit": 8},
                     "prompts": {"builtin": "reviews", "split": "prompts", "limit": 4}},
        "judges": {"length": {"function": "align.testing:length_judge"}},
        "stages": stages})
    return run_recipe(recipe, echo=lambda *_: None)


def test_granite_without_a_classification_class_trains_a_reward_model_and_ppo(hub_replica, tmp_path):
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    assert "granite" not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES  # the fault: no class in transformers
    replica = hub_replica("granite3")
    metrics = run(tmp_path / "run", {
        "preferences": {"kind": "preferences", "policy": str(replica), "dataset": "prompts", "judge": "length",
                        "samples_per_prompt": 2, "generation": {"max_new_tokens": 6}},
        "reward": {"kind": "reward", "model": str(replica), "dataset": "${stages.preferences}", "eval_fraction": 0.5,
                   "args": {**SMALL, "max_steps": 2}},
        "ppo": {"kind": "ppo", "policy": str(replica), "reward": "${stages.reward}", "dataset": "prompts",
                "lora": {"r": 4, "lora_alpha": 8},
                "args": {"max_steps": 1, "rollout_batch_size": 4, "num_mini_batches": 1, "ppo_epochs": 1,
                         "per_device_train_batch_size": 4, "max_new_tokens": 4, "eval_steps": 0}},
    })
    assert AutoConfig.from_pretrained(tmp_path / "run" / "reward").architectures == ["GraniteForSequenceClassification"]
    assert metrics["ppo"]  # scored by the Granite reward model, critic from the Granite backbone


def test_moe_sft_saves_the_config_it_shipped_and_the_next_stage_samples(hub_replica, tmp_path):
    replica = hub_replica("qwen3_moe")
    assert json.loads((replica / "config.json").read_text())["output_router_logits"] is False
    metrics = run(tmp_path / "run", {
        "sft": {"kind": "sft", "model": str(replica), "dataset": "chat", "lora": {"r": 4, "lora_alpha": 8},
                "args": {**SMALL, "max_steps": 2}},
        "preferences": {"kind": "preferences", "policy": "${stages.sft}", "dataset": "prompts", "judge": "length",
                        "samples_per_prompt": 2, "generation": {"max_new_tokens": 6}},
    })
    saved = json.loads((tmp_path / "run" / "sft" / "merged" / "config.json").read_text())
    assert saved["output_router_logits"] is False  # TRL turned it on for its aux loss; the artifact keeps the shipped one
    assert saved["router_aux_loss_coef"] == 0.001
    assert metrics["preferences"]["pairs"] >= 0
