"""PPOTrainer on the micro Llama: reward rises, β bites, log-probs and values line up with the actions,
the LoRA reference is the base model, a killed run resumes exactly, a reward model scores and seeds
the value model. One thread: the micro model's ops are too small to gain from two on a shared machine."""

import collections
import copy
import math

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

from align.ppo import PPOConfig, PPOTrainer, core

PROMPTS = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog is", "my phone", "the lamp was very"] * 8})


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def token_share(tokenizer, token: str = "cat"):
    """Reward: the share of the completion's tokens that are ``token`` (one token of the tiny vocabulary)."""
    target = tokenizer.convert_tokens_to_ids(token)

    def reward(prompts, completions):
        out = []
        for text in completions:
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            out.append(sum(i == target for i in ids) / max(len(ids), 1))
        return out
    return reward


def make(tmp_path, model_dir, tokenizer, *, peft_config=None, callbacks=None, **overrides):
    values = dict(output_dir=str(tmp_path), max_steps=30, rollout_batch_size=16, num_mini_batches=2, ppo_epochs=4,
                  max_new_tokens=12, learning_rate=3e-3, kl_coef=0.002, eval_steps=10, eval_prompts=16,
                  save_strategy="no", use_cpu=True, report_to="none", seed=0, disable_tqdm=True)
    values.update(overrides)
    return PPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=[token_share(tokenizer)],
                      processing_class=tokenizer, args=PPOConfig(**values), train_dataset=PROMPTS,
                      peft_config=peft_config, callbacks=callbacks)


def evals(trainer):
    return [(h["step"], h["eval/score"], h["eval/kl"]) for h in trainer.state.log_history if "eval/score" in h]


def train_logs(trainer):
    return [h for h in trainer.state.log_history if "objective/scores" in h]


