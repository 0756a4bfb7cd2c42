"""PPO with a KL penalty, as pure tensor functions (each one checked against hand arithmetic in tests).

Conventions. Per-token tensors have shape ``(batch, response_length)``. Response token ``t`` is the
action ``a_t`` taken in state ``s_t = prompt + response[:t]``. ``mask`` is 1 on the real response
tokens -- up to and including the first EOS, or all of them for a response cut off at
``max_new_tokens`` -- and 0 on the padding after the EOS. Masked positions never leak into a
result: they are multiplied out or excluded from means.

References: Ziegler et al. 2019 (per-token KL penalty, adaptive controller); Schulman et al. 2016
(GAE); Schulman et al. 2017 (clipped surrogate); Stiennon et al. 2020 and Ouyang et al. 2022
(the RLHF recipe); Huang et al. 2024, "The N+ implementation details of RLHF with PPO";
Schulman 2020, "Approximating KL divergence" (k1/k2/k3).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------- masked statistics


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x·m) / sum(m)`` over ``dim`` (or over everything). An all-masked slice gives 0, not NaN."""
    mask = mask.to(values.dtype)
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """``sum(m·(x - mean)²) / n`` with ``n = sum(m)``; ``unbiased`` divides by ``n - 1`` instead
    (Bessel). With fewer than two unmasked values the unbiased form falls back to the biased one."""
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    n = mask.sum()
    if unbiased and n >= 2:
        variance = variance * n / (n - 1)
    return variance


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``(x - mean) / sqrt(var + eps)`` with the masked (unbiased) mean and variance. With
    ``shift_mean=False`` the mean is added back, ``x' = (x - mean)/std + mean``: only the scale
    changes, so the sign of a reward keeps its meaning. Masked positions come out as 0."""
    mean, var = masked_mean(values, mask), masked_var(values, mask)
    whitened = (values - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask.to(values.dtype)


# ----------------------------------------------------------------------------- responses and EOS


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True in each row; the row length where a row has none."""
    length = bools.size(-1)
    positions = torch.arange(length, device=bools.device).expand_as(bools)
    return torch.where(bools, positions, length).min(-1).values


