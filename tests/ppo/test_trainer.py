"""PPOTrainer on a micro Llama: reward rises, the KL penalty bites, LoRA reference, resume, reward model."""

import copy

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from align.ppo import PPOConfig, PPOTrainer

PROMPTS = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog", "my phone", "the lamp"] * 8})


def low_id_fraction(tokenizer):
    """Reward: share of the response's tokens whose id is below 150 (about half the vocabulary)."""
    def reward(prompts, completions):
        out = []
        for text in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(sum(i < 150 for i in ids) / max(len(ids), 1))
        return out
    return reward


def config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), max_steps=25, rollout_batch_size=16, max_new_tokens=12,
                  learning_rate=1e-2, kl_coef=0.01, use_cpu=True, report_to="none", save_steps=1000,
                  eval_steps=5, eval_prompts=16, seed=0)
    return PPOConfig(**{**values, **overrides})


def trainer(tmp_path, model_dir, tokenizer, **overrides):
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return PPOTrainer(model, reward_funcs=[low_id_fraction(tokenizer)], processing_class=tokenizer,
                      args=config(tmp_path, **{k: v for k, v in overrides.items() if k != "peft_config"}),
                      train_dataset=PROMPTS, peft_config=overrides.get("peft_config"))


def evals(t):
    return [(h["eval/score"], h["eval/kl"]) for h in t.state.log_history if "eval/score" in h]


@pytest.fixture(scope="module")
def kl_runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    runs = {}
    for kl_coef in (0.01, 0.5):
        t = trainer(tmp_path_factory.mktemp(f"kl{kl_coef}"), tiny_model_dir, tiny_tokenizer, kl_coef=kl_coef)
        t.train()
        runs[kl_coef] = t
    return runs


def test_reward_rises_while_kl_stays_bounded(kl_runs):
    trajectory = evals(kl_runs[0.01])
    first, last = trajectory[0][0], trajectory[-1][0]
    assert last > first + 0.05, trajectory  # measured: 0.67 -> 0.76 at iteration 25
    assert all(kl < 30 for _, kl in trajectory), trajectory
    logged = kl_runs[0.01].state.log_history[-1]
    for key in ("objective/kl", "objective/entropy", "objective/scores", "objective/rlhf_reward", "policy/approxkl_avg",
                "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg", "val/clipfrac_avg", "response_length",
                "time/generation", "time/scoring", "time/optimization"):
        assert key in logged, key


def test_a_larger_kl_coef_ends_closer_to_the_reference(kl_runs):
    assert evals(kl_runs[0.5])[-1][1] < evals(kl_runs[0.01])[-1][1]


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path, tiny_model_dir, tiny_tokenizer):
    from peft import LoraConfig

    t = trainer(tmp_path, tiny_model_dir, tiny_tokenizer, max_steps=3, learning_rate=5e-2,
                peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    t.train()
    batch = t.sample(["the cat", "a dog"], seed=1)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    expected = t.forward_logprobs(base, batch["input_ids"], batch["attention_mask"], batch["context"]) * batch["mask"]
    assert torch.allclose(batch["ref_logprobs"], expected, atol=1e-5)
    assert not torch.allclose(batch["logprobs"], expected, atol=1e-3)  # the adapter did learn something


class DieAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def test_killed_run_resumes_without_repeating_or_skipping(tmp_path, tiny_model_dir, tiny_tokenizer):
    settings = dict(max_steps=6, save_steps=3, eval_steps=3)
    full = trainer(tmp_path / "full", tiny_model_dir, tiny_tokenizer, **settings)
    full.train()

    cut = trainer(tmp_path / "cut", tiny_model_dir, tiny_tokenizer, **settings)
    cut.callback_handler.add_callback(DieAt(4))
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = trainer(tmp_path / "cut", tiny_model_dir, tiny_tokenizer, **settings)
    resumed.train(resume_from_checkpoint=True)

    assert resumed.state.global_step == full.state.global_step == 6
    assert resumed.prompts_seen == full.prompts_seen  # same prompts in the same order: none repeated or skipped
    assert len(resumed.prompts_seen) == 6 * 16
    for a, b in zip(full.unwrapped.parameters(), resumed.unwrapped.parameters()):
        assert torch.allclose(a, b, atol=1e-5)
    steps = [h["step"] for h in resumed.state.log_history if "objective/scores" in h]
    assert steps == list(range(1, 7))


def test_reward_model_scores_and_initialises_the_value_model(tmp_path, tiny_model_dir, tiny_tokenizer):
    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward_model.config.pad_token_id = tiny_tokenizer.pad_token_id
    snapshot = copy.deepcopy(reward_model.state_dict())
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_model=reward_model,
                   processing_class=tiny_tokenizer, args=config(tmp_path, max_steps=2), train_dataset=PROMPTS)
    value_state = t.unwrapped.value_model.state_dict()
    assert all(torch.equal(value_state[k], v) for k, v in snapshot.items())
    t.train()
    assert t.state.global_step == 2 and "objective/scores" in t.state.log_history[-1]
    assert all(torch.equal(reward_model.state_dict()[k], v) for k, v in snapshot.items())  # the reward model stays frozen
    t.save_model(tmp_path / "out")
    assert (tmp_path / "out" / "value_model" / "config.json").exists()


def test_needs_a_reward(tmp_path, tiny_model_dir, tiny_tokenizer):
    with pytest.raises(ValueError, match="reward"):
        PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), processing_class=tiny_tokenizer,
                   args=config(tmp_path), train_dataset=PROMPTS)
