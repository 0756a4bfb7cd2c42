"""The micro recipe end to end: artifacts load, loss falls, caching, invalidation and resume."""

import json
import math
from pathlib import Path

import pytest
import transformers

from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import MARKER, read_marker

REPO = Path(__file__).resolve().parents[2]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"


def run(tmp_path, overrides=(), **kwargs):
    recipe = load_recipe(MICRO, list(overrides), output_dir=str(tmp_path))
    return recipe, run_recipe(recipe, echo=lambda *_: None, **kwargs)


@pytest.fixture(scope="module")
def micro_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("micro")
    recipe, metrics = run(out)
    return out, recipe, metrics


def test_artifacts_load_with_plain_transformers_and_peft(micro_run):
    from peft import PeftModel

    out, _, _ = micro_run
    tokenizer = transformers.AutoTokenizer.from_pretrained(out / "tokenizer")
    assert tokenizer.bos_token == "<|bos|>" and tokenizer.chat_template
    base = transformers.AutoModelForCausalLM.from_pretrained(out / "pretrain")
    assert base.config.model_type == "llama" and base.config.num_key_value_heads < base.config.num_attention_heads
    model = PeftModel.from_pretrained(base, out / "sft")
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "Write a review."}], add_generation_prompt=True,
                                        return_tensors="pt", return_dict=True)["input_ids"]
    assert model.generate(ids, max_new_tokens=4, do_sample=False).shape[1] > ids.shape[1]
    for stage in ("tokenizer", "pretrain", "sft"):
        assert (out / stage / MARKER).exists()
        assert list((out / stage).glob("data_card_*.md")), stage


def test_heldout_loss_falls_and_metrics_are_reported(micro_run):
    out, _, metrics = micro_run
    history = json.loads((out / "pretrain" / "trainer_state.json").read_text())["log_history"]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    losses = [h["loss"] for h in history if "loss" in h]
    assert evals[-1] < math.log(512) - 1.0  # a random model scores ~ln(vocab) nats per token
    assert losses[-1] < losses[0] - 0.3
    m = metrics["pretrain"]
    assert 0 < m["bits_per_byte"] < 8 and m["parameters"] > 10_000
    assert m["tokens_per_parameter"] == pytest.approx(m["tokens_seen"] / m["parameters"])
    assert m["tokens_seen"] == 40 * 8 * 64


def test_second_run_skips_and_set_reruns_only_downstream(micro_run):
    out, recipe, _ = micro_run
    before = {s: read_marker(out / s)["fingerprint"] for s in recipe.stages}
    run(out)
    assert {s: read_marker(out / s)["fingerprint"] for s in recipe.stages} == before
    run(out, ["stages.sft.lora.r=2"])
    after = {s: read_marker(out / s)["fingerprint"] for s in recipe.stages}
    assert after["tokenizer"] == before["tokenizer"] and after["pretrain"] == before["pretrain"]
    assert after["sft"] != before["sft"]


def test_changing_an_upstream_stage_reruns_everything_after_it(tmp_path):
    overrides = ["stages.pretrain.args.max_steps=4", "stages.sft.args.max_steps=1"]
    recipe, _ = run(tmp_path, overrides)
    before = {s: read_marker(tmp_path / s)["fingerprint"] for s in recipe.stages}
    run(tmp_path, overrides + ["stages.pretrain.block_size=32"])
    after = {s: read_marker(tmp_path / s)["fingerprint"] for s in recipe.stages}
    assert after["tokenizer"] == before["tokenizer"]
    assert after["pretrain"] != before["pretrain"] and after["sft"] != before["sft"]


def test_interrupted_pretrain_resumes_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    overrides = ["stages.pretrain.args.max_steps=12", "stages.pretrain.args.save_steps=5",
                 "stages.pretrain.args.eval_steps=6"]
    _, full = run(tmp_path / "full", overrides, only=["tokenizer", "pretrain"])

    original = transformers.Trainer.training_step
    calls = {"n": 0}

    def dies_at_step_8(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 8:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", dies_at_step_8)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", overrides, only=["tokenizer", "pretrain"])
    monkeypatch.setattr(transformers.Trainer, "training_step", original)
    cut_dir = tmp_path / "cut" / "pretrain"
    assert (cut_dir / "checkpoint-5").exists() and not (cut_dir / MARKER).exists()

    _, resumed = run(tmp_path / "cut", overrides, only=["tokenizer", "pretrain"])
    state = json.loads((cut_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 12
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert len(steps) == len(set(steps))  # nothing logged twice
    assert resumed["pretrain"]["eval_loss"] == pytest.approx(full["pretrain"]["eval_loss"], rel=1e-4)
