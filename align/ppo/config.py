"""PPOConfig: TrainingArguments plus the PPO knobs, named as TRL's old PPOConfig named them."""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import TrainingArguments


def knob(default, help_text: str):
    return field(default=default, metadata={"help": help_text})


@dataclass
class PPOConfig(TrainingArguments):
    """``max_steps`` counts PPO iterations (rollout + optimisation); ``save_steps``, ``eval_steps`` and
    ``logging_steps`` count iterations too. Defaults suit small models trained with LoRA."""

    learning_rate: float = knob(5e-4, "AdamW learning rate for the policy (LoRA) and the value model.")
    max_steps: int = knob(100, "Number of PPO iterations.")
    logging_steps: float = knob(1, "Log every N iterations.")
    rollout_batch_size: int = knob(16, "Prompts sampled per iteration on each process.")
    num_mini_batches: int = knob(2, "Minibatches each rollout batch is split into for the updates.")
    ppo_epochs: int = knob(2, "Passes over each rollout batch.")
    max_new_tokens: int = knob(48, "Longest response sampled.")
    temperature: float = knob(1.0, "Sampling temperature; log-probs are computed at the same temperature.")
    top_k: int = knob(0, "Top-k truncation while sampling (0: none; truncation biases the KL estimate).")
    top_p: float = knob(1.0, "Nucleus truncation while sampling (1.0: none).")
    kl_coef: float = knob(0.05, "beta: weight of the per-token KL penalty -beta·(log pi - log pi_ref).")
    adaptive_kl: bool = knob(False, "Adapt beta towards kl_target (Ziegler et al. 2019).")
    kl_target: float = knob(6.0, "Target KL per response (nats) for the adaptive controller.")
    kl_horizon: int = knob(10000, "Horizon (in episodes) of the adaptive controller.")
    kl_estimator: str = knob("k1", "Estimator of the reported KL: k1, k2 or k3 (the penalty always uses k1).")
    gamma: float = knob(1.0, "Discount factor.")
    lam: float = knob(0.95, "GAE lambda.")
    cliprange: float = knob(0.2, "Clip range of the policy ratio.")
    cliprange_value: float = knob(0.2, "Clip range of the value update.")
    vf_coef: float = knob(0.1, "Weight of the value loss.")
    whiten_advantages: bool = knob(True, "Normalise advantages over each rollout batch.")
    whiten_scores: bool = knob(False, "Normalise sequence scores over each rollout batch before the KL penalty.")
    missing_eos_penalty: float | None = knob(None, "Subtracted from the score of a response that never emits EOS.")
    reward_clip: float | None = knob(None, "Clip sequence scores to [-reward_clip, reward_clip].")
    eval_prompts: int = knob(32, "Fixed prompts for the periodic evaluation (reward-vs-KL trajectory).")
    eval_steps: float | None = knob(10, "Evaluate on the fixed prompts every N iterations.")
    save_steps: float = knob(20, "Checkpoint every N iterations.")

    def __post_init__(self):
        super().__post_init__()
        if self.kl_estimator not in ("k1", "k2", "k3"):
            raise ValueError(f"kl_estimator must be k1, k2 or k3, not {self.kl_estimator!r}")
        if self.rollout_batch_size % self.num_mini_batches:
            raise ValueError(f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by "
                             f"num_mini_batches ({self.num_mini_batches})")
        if self.max_steps <= 0:
            raise ValueError("max_steps (the number of PPO iterations) must be positive")
