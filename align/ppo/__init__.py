"""align's PPO with a KL penalty (TRL removed its PPOTrainer): config, pure math, trainer."""

from align.ppo.config import PPOConfig
from align.ppo.core import (AdaptiveKLController, FixedKLController, entropy_from_logits, first_true_indices, gae,
                            kl_estimate, logprobs_from_logits, masked_mean, masked_var, masked_whiten,
                            per_token_rewards, policy_loss, response_mask, value_loss)
from align.ppo.trainer import PPOTrainer

__all__ = ["AdaptiveKLController", "FixedKLController", "PPOConfig", "PPOTrainer", "entropy_from_logits",
           "first_true_indices", "gae", "kl_estimate", "logprobs_from_logits", "masked_mean", "masked_var",
           "masked_whiten", "per_token_rewards", "policy_loss", "response_mask", "value_loss"]