def unpadded_logprobs_and_values(model, value_model, prompt: list[int], response: list[int], temperature: float):
    """Reference computation on one unpadded sequence: log pi(a_t | prompt + a_<t) and V at the same state."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1] / temperature
    logp = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(response)[:, None]).squeeze(-1)
    if value_model is None:
        return logp, None
    hidden = value_model.base_model(input_ids=ids).last_hidden_state
    return logp, value_model.score(hidden[0, len(prompt) - 1:-1]).squeeze(-1)


def rows(batch):
    """(prompt ids without left padding, response ids up to and including EOS) per sample."""
    out = []
    for ids, attention, mask in zip(batch["input_ids"], batch["attention_mask"], batch["mask"]):
        n = batch["responses"].size(1)
        prompt = ids[:-n][attention[:-n].bool()].tolist()
        out.append((prompt, ids[-n:][mask.bool()].tolist()))
    return out


# ----------------------------------------------------------------------------- learning, and the KL penalty


@pytest.fixture(scope="module")
def kl_runs(tmp_path_factory, tiny_model_dir, tiny_tokenizer):
    runs = {}
    for kl_coef in (0.002, 0.05):  # same seed, so the first rollout is the same
        runs[kl_coef] = make(tmp_path_factory.mktemp(f"kl{kl_coef}"), tiny_model_dir, tiny_tokenizer, kl_coef=kl_coef)
        runs[kl_coef].train()
    return runs


def test_reward_rises_while_kl_stays_bounded(kl_runs):
    t = kl_runs[0.002]
    trajectory = evals(t)
    assert [step for step, _, _ in trajectory] == [0, 10, 20, 30]
    (_, first, kl0), (_, last, kl_last) = trajectory[0], trajectory[-1]
    # measured (seed 0, one thread): eval score 0.004 -> 0.96 while eval KL goes 0 -> 57 nats
    assert kl0 == 0.0 and first < 0.02
    assert last > 0.3, trajectory
    scores = [h["objective/scores"] for h in train_logs(t)]
    assert sum(scores[-5:]) / 5 > sum(scores[:5]) / 5 + 0.2, scores
    # what PPO maximises, score - β·KL, rose with it (measured 0.001 -> 0.83)
    objective = [h["objective/rlhf_reward"] for h in train_logs(t)]
    assert sum(objective[-5:]) / 5 > sum(objective[:5]) / 5 + 0.2, objective
    # Bounded: finite, and below the KL of a policy that puts all its mass on one token at every step
    # (12 tokens x ln 300 = 68 nats against the near-uniform random reference).
    bound = 12 * math.log(len(t.tokenizer))
    assert all(math.isfinite(kl) and kl < bound for _, _, kl in trajectory)
    assert all(math.isfinite(h["objective/kl"]) and h["objective/kl"] < bound for h in train_logs(t))
    last_log = train_logs(t)[-1]
    for key in ("objective/kl", "objective/entropy", "objective/non_score_reward", "objective/scores",
                "objective/rlhf_reward", "policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg",
                "loss/value_avg", "val/clipfrac_avg", "val/ratio", "val/num_eos_tokens", "response_length", "kl_coef",
                "lr", "episode", "time/generation", "time/scoring", "time/optimization"):
        assert key in last_log, key
    # the penalty is -β·k1 summed over the response, and rlhf_reward = score + penalty (no shaping here)
    assert last_log["objective/non_score_reward"] == pytest.approx(-0.002 * last_log["objective/kl"], rel=1e-4, abs=1e-6)
    assert last_log["objective/rlhf_reward"] == pytest.approx(
        last_log["objective/scores"] + last_log["objective/non_score_reward"], abs=1e-6)
    assert last_log["episode"] == 30 * 16 and last_log["step"] == 30


def test_a_larger_kl_coef_ends_closer_to_the_reference(kl_runs):
    small, large = evals(kl_runs[0.002]), evals(kl_runs[0.05])
    # measured: final eval KL 57 nats (β=0.002) vs 0.7 (β=0.05), whose score stays near its start (0.007)
    assert large[-1][2] < small[-1][2] / 4
    assert max(kl for _, _, kl in large) < 5


# ----------------------------------------------------------------------------- the rollout's bookkeeping


def test_rollout_logprobs_are_the_sampling_distribution_and_values_sit_where_actions_are_chosen(
        tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    t = make(tmp_path, tiny_model_dir, tiny_tokenizer, temperature=0.7, max_steps=1)
    policy = t.policy
    # the value model starts as the policy's backbone with a new head (no reward model here)
    backbone = t.value_model.base_model.state_dict()
    assert all(torch.equal(backbone[k], v) for k, v in policy.model.state_dict().items())

    captured = {}
    generate = policy.generate

    def generate_with_scores(*args, **kwargs):
        out = generate(*args, **kwargs, output_scores=True, return_dict_in_generate=True)
        captured["scores"] = out.scores  # the processed logits each token was drawn from (temperature applied)
        return out.sequences

    monkeypatch.setattr(policy, "generate", generate_with_scores)
    torch.manual_seed(3)
    batch = t.rollout(t.train_ids[:4])  # prompts of 2..5 tokens: left padding is exercised
    mask = batch["mask"]
    sampled = torch.stack([torch.log_softmax(s.float(), -1) for s in captured["scores"]], 1)
    sampled = sampled.gather(-1, batch["responses"][..., None]).squeeze(-1)
    assert torch.allclose(sampled * mask, batch["logprobs"], atol=1e-4)
    assert torch.allclose(batch["ref_logprobs"], batch["logprobs"], atol=1e-5)  # untrained: policy == reference
    with torch.no_grad():
        for i, (prompt, response) in enumerate(rows(batch)):
            logp, values = unpadded_logprobs_and_values(policy, t.value_model, prompt, response, 0.7)
            n = len(response)
            assert torch.allclose(batch["logprobs"][i, :n], logp, atol=1e-4)
            # V(s_t) comes from the hidden state of the last token of s_t = prompt + response[:t]
            assert torch.allclose(batch["values"][i, :n], values, atol=1e-4)
            assert not batch["mask"][i, n:].any() and not batch["values"][i, n:].any()

    # the first minibatch of the first epoch sees exactly the rollout's policy: ratio 1, nothing clipped
    calls = []
    original = core.policy_loss

    def recording_policy_loss(new_logp, old_logp, *args, **kwargs):
        calls.append((new_logp.detach(), old_logp))
        return original(new_logp, old_logp, *args, **kwargs)

    monkeypatch.setattr(core, "policy_loss", recording_policy_loss)
    t.iteration()
    assert len(calls) == t.args.ppo_epochs * t.args.num_mini_batches
    assert torch.allclose(calls[0][0], calls[0][1], atol=1e-5)


# ----------------------------------------------------------------------------- LoRA


def test_lora_reference_is_the_base_model_with_adapters_disabled(tmp_path, tiny_model_dir, tiny_tokenizer):
    from peft import LoraConfig

    t = make(tmp_path, tiny_model_dir, tiny_tokenizer, max_steps=3, learning_rate=3e-2, eval_steps=None,
             peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert t.ref_model is None  # no second copy of the weights
    t.train()
    torch.manual_seed(1)
    batch = t.rollout(t.train_ids[:4])
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with torch.no_grad():
        for i, (prompt, response) in enumerate(rows(batch)):
            base_logp, _ = unpadded_logprobs_and_values(base, None, prompt, response, 1.0)
            n = len(response)
            assert torch.allclose(batch["ref_logprobs"][i, :n], base_logp, atol=1e-5)
    assert not torch.allclose(batch["logprobs"], batch["ref_logprobs"], atol=1e-3)  # the adapter did learn
    t.save_model(tmp_path / "out")
    assert (tmp_path / "out" / "adapter_model.safetensors").exists()
    assert not (tmp_path / "out" / "model.safetensors").exists()
    assert (tmp_path / "out" / "value_model" / "model.safetensors").exists()


# ----------------------------------------------------------------------------- checkpoint and resume


class Killed(Exception):
    pass


class DieAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise Killed


def test_killed_run_resumes_without_repeating_or_skipping(tmp_path, tiny_model_dir, tiny_tokenizer):
    settings = dict(max_steps=6, save_strategy="steps", save_steps=3, save_total_limit=1, eval_steps=3,
                    adaptive_kl=True, kl_coef=0.05, kl_target=0.5, kl_horizon=50)
    full = make(tmp_path / "full", tiny_model_dir, tiny_tokenizer, **settings)
    full.train()
    assert sorted(p.name for p in (tmp_path / "full").glob("checkpoint-*")) == ["checkpoint-6"]  # rotated

    cut = make(tmp_path / "cut", tiny_model_dir, tiny_tokenizer, callbacks=[DieAt(5)], **settings)
    with pytest.raises(Killed):
        cut.train()
    checkpoint = tmp_path / "cut" / "checkpoint-3"  # the last one written before the kill
    assert {p.name for p in checkpoint.iterdir()} >= {"model.safetensors", "value_model", "training_state", "scheduler.pt",
                                                      "ppo_state.pt", "rng_state.pth", "trainer_state.json"}
    resumed = make(tmp_path / "cut", tiny_model_dir, tiny_tokenizer, **settings)
    resumed.train(resume_from_checkpoint=True)

    assert resumed.state.global_step == full.state.global_step == 6
    assert resumed.prompts_seen == full.prompts_seen  # same prompts, same order
    assert len(resumed.prompts_seen) == 6 * 16
    # 32 prompts, 16 per iteration: each of 3 passes sees every prompt once -> none repeated or skipped
    assert set(collections.Counter(resumed.prompts_seen).values()) == {3}
    for a, b in zip(full.accelerator.unwrap_model(full.model).parameters(),
                    resumed.accelerator.unwrap_model(resumed.model).parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    strip = lambda history: [{k: v for k, v in h.items() if not k.startswith("time/")} for h in history]  # noqa: E731
    assert len(resumed.state.log_history) == len(full.state.log_history)
    for a, b in zip(strip(resumed.state.log_history), strip(full.state.log_history)):
        assert a.keys() == b.keys() and all(a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6) for k in a), (a, b)
    assert [h["step"] for h in train_logs(resumed)] == [1, 2, 3, 4, 5, 6]
    kl_coefs = [h["kl_coef"] for h in train_logs(resumed)]
    assert kl_coefs[0] == 0.05 and kl_coefs[-1] != 0.05  # the adaptive controller moved, and its state was restored


# ----------------------------------------------------------------------------- reward model


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(logs)


def test_reward_model_scores_conversations_and_seeds_the_value_model(tmp_path, tiny_model_dir, tiny_tokenizer):
    from align.eval.judges import RewardModelJudge

    reward_model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    reward_model.config.pad_token_id = tiny_tokenizer.pad_token_id
    snapshot = copy.deepcopy(reward_model.state_dict())
    conversations = datasets.Dataset.from_dict(
        {"prompt": [[{"role": "user", "content": text}] for text in ["the cat", "a dog is", "my phone", "the lamp"] * 4]})
    seen = []

    def length_bonus(prompts, completions):
        seen.extend(prompts)
        return [len(c) / 100 for c in completions]

    args = PPOConfig(output_dir=str(tmp_path), max_steps=2, rollout_batch_size=8, max_new_tokens=8, learning_rate=3e-3,
                     eval_steps=None, save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True,
                     reward_weights=[1.0, 0.5])
    recorder = Recorder()
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_model=reward_model,
                   reward_funcs=[length_bonus], processing_class=tiny_tokenizer, args=args, train_dataset=conversations,
                   callbacks=[recorder])
    # conversational prompts go through the chat template with the generation prompt
    expected = tiny_tokenizer.apply_chat_template(conversations[0]["prompt"], add_generation_prompt=True, tokenize=False)
    assert t.train_ids[0] == tiny_tokenizer(expected, add_special_tokens=False)["input_ids"]
    # the value model is a trainable copy of the reward model
    assert t.value_model is not reward_model and type(t.value_model).__name__ == "LlamaForSequenceClassification"
    assert all(torch.equal(t.value_model.state_dict()[k], v) for k, v in snapshot.items())
    # score = 1.0 * reward model + 0.5 * function
    prompts, texts = conversations["prompt"][:3], ["good", "the cat is", ""]
    judge = RewardModelJudge(reward_model, tiny_tokenizer).score(prompts, texts)
    expected_scores = [r + 0.5 * len(c) / 100 for r, c in zip(judge, texts)]
    assert t.score(prompts, texts).tolist() == pytest.approx(expected_scores, abs=1e-5)

    t.train()
    assert t.state.global_step == 2 and "objective/scores" in t.state.log_history[-1]
    assert [logs["objective/kl"] for logs in recorder.logs] == [h["objective/kl"] for h in train_logs(t)]  # callbacks see the logs
    assert seen and all(isinstance(p, list) and p[0]["role"] == "user" for p in seen)  # the dataset's own format
    assert all(torch.equal(reward_model.state_dict()[k], v) for k, v in snapshot.items())  # the reward model is frozen
    assert not all(torch.equal(t.value_model.state_dict()[k], v) for k, v in snapshot.items())  # the value model trained
    t.save_model(tmp_path / "out")
    assert (tmp_path / "out" / "value_model" / "config.json").exists()


# ----------------------------------------------------------------------------- mistakes


def test_config_and_constructor_reject_mistakes(tmp_path, tiny_model_dir, tiny_tokenizer):
    common = dict(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    with pytest.raises(ValueError, match="kl_estimator"):
        PPOConfig(kl_estimator="k4", **common)
    with pytest.raises(ValueError, match="divisible"):
        PPOConfig(rollout_batch_size=10, num_mini_batches=3, **common)
    with pytest.raises(ValueError, match="per_device_eval_batch_size"):
        PPOConfig(per_device_eval_batch_size=0, **common)
    with pytest.raises(ValueError, match="optim='adafactor' is not supported"):  # never silently ignored
        PPOConfig(optim="adafactor", **common)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=4 is not used by PPO"):
        PPOConfig(gradient_accumulation_steps=4, **common)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(ValueError, match="reward"):
        PPOTrainer(model, processing_class=tiny_tokenizer, args=PPOConfig(**common), train_dataset=PROMPTS)
    with pytest.raises(ValueError, match="prompt"):
        PPOTrainer(model, reward_funcs=[token_share(tiny_tokenizer)], processing_class=tiny_tokenizer,
                   args=PPOConfig(**common), train_dataset=datasets.Dataset.from_dict({"input_ids": [[1, 2]]}))


def test_weight_decay_skips_biases_and_norms_as_trainer_does(tmp_path, tiny_model_dir, tiny_tokenizer):
    args = PPOConfig(output_dir=str(tmp_path), use_cpu=True, report_to="none", weight_decay=0.1, max_steps=1)
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_funcs=[token_share(tiny_tokenizer)],
                   processing_class=tiny_tokenizer, args=args, train_dataset=PROMPTS)
    names = {id(p): n for n, p in t.accelerator.unwrap_model(t.model).named_parameters()}
    decayed = [names[id(p)] for g in t.optimizer.param_groups if g["weight_decay"] == 0.1 for p in g["params"]]
    kept = [names[id(p)] for g in t.optimizer.param_groups if g["weight_decay"] == 0.0 for p in g["params"]]
    assert decayed and kept and all("norm" in n for n in kept) and not any("norm" in n for n in decayed)
    assert len(decayed) + len(kept) == sum(p.requires_grad for p in t.accelerator.unwrap_model(t.model).parameters())


# ----------------------------------------------------------------------------- loss aggregation, clipping, LoRA critic


def weights_after_one_iteration(tmp_path, model_dir, tokenizer, **overrides):
    t = make(tmp_path, model_dir, tokenizer, max_steps=1, eval_steps=None, rollout_batch_size=8, ppo_epochs=1,
             num_mini_batches=1, **overrides)
    t.train()
    return [p.detach().clone() for p in t.accelerator.unwrap_model(t.model).parameters()]


@pytest.mark.parametrize("aggregation", ["token", "sequence"])
def test_the_update_does_not_depend_on_the_micro_batch_size(tmp_path, tiny_model_dir, tiny_tokenizer, aggregation):
    # one minibatch of 8 responses, in one micro-batch of 8 or four of 2: the same objective, the same step
    whole = weights_after_one_iteration(tmp_path / "a", tiny_model_dir, tiny_tokenizer, loss_aggregation=aggregation,
                                        per_device_train_batch_size=8)
    split = weights_after_one_iteration(tmp_path / "b", tiny_model_dir, tiny_tokenizer, loss_aggregation=aggregation,
                                        per_device_train_batch_size=2)
    start = [p.detach() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters()]
    assert any(not torch.equal(a, b) for a, b in zip(whole, start))  # it did train
    for a, b in zip(whole, split):
        assert torch.allclose(a, b, atol=2e-6)


def test_policy_and_critic_gradients_are_clipped_apart(tmp_path, tiny_model_dir, tiny_tokenizer):
    t = make(tmp_path, tiny_model_dir, tiny_tokenizer, max_steps=1, eval_steps=None, rollout_batch_size=8, ppo_epochs=1,
             num_mini_batches=1, max_grad_norm=1e-3, value_max_grad_norm=1e6)
    norms, step = [], t.optimizer.step

    def recording_step(*args, **kwargs):  # the gradients the optimizer is about to apply
        grads = lambda module: torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])  # noqa: E731
        norms.append((grads(t.policy).norm().item(), grads(t.value_model).norm().item()))
        return step(*args, **kwargs)

    t.optimizer.step = recording_step
    t.train()
    (policy_norm, value_norm), = norms
    logged = train_logs(t)[0]
    assert logged["policy/grad_norm"] > 1e-3 and policy_norm == pytest.approx(1e-3, rel=1e-3)  # clipped to its limit
    # the critic kept its whole gradient: a joint norm would have scaled it by 1e-3 / (joint norm) too
    assert value_norm == pytest.approx(logged["val/grad_norm"], rel=1e-4) and value_norm > 1e-2


def test_lora_critic_lives_on_the_reward_models_weights(tmp_path, tiny_model_dir, tiny_tokenizer):
    from peft import LoraConfig

    from align.eval.judges import RewardModelJudge

    rm_dir = tmp_path / "rm"  # the head is new: save it once so that every load is the same reward model
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(rm_dir)

    def reward_model():
        model = AutoModelForSequenceClassification.from_pretrained(rm_dir)
        model.config.pad_token_id = tiny_tokenizer.pad_token_id
        return model

    def trainer(out, **overrides):
        rm = reward_model()
        args = PPOConfig(output_dir=str(out), max_steps=2, rollout_batch_size=8, max_new_tokens=8, learning_rate=3e-3,
                         eval_steps=None, save_steps=1, use_cpu=True, report_to="none", disable_tqdm=True, seed=0,
                         **overrides)
        return rm, PPOTrainer(AutoModelForCausalLM.from_pretrained(tiny_model_dir), reward_model=rm,
                              processing_class=tiny_tokenizer, args=args, train_dataset=PROMPTS,
                              peft_config=LoraConfig(r=4, target_modules="all-linear"),
                              value_peft_config=LoraConfig(r=4, target_modules="all-linear"))

    rm, t = trainer(tmp_path / "full")
    assert t.value_model.get_base_model() is rm  # one copy of the reward model's weights serves judge and critic
    trainable = [n for n, p in t.value_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "score.modules_to_save" in n for n in trainable)
    texts = ["the cat", "a dog", ""]
    untouched = RewardModelJudge(reward_model(), tiny_tokenizer).score(PROMPTS["prompt"][:3], texts)
    assert t.score(PROMPTS["prompt"][:3], texts).tolist() == pytest.approx(untouched, abs=1e-6)
    lora_before = {n: p.detach().clone() for n, p in t.value_model.named_parameters() if p.requires_grad}
    t.train()
    # the judge still scores as the untouched reward model (adapter disabled); the critic's adapter and head trained
    assert t.score(PROMPTS["prompt"][:3], texts).tolist() == pytest.approx(untouched, abs=1e-6)
    after = dict(t.value_model.named_parameters())
    assert any(not torch.equal(after[n], v) for n, v in lora_before.items())
    t.save_model(tmp_path / "out")
    assert (tmp_path / "out" / "value_model" / "adapter_config.json").exists()

    # resuming restores the adapters and AdamW states (only trainable weights are checkpointed)
    _, again = trainer(tmp_path / "full")
    again.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-1"))
    for name, value in again.value_model.named_parameters():
        assert torch.allclose(value, after[name], atol=1e-6), name


def test_evaluation_samples_eval_batches_with_the_same_seed_every_time(tmp_path, tiny_model_dir, tiny_tokenizer):
    t = make(tmp_path, tiny_model_dir, tiny_tokenizer, max_steps=1, eval_steps=None, eval_prompts=16,
             per_device_eval_batch_size=6)
    sizes, rollout = [], t.rollout
    t.rollout = lambda ids, values=True: sizes.append(len(ids)) or rollout(ids, values=values)
    first, second = t.evaluate(), t.evaluate()
    assert sizes == [6, 6, 4] * 2  # per_device_eval_batch_size prompts per generate call, not rollout_batch_size
    assert first == second  # fixed prompts and seed: the trajectory follows the policy, not sampling noise
