"""align's PPO with a KL penalty (TRL 1.x removed its PPOTrainer): config, pure math, trainer."""

from align.ppo.config import PPOConfig
from align.ppo.core import (AdaptiveKLController, FixedKLController, entropy_from_logits, explained_variance,
                            first_true_indices, gae, is_stop_token, kl_estimate, last_token_indices,
                            logprobs_from_logits, masked_mean, masked_var, masked_whiten, per_token_rewards,
                            policy_loss, position_ids, response_mask, shape_scores, truncate_after_eos, value_loss)
from align.ppo.trainer import PPOTrainer

__all__ = ["AdaptiveKLController", "FixedKLController", "PPOConfig", "PPOTrainer", "entropy_from_logits",
           "explained_variance", "first_true_indices", "gae", "is_stop_token", "kl_estimate", "last_token_indices",
           "logprobs_from_logits", "masked_mean", "masked_var", "masked_whiten", "per_token_rewards", "policy_loss",
           "position_ids", "response_mask", "shape_scores", "truncate_after_eos", "value_loss"]