def is_stop_token(responses: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """True where a token is the EOS (or any of several stop tokens, e.g. EOS and end-of-turn)."""
    stops = torch.as_tensor(eos_token_id, device=responses.device).reshape(-1)
    return torch.isin(responses, stops)


def response_mask(responses: torch.Tensor, eos_token_id: int | list[int]) -> torch.Tensor:
    """1 on every token up to and including the first EOS, 0 after it ("truncate after EOS");
    a response without EOS is all ones (it was cut off by ``max_new_tokens``). ``eos_token_id``
    may list several stop tokens."""
    first_eos = first_true_indices(is_stop_token(responses, eos_token_id))
    positions = torch.arange(responses.size(-1), device=responses.device).expand_as(responses)
    return (positions <= first_eos.unsqueeze(-1)).long()


def truncate_after_eos(responses: torch.Tensor, eos_token_id: int | list[int], pad_token_id: int) -> torch.Tensor:
    """The responses with every token after the first EOS replaced by ``pad_token_id``."""
    return torch.where(response_mask(responses, eos_token_id).bool(), responses, pad_token_id)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counting only the real ones, ``cumsum(mask) - 1`` (0 on left padding),
    as ``generate`` assigns them; scoring a left-padded batch with any other positions would not
    give the log-probs of the distribution that sampled."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


# ----------------------------------------------------------------------------- distributions


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``log softmax(z)[a] = z_a - logsumexp(z)`` at every position (computed in float32).
    Sampling at temperature T means the caller passes ``z / T``."""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), -1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """``H = -sum_i p_i log p_i = logsumexp(z) - sum_i p_i z_i`` per position, ``p = softmax(z)``."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimators of KL(pi || ref) from tokens sampled from pi (Schulman 2020):

    - ``k1 = log pi - log ref``: unbiased, high variance, can be negative;
    - ``k2 = ½ (log pi - log ref)²``: biased (exact to second order), low variance, never negative;
    - ``k3 = (r - 1) - log r`` with ``r = ref/pi = exp(log ref - log pi)``: unbiased, never negative.
    """
    log_ratio = logp - ref_logp
    if kind == "k1":
        return log_ratio
    if kind == "k2":
        return 0.5 * log_ratio**2
    if kind == "k3":
        return torch.expm1(-log_ratio) + log_ratio  # (e^{-Δ} - 1) - (-Δ)
    raise ValueError(f"unknown KL estimator {kind!r}; use k1, k2 or k3")


# ----------------------------------------------------------------------------- rewards and advantages


def last_token_indices(mask: torch.Tensor) -> torch.Tensor:
    """Position of the last real token of each response: ``sum(mask) - 1`` (0 for an empty row)."""
    return (mask.sum(-1) - 1).clamp(min=0).long()


def shape_scores(scores: torch.Tensor, has_eos: torch.Tensor, *, scale: float = 1.0, shift: float = 0.0,
                 missing_eos_penalty: float | None = None, clip: float | None = None) -> torch.Tensor:
    """The sequence reward from the judged score, in this order:

        s' = scale·(s - shift)  -  missing_eos_penalty·[response has no EOS],  clipped to [-clip, clip].
    """
    shaped = scale * (scores - shift)
    if missing_eos_penalty is not None:
        shaped = shaped - missing_eos_penalty * (~has_eos.bool()).to(shaped.dtype)
    if clip is not None:
        shaped = shaped.clamp(-clip, clip)
    return shaped


def per_token_rewards(score: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor,
                      kl_coef: float, kl_estimator: str = "k1") -> tuple[torch.Tensor, torch.Tensor]:
    """Ziegler et al.'s shaped reward:

        r_t = -β·k(a_t)     at every response token, k the per-token KL estimate (``kl_estimate``;
                            k1 = log pi(a_t|s_t) - log ref(a_t|s_t), Ziegler's; k3 never negative),
        r_T += score        at the last real token T (the EOS, or the last token of a truncated response).

    Returns ``(rewards, non_score_rewards)`` -- the second is the KL part alone -- both 0 on padding.
    """
    mask = mask.to(logp.dtype)
    non_score = -kl_coef * kl_estimate(logp, ref_logp, kl_estimator) * mask
    rewards = non_score.clone()
    rows = torch.arange(rewards.size(0), device=rewards.device)
    rewards[rows, last_token_indices(mask)] += score.to(rewards.dtype)
    return rewards * mask, non_score


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016), backwards over the response:

        δ_t = r_t + γ·V_{t+1} - V_t          with V_{T+1} = 0 after the last real token T,
        A_t = δ_t + γ·λ·A_{t+1}              with A_{T+1} = 0,
        returns R_t = A_t + V_t              (the value target, λ-return).

    Padding contributes nothing (its values are masked to 0 before use) and gets A = R = 0.
    """
    mask = mask.to(values.dtype)
    values = values * mask
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros_like(rewards[:, 0])
    next_advantage = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.size(1))):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * mask[:, t]
        next_value, next_advantage = values[:, t], advantages[:, t]
    return advantages, (advantages + values) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``1 - Var(R - V) / Var(R)`` over real tokens: 1 for a perfect critic, 0 for a constant one."""
    return 1 - masked_var(returns - values, mask) / masked_var(returns, mask).clamp(min=1e-8)


# ----------------------------------------------------------------------------- losses


def aggregate(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token",
              total: torch.Tensor | float | None = None) -> torch.Tensor:
    """A (micro-)batch's per-token losses as its share of the minibatch objective.

        token:     sum_{i,t} x_it·m_it / N          N = real tokens in the whole minibatch,
        sequence:  sum_i (sum_t x_it·m_it / n_i) / N    n_i = real tokens of response i, N = responses.

    ``token`` weighs every token alike, ``sequence`` every response alike whatever its length.
    ``total`` is N over the whole minibatch (all micro-batches, all processes), so that the
    micro-batch losses add up to the minibatch's and the objective does not depend on how it is
    split; None takes this batch's own N, which is the masked mean (token) or the mean of
    per-response means (sequence).
    """
    mask = mask.to(per_token.dtype)
    if mode == "token":
        summed = (per_token * mask).sum()
        return summed / (mask.sum().clamp(min=1) if total is None else total)
    if mode == "sequence":
        summed = ((per_token * mask).sum(-1) / mask.sum(-1).clamp(min=1)).sum()
        return summed / (per_token.size(0) if total is None else total)
    raise ValueError(f"unknown loss aggregation {mode!r}; use token or sequence")


def truncated_importance_weights(train_logp: torch.Tensor, sampler_logp: torch.Tensor, mask: torch.Tensor,
                                 clip_max: float | None) -> torch.Tensor:
    """Per-token truncated importance sampling (TIS; TRL's ``vllm_importance_sampling_mode="token_truncate"``):

        w_t = min(exp(log pi_train(a_t) - log pi_sampler(a_t)), C)

    where pi_sampler is the distribution the tokens were actually drawn from (vLLM's kernels) and pi_train the
    training forward's. Padding, and tokens whose sampler log-prob is unknown (NaN), get weight 1."""
    diff = torch.nan_to_num((train_logp - sampler_logp) * mask, nan=0.0)
    weights = torch.exp(diff)
    return torch.clamp(weights, max=clip_max) if clip_max is not None else weights


def policy_loss(new_logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                cliprange: float, aggregation: str = "token",
                total: torch.Tensor | float | None = None,
                is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate (Schulman et al. 2017), as a loss to minimise, aggregated over real tokens
    (``aggregate``; by default the mean over tokens):

        ρ = exp(log pi_new - log pi_old),
        L = mean_t max(-A_t·ρ_t, -A_t·clip(ρ_t, 1-ε, 1+ε)).

    Returns ``(loss, clipfrac, approx_kl)``: ``clipfrac`` is the share of tokens where the clipped
    term is strictly the larger (the gradient is cut there); ``approx_kl = ½·mean (log ρ)²`` (the
    k2 estimator of KL(old || new), as TRL's PPO logged it). Both are plain token means.
    ``is_weights`` (``truncated_importance_weights``) multiplies each token's loss, as TRL's GRPO does with vLLM.
    """
    log_ratio = new_logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - cliprange, 1.0 + cliprange)
    per_token = torch.max(unclipped, clipped)
    if is_weights is not None:
        per_token = per_token * is_weights
    loss = aggregate(per_token, mask, aggregation, total)
    clipfrac = masked_mean((clipped > unclipped).float(), mask)
    approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return loss, clipfrac, approx_kl


def value_loss(new_values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               cliprange_value: float, aggregation: str = "token",
               total: torch.Tensor | float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss (PPO2 baselines / TRL), aggregated as ``policy_loss``:

        V_clip = V_old + clip(V - V_old, -ε_v, ε_v),
        L_V = ½·mean_t max((V_t - R_t)², (V_clip_t - R_t)²).

    Returns ``(loss, clipfrac)``, ``clipfrac`` = share of tokens where the clipped error is strictly larger.
    """
    clipped_values = old_values + torch.clamp(new_values - old_values, -cliprange_value, cliprange_value)
    unclipped_error = (new_values - returns) ** 2
    clipped_error = (clipped_values - returns) ** 2
    loss = 0.5 * aggregate(torch.max(unclipped_error, clipped_error), mask, aggregation, total)
    return loss, masked_mean((clipped_error > unclipped_error).float(), mask)


# ----------------------------------------------------------------------------- KL controllers


class FixedKLController:
    """β stays at ``kl_coef``."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController(FixedKLController):
    """Ziegler et al. 2019, section 2.2: after ``n_steps`` episodes whose mean KL was ``current_kl``,

        e = clip(KL / target - 1, -0.2, 0.2),
        β ← β·(1 + e·n_steps / horizon).
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        if target <= 0 or horizon <= 0:
            raise ValueError(f"the adaptive KL controller needs target > 0 and horizon > 0 (got {target}, {horizon})")
        self.target, self.horizon = float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        proportional_error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + proportional_error * n_steps / self.horizon

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])
        self.target, self.horizon = float(state.get("target", self.target)), int(state.get("horizon", self.horizon))
