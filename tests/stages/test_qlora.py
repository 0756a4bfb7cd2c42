"""QLoRA (bitsandbytes 4-bit base + LoRA) in the sft, reward, dpo and ppo stages, for real on the CPU.

Each stage trains a few steps from the session's micro_full run; a spy on ``align.models.load_for_training``
keeps the model the stage trained (peft adds its LoRA layers in place) so the tests can look inside.
"""

from __future__ import annotations

import json
import math
import sys

import pytest
import torch

from align.errors import AlignError
from align.recipe import build_recipe
from align.runner import run_recipe

bnb = pytest.importorskip("bitsandbytes")

LORA = {"r": 4, "lora_alpha": 8}
PROJECTIONS = 7 * 2  # q k v o gate up down in each of llama-micro's 2 layers


def run_stage(out_dir, name, spec, datasets=None, judges=None):
    raw = {"name": "qlora", "output_dir": str(out_dir), "datasets": datasets or {}, "judges": judges or {},
           "stages": {name: spec}}
    return run_recipe(build_recipe(raw), echo=lambda *_: None)[name]


@pytest.fixture
def trained(monkeypatch):
    """The models the stages train, as ``align.models.load_for_training`` handed them over."""
    import align.models

    models, real = [], align.models.load_for_training

    def spy(*args, **kwargs):
        model, tokenizer = real(*args, **kwargs)
        models.append(model)
        return model, tokenizer

    monkeypatch.setattr(align.models, "load_for_training", spy)
    return models


def assert_4bit_lora_trained(model):
    """Every base projection was a bitsandbytes Linear4bit and every LoRA B left its zero init (so gradients
    reached every adapter, including those below another 4-bit layer)."""
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == PROJECTIONS
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert len(lora_b) == PROJECTIONS and all(p.abs().sum() > 0 for p in lora_b)


def assert_backward_survives_a_no_grad_forward(model):
    """Generation and evaluation run no-grad eval forwards between updates; gradients after one must be the same
    (bitsandbytes 0.50 on AVX512-BF16 CPUs would repack the 4-bit weights and cut the backward pass)."""
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])

    def lora_grads():
        model.train()
        model.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if "lora_" in n}

    before = lora_grads()
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads()
    assert before.keys() == after.keys() and all(torch.equal(before[n], after[n]) for n in before)
    assert all(g.abs().sum() > 0 for n, g in after.items() if "q_proj.lora_A" in n)


def assert_full_precision(model, folder):
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in model.modules())
    assert {p.dtype for p in model.parameters()} == {torch.float32}


def generates(model, tokenizer) -> bool:
    ids = tokenizer("the phone", return_tensors="pt")
    out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return out.shape[1] > ids["input_ids"].shape[1]


def nll(model, tokenizer, texts) -> float:
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return model(**batch, labels=labels).loss.item()


