"""PPOConfig: ``transformers.TrainingArguments`` plus the PPO knobs (names follow TRL's old PPOConfig).

Units. ``max_steps`` is the number of PPO *iterations* (one iteration = roll out
``rollout_batch_size`` prompts on each process, score them, then ``ppo_epochs`` passes of
``num_mini_batches`` optimizer steps). ``logging_steps``, ``save_steps`` and ``eval_steps`` count
iterations too (a value below 1 is a fraction of ``max_steps``, as in TrainingArguments). With
``max_steps <= 0`` the run makes ``num_train_epochs`` passes over the prompts instead.
``per_device_train_batch_size`` is the micro-batch of every forward/backward: a minibatch larger
than it is accumulated in micro-batches (``gradient_accumulation_steps`` is not used).

Scores. The judged score s of a response becomes the sequence reward in this order:
``s' = reward_scale·(s - reward_shift)``; minus ``missing_eos_penalty`` if the response never
emitted EOS; clipped to ``[-reward_clip, reward_clip]``. Fix ``reward_shift``/``reward_scale`` to
the mean/std of the reward model's scores on the starting policy's samples to get the normalised
reward of Huang et al. 2024 (and Ziegler et al. 2019).

Defaults suit small models trained on CPU with LoRA; the learning rate in particular is a
placeholder: recipes set it (tiny from-scratch models want ~1e-3..1e-2, billion-parameter models
fully fine-tuned ~1e-6..1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


def knob(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class PPOConfig(TrainingArguments):
    # --- TrainingArguments fields whose default or meaning changes here
    learning_rate: float = knob(1e-4, "AdamW learning rate of the policy (and of the value model unless "
                                      "value_learning_rate is set). Recipes set it for their model size.")
    max_steps: int = knob(100, "Number of PPO iterations (rollout + optimisation). <= 0: num_train_epochs passes "
                               "over the prompts.")
    logging_steps: float = knob(1, "Log every N iterations.")
    save_steps: float = knob(50, "Checkpoint every N iterations (and at the end).")
    eval_steps: float | None = knob(10, "Evaluate on the fixed eval prompts every N iterations (also before the "
                                        "first and after the last iteration); None or 0 disables.")
    per_device_train_batch_size: int = knob(8, "Micro-batch size of every forward/backward pass.")

    # --- rollout
    rollout_batch_size: int = knob(16, "Prompts sampled per PPO iteration on each process.")
    max_new_tokens: int = knob(32, "Longest response sampled; a response without EOS by then is truncated.")
    max_prompt_length: int | None = knob(None, "Keep only the last N prompt tokens (None: no truncation).")
    temperature: float = knob(1.0, "Sampling temperature; log-probabilities are computed from logits/temperature, "
                                    "the distribution that sampled.")
    top_k: int = knob(0, "Must stay 0: top-k truncation would sample from a distribution PPO's log-probs (the full "
                         "softmax of logits/temperature) do not describe, biasing the ratio and the KL.")
    top_p: float = knob(1.0, "Must stay 1.0, for the same reason as top_k.")
    use_vllm: bool = knob(False, "Sample rollouts with a vLLM engine in this process, given the policy's weights "
                                 "(LoRA merged) before every rollout; the loss keeps the training model's log-probs. "
                                 "The ppo stage sets it from generation.backend: vllm.")
    vllm_importance_sampling_correction: bool = knob(
        True, "With use_vllm: weight each token's policy loss by the truncated importance ratio "
              "min(pi_train/pi_vllm, vllm_importance_sampling_clip_max) (TRL's token_truncate), which corrects for "
              "the sampler's numerics differing from the training forward.")
    vllm_importance_sampling_clip_max: float = knob(3.0, "Upper bound C of the truncated importance ratio (TRL's).")

    # --- optimisation
    num_mini_batches: int = knob(2, "Minibatches (optimizer steps) per pass over a rollout batch.")
    ppo_epochs: int = knob(4, "Passes over each rollout batch.")
    cliprange: float = knob(0.2, "Clip range ε of the policy ratio.")
    cliprange_value: float = knob(0.2, "Clip range of the value update around the rollout's values.")
    vf_coef: float = knob(0.1, "Weight of the value loss in pg_loss + vf_coef·vf_loss.")
    value_learning_rate: float | None = knob(None, "Learning rate of the value model (None: learning_rate).")
    loss_aggregation: str = knob("token", "How per-token losses make a minibatch's loss: token (sum over real tokens / "
                                          "their number in the whole minibatch, all processes: every token weighs "
                                          "the same) or sequence (mean per response, then over responses: every "
                                          "response weighs the same). Either way the update does not depend on "
                                          "per_device_train_batch_size or the number of processes.")
    value_max_grad_norm: float | None = knob(None, "Gradient-norm clip of the critic, applied apart from the policy's "
                                                   "max_grad_norm so that large early value gradients cannot shrink "
                                                   "policy steps (None: the same limit as max_grad_norm; 0: no clip).")
    gamma: float = knob(1.0, "Discount factor γ.")
    lam: float = knob(0.95, "GAE λ.")
    whiten_advantages: bool = knob(True, "Normalise advantages to mean 0, std 1 over each rollout batch.")
    whiten_rewards: bool = knob(False, "Scale the per-token rewards to unit std over each rollout batch (mean kept).")

    # --- reward
    kl_coef: float = knob(0.05, "β: weight of the per-token KL penalty -β·(log π - log π_ref).")
    adaptive_kl: bool = knob(False, "Adapt β towards kl_target (Ziegler et al. 2019).")
    kl_target: float = knob(6.0, "Target KL per response (nats, summed over tokens) of the adaptive controller.")
    kl_horizon: int = knob(10000, "Horizon of the adaptive controller, in episodes (responses).")
    kl_estimator: str = knob("k1", "KL estimator of the per-token penalty, of objective/kl and of the adaptive controller: "
                                   "k1 (log ratio, Ziegler et al.), k2 (½ log ratio²) or k3 ((r-1) - log r, never "
                                   "negative; TRL's PPO added it, OpenRLHF offers all three).")
    reward_weights: list[float] | None = knob(None, "Weight of each reward: the reward model first (if any), then "
                                                    "each reward function (None: all 1).")
    reward_shift: float = knob(0.0, "Subtracted from the score before scaling: s' = reward_scale·(s - reward_shift).")
    reward_scale: float = knob(1.0, "Multiplies the shifted score.")
    missing_eos_penalty: float | None = knob(None, "Subtracted from the score of a response that never emits EOS.")
    reward_clip: float | None = knob(None, "Clip the final score to [-reward_clip, reward_clip] (None: no clip).")

    # --- models
    value_model_init: str = knob("reward_model", "Where the value model starts when none is given: reward_model "
                                                 "(a trained copy of it; the policy's backbone when there is no "
                                                 "reward model) or policy (the policy's backbone, new scalar head).")

    # --- evaluation
    eval_prompts: int = knob(32, "Number of fixed prompts (from eval_dataset, else train_dataset) evaluated "
                                 "every eval_steps: mean score and KL, the reward-vs-KL trajectory.")
    per_device_eval_batch_size: int = knob(32, "Eval prompts sampled per generate call on each process (their "
                                               "log-prob forwards still go per_device_train_batch_size at a time): "
                                               "larger batches sample faster, as long as the KV cache fits.")

    def __post_init__(self):
        super().__post_init__()
        problems = []
        optim = getattr(self.optim, "value", self.optim)  # TrainingArguments turns it into an OptimizerNames
        if optim not in ("adamw_torch", "adamw_torch_fused"):
            problems.append(f"optim={optim!r} is not supported: PPO trains policy and critic with torch AdamW "
                            f"(adamw_torch)")
        if self.gradient_accumulation_steps != 1:
            problems.append(f"gradient_accumulation_steps={self.gradient_accumulation_steps} is not used by PPO, which "
                            f"accumulates micro-batches (per_device_train_batch_size) into each of its num_mini_batches "
                            f"optimizer steps itself; leave it at 1")
        if self.loss_aggregation not in ("token", "sequence"):
            problems.append(f"loss_aggregation must be token or sequence, not {self.loss_aggregation!r}")
        if self.kl_estimator not in ("k1", "k2", "k3"):
            problems.append(f"kl_estimator must be k1, k2 or k3, not {self.kl_estimator!r}")
        if self.value_model_init not in ("reward_model", "policy"):
            problems.append(f"value_model_init must be reward_model or policy, not {self.value_model_init!r}")
        if self.rollout_batch_size < 1 or self.num_mini_batches < 1 or self.ppo_epochs < 1:
            problems.append("rollout_batch_size, num_mini_batches and ppo_epochs must be positive")
        elif self.rollout_batch_size % self.num_mini_batches:
            problems.append(f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by num_mini_batches "
                            f"({self.num_mini_batches})")
        else:
            mini = self.rollout_batch_size // self.num_mini_batches
            if mini > self.per_device_train_batch_size and mini % self.per_device_train_batch_size:
                problems.append(f"the minibatch (rollout_batch_size / num_mini_batches = {mini}) must be divisible by "
                                f"per_device_train_batch_size ({self.per_device_train_batch_size})")
        if self.per_device_eval_batch_size < 1:
            problems.append(f"per_device_eval_batch_size ({self.per_device_eval_batch_size}) must be positive: it is the "
                            f"number of eval prompts per generate call")
        if self.temperature <= 0:
            problems.append("temperature must be positive (PPO needs sampling)")
        if self.top_k or self.top_p != 1.0:
            problems.append(f"top_k={self.top_k} / top_p={self.top_p} truncate the sampling distribution, which PPO's "
                            f"log-probs (full softmax of logits/temperature) do not account for; leave top_k 0 and "
                            f"top_p 1.0 (temperature is accounted for)")
        if self.vllm_importance_sampling_clip_max is not None and self.vllm_importance_sampling_clip_max <= 0:
            problems.append("vllm_importance_sampling_clip_max must be positive")
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if self.adaptive_kl and (self.kl_target <= 0 or self.kl_horizon <= 0):
            problems.append("adaptive_kl needs kl_target > 0 and kl_horizon > 0")
        if problems:
            raise ValueError("PPOConfig: " + "; ".join(problems))

    @property
    def mini_batch_size(self) -> int:
        return self.rollout_batch_size // self.num_mini_batches

    @property
    def critic_max_grad_norm(self) -> float:
        """The critic's gradient-norm limit: value_max_grad_norm, else max_grad_norm."""
        return self.max_grad_norm if self.value_max_grad_norm is None else self.value_max_grad_norm

    @property
    def micro_batch_size(self) -> int:
        return min(self.per_device_train_batch_size, self.mini_batch_size)