@pytest.mark.slow
def test_qlora_sft_trains_a_4bit_base_and_merges_into_full_precision(micro_full_run, trained, tmp_path):
    from safetensors.torch import load_file

    from align.data import load_dataset
    from align.models import load_causal_lm, load_tokenizer

    run = micro_full_run[0]
    chat = {"builtin": "reviews", "split": "sft", "size": 32}
    metrics = run_stage(tmp_path, "sft", {
        "kind": "sft", "model": str(run / "pretrain"), "dataset": chat, "lora": LORA, "quantization": "4bit",
        "args": {"max_steps": 6, "per_device_train_batch_size": 8, "max_length": 128, "learning_rate": 1e-2,
                 "lr_scheduler_type": "constant", "warmup_steps": 0}})
    assert math.isfinite(metrics["train_loss"])
    assert_4bit_lora_trained(trained[0])

    merged = load_causal_lm(tmp_path / "sft")  # resolves to merged/
    assert merged.name_or_path.endswith("merged")
    assert_full_precision(merged, tmp_path / "sft" / "merged")
    # merged into the float base: W + (alpha / r) B A exactly, not re-rounded to 4 bits
    base = load_causal_lm(run / "pretrain")
    adapter = load_file(str(tmp_path / "sft" / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj"
    assert adapter[f"{key}.lora_B.weight"].dtype == torch.float32  # TRL's bf16 adapters are put back to fp32 on CPU
    delta = adapter[f"{key}.lora_B.weight"] @ adapter[f"{key}.lora_A.weight"] * LORA["lora_alpha"] / LORA["r"]
    expected = base.model.layers[1].self_attn.q_proj.weight + delta
    torch.testing.assert_close(merged.model.layers[1].self_attn.q_proj.weight, expected, rtol=0, atol=1e-6)
    assert delta.abs().max() > 1e-4
    # it learned the chat data, and it generates
    tokenizer = load_tokenizer(tmp_path / "sft")
    texts = [tokenizer.apply_chat_template(m, tokenize=False) for m in load_dataset(chat, name="chat")["messages"][:16]]
    assert nll(merged, tokenizer, texts) < nll(base, tokenizer, texts)
    assert generates(merged, tokenizer)


@pytest.mark.slow
def test_qlora_reward_model_trains_lora_and_score_head_and_saves_full_precision(micro_full_run, trained, tmp_path):
    from align.models import load_sequence_classifier

    run = micro_full_run[0]
    metrics = run_stage(tmp_path, "reward", {
        "kind": "reward", "model": str(run / "sft"), "dataset": {"stage_dir": str(run / "preferences")},
        "lora": LORA, "quantization": "4bit",
        "args": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-2}})
    assert math.isfinite(metrics["train_loss"]) and metrics["eval_pairs"] >= 1
    model = trained[0]
    assert_4bit_lora_trained(model)
    head = model.score.modules_to_save["default"].weight  # peft's SEQ_CLS trains a copy of the score head
    assert head.requires_grad and not torch.equal(head, model.score.original_module.weight)

    reward, tokenizer = load_sequence_classifier(tmp_path / "reward")
    assert_full_precision(reward, tmp_path / "reward")
    torch.testing.assert_close(reward.score.weight, head.detach().float())
    batch = tokenizer(["the phone works very well.", "bad bad bad screen breaks"], return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = reward(**batch).logits.squeeze(-1)
    assert torch.isfinite(scores).all() and scores[0] != scores[1]


@pytest.mark.slow
def test_qlora_dpo_trains_against_the_4bit_base_with_adapters_disabled(micro_full_run, trained, tmp_path):
    from align.models import load_causal_lm, load_tokenizer

    run = micro_full_run[0]
    metrics = run_stage(tmp_path, "dpo", {
        "kind": "dpo", "model": str(run / "sft"), "dataset": {"stage_dir": str(run / "preferences")},
        "lora": LORA, "quantization": "4bit",
        "args": {"max_steps": 3, "per_device_train_batch_size": 4, "learning_rate": 1e-2, "logging_steps": 1}})
    assert math.isfinite(metrics["train_loss"]) and "rewards/margins" in metrics
    assert_4bit_lora_trained(trained[0])
    policy = load_causal_lm(tmp_path / "dpo")  # adapter merged into the float SFT model
    assert_full_precision(policy, run / "sft" / "merged")
    assert generates(policy, load_tokenizer(tmp_path / "dpo"))


@pytest.mark.slow
def test_qlora_ppo_policy_with_reference_and_value_model(micro_full_run, trained, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from align.models import load_causal_lm, load_tokenizer

    run = micro_full_run[0]
    run_stage(tmp_path, "ppo", {
        "kind": "ppo", "policy": str(run / "sft"), "reward": str(run / "reward"), "dataset": "prompts",
        "lora": LORA, "quantization": "4bit",
        "args": {"max_steps": 2, "rollout_batch_size": 4, "max_new_tokens": 8, "learning_rate": 1e-3,
                 "eval_prompts": 4, "value_model_init": "policy"}},  # seeded from the float policy, not the 4-bit one
        datasets={"prompts": {"builtin": "reviews", "split": "prompts", "size": 16}})
    assert_4bit_lora_trained(trained[0])
    assert_backward_survives_a_no_grad_forward(trained[0])  # rollouts (no-grad generation) precede every update
    logs = [h for h in json.loads((tmp_path / "ppo" / "trainer_state.json").read_text())["log_history"]
            if "objective/kl" in h]
    assert logs[0]["objective/kl"] == 0.0  # the reference is the policy with its (zero-initialised) adapter off
    assert logs[-1]["objective/kl"] != 0.0 and all(math.isfinite(h["loss/value_avg"]) for h in logs)

    policy = load_causal_lm(tmp_path / "ppo")
    assert_full_precision(policy, run / "sft" / "merged")
    assert generates(policy, load_tokenizer(tmp_path / "ppo"))
    value = AutoModelForSequenceClassification.from_pretrained(tmp_path / "ppo" / "value_model")
    assert_full_precision(value, tmp_path / "ppo" / "value_model")


def test_lora_below_a_4bit_layer_still_learns_after_a_no_grad_forward(tiny_model_dir):
    from peft import get_peft_model

    from align.models import load_for_training, quantization_config
    from align.stages.training import lora_config

    model, _ = load_for_training(tiny_model_dir, quantization=quantization_config("4bit", lora=True, where="q"))
    model = get_peft_model(model, lora_config(LORA, "lora"))
    for name, param in model.named_parameters():
        if "lora_B" in name:  # non-zero, so that the LoRA A matrices get gradients too
            torch.nn.init.normal_(param, std=0.02)
    assert_backward_survives_a_no_grad_forward(model)


# --------------------------------------------------------------------------- clear errors, before any loading

NEVER_READ = {"builtin": "reviews", "split": "sft", "size": 8}
NO_LORA = {
    "sft": {"kind": "sft", "dataset": NEVER_READ, "lora": False},
    "dpo": {"kind": "dpo", "dataset": NEVER_READ, "lora": False},
    "ppo": {"kind": "ppo", "dataset": NEVER_READ, "lora": False},
    "reward": {"kind": "reward", "dataset": NEVER_READ},  # LoRA is opt-in for reward models
}


@pytest.mark.parametrize("name", NO_LORA)
def test_quantization_without_lora_is_refused_in_every_stage(name, tiny_model_dir, tmp_path):
    spec = {**NO_LORA[name], "quantization": "4bit", "policy" if name == "ppo" else "model": str(tiny_model_dir)}
    if name == "ppo":
        spec["reward"] = str(tiny_model_dir)
    with pytest.raises(AlignError, match=rf"stages\.{name}\.quantization: .*needs LoRA.*stages\.{name}\.lora"):
        run_stage(tmp_path, name, spec)


def sft_4bit(tiny_model_dir, tmp_path, quantization="4bit"):
    run_stage(tmp_path, "sft", {**NO_LORA["sft"], "lora": LORA, "quantization": quantization,
                                "model": str(tiny_model_dir)})


def test_missing_bitsandbytes_is_a_clear_error(monkeypatch, tiny_model_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` raises ImportError
    with pytest.raises(AlignError, match=r"stages\.sft\.quantization: 4bit needs bitsandbytes, which does not import"):
        sft_4bit(tiny_model_dir, tmp_path)


def test_a_device_bitsandbytes_does_not_support_is_a_clear_error(monkeypatch, tiny_model_dir, tmp_path):
    import align.models

    monkeypatch.setattr(align.models, "quantization_device", lambda: "mps")
    monkeypatch.setattr(bnb, "supported_torch_devices", {"cuda", "cpu"})
    with pytest.raises(AlignError, match=r"stages\.sft\.quantization: 4bit trains on mps here, which bitsandbytes"):
        sft_4bit(tiny_model_dir, tmp_path)


def test_unknown_quantization_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(AlignError, match=r"stages\.sft\.quantization: expected 4bit or 8bit"):
        sft_4bit(tiny_model_dir, tmp_path, quantization="3bit")
