"""Every formula of align.ppo.core against numbers worked out by hand (small tensors, padding included)."""

import math

import pytest
import torch

from align.ppo import core


def T(*rows):
    """A float tensor from one row or several."""
    return torch.tensor(rows[0] if len(rows) == 1 else list(rows), dtype=torch.float)


# ----------------------------------------------------------------------------- masked statistics


def test_masked_mean_ignores_padding_and_reduces_rows():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1.0, 1.0, 1.0, 0.0])
    assert core.masked_mean(x, m).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3; the 100 is padding
    rows, rows_mask = T([1.0, 3.0], [5.0, 7.0]), T([1.0, 1.0], [1.0, 0.0])
    assert core.masked_mean(rows, rows_mask, dim=1).tolist() == [2.0, 5.0]  # (1+3)/2 ; 5/1
    assert core.masked_mean(rows, rows_mask).item() == pytest.approx(3.0)  # (1+3+5)/3
    assert core.masked_mean(T([4.0]), T([0.0])).item() == 0.0  # nothing unmasked: 0, not NaN


def test_masked_var_biased_and_unbiased():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1.0, 1.0, 1.0, 0.0])
    # mean 2, deviations -1, 0, 1 -> sum of squares 2; biased 2/3, unbiased (Bessel) 2/(3-1) = 1
    assert core.masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)
    assert core.masked_var(x, m).item() == pytest.approx(1.0)
    # a single value: the unbiased form has no n-1 to divide by and falls back to the biased 0
    assert core.masked_var(T([5.0, 9.0]), T([1.0, 0.0])).item() == 0.0


def test_masked_whiten_with_and_without_shifting_the_mean():
    x, m = T([2.0, 4.0, 6.0, 100.0]), T([1.0, 1.0, 1.0, 0.0])
    # mean 4, unbiased var ((-2)^2 + 0 + 2^2) / 2 = 4, std 2 -> (x - 4) / 2 = -1, 0, 1; padding -> 0
    assert core.masked_whiten(x, m).tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-6)
    # shift_mean=False adds the mean back: -1 + 4, 0 + 4, 1 + 4
    assert core.masked_whiten(x, m, shift_mean=False).tolist() == pytest.approx([3.0, 4.0, 5.0, 0.0], abs=1e-6)


# ----------------------------------------------------------------------------- responses and EOS


def test_first_true_indices_and_response_mask():
    eos, pad = 2, 0
    responses = torch.tensor([[5, 6, 2, 9, 9],    # EOS at 2, then junk
                              [5, 2, 2, 7, 7],    # two EOS: the first one ends the response
                              [5, 6, 7, 8, 9],    # no EOS: truncated at max_new_tokens, all real
                              [2, 0, 0, 0, 0]])   # EOS straight away
    assert core.first_true_indices(responses == eos).tolist() == [2, 1, 5, 0]  # 5 = none: the row length
    assert core.response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1],
                                                           [1, 0, 0, 0, 0]]
    assert core.truncate_after_eos(responses, eos, pad).tolist() == [[5, 6, 2, 0, 0], [5, 2, 0, 0, 0], [5, 6, 7, 8, 9],
                                                                     [2, 0, 0, 0, 0]]
    assert core.last_token_indices(core.response_mask(responses, eos)).tolist() == [2, 1, 4, 0]
    # several stop tokens (EOS and an end-of-turn token 7): the first of either ends the response
    assert core.response_mask(responses, [eos, 7]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 0, 0],
                                                                [1, 0, 0, 0, 0]]


def test_position_ids_skip_left_padding():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])  # left-padded prompt; response padded after EOS
    # cumsum - 1: [-1, -1, 0, 1, 2] -> padding clamped to 0; [0, 1, 2, 3, 3]
    assert core.position_ids(mask).tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 3]]


# ----------------------------------------------------------------------------- distributions


def test_logprobs_and_entropy_from_logits():
    logits = T([[0.0, 0.0, math.log(2.0)], [0.0, 0.0, 0.0]]).unsqueeze(0)  # softmax [1/4, 1/4, 1/2] and uniform
    tokens = torch.tensor([[2, 0]])
    assert core.logprobs_from_logits(logits, tokens)[0].tolist() == pytest.approx([math.log(0.5), math.log(1 / 3)])
    # H = -(1/4 ln 1/4 + 1/4 ln 1/4 + 1/2 ln 1/2) = 1/2 ln 4 + 1/2 ln 2 = 1.5 ln 2 ; uniform over 3: ln 3
    assert core.entropy_from_logits(logits)[0].tolist() == pytest.approx([1.5 * math.log(2.0), math.log(3.0)])
    # temperature: logits / 0.5 = [0, 0, 2 ln 2] -> softmax [1/6, 1/6, 4/6]
    assert core.logprobs_from_logits(logits[:, :1] / 0.5, tokens[:, :1]).item() == pytest.approx(math.log(4 / 6))


def test_kl_estimators():
    logp, ref = T([-1.0, -2.0, -0.5]), T([-1.5, -1.0, -0.5])  # log ratio Δ = logp - ref = [0.5, -1.0, 0.0]
    assert core.kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0, 0.0])
    assert core.kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5, 0.0])  # ½Δ²
    # k3 = (r - 1) - ln r with r = exp(ref - logp): r = e^-0.5 -> e^-0.5 - 1 + 0.5 = 0.1065307;
    # r = e^1 -> e - 1 - 1 = 0.7182818; r = 1 -> 0
    assert core.kl_estimate(logp, ref, "k3").tolist() == pytest.approx([0.1065307, 0.7182818, 0.0], abs=1e-6)
    with pytest.raises(ValueError):
        core.kl_estimate(logp, ref, "k4")


# ----------------------------------------------------------------------------- rewards and advantages


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    scores = T([1.0, 2.0, 3.0])
    logp = T([-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0], [-1.0, -1.0, -1.0])
    ref = T([-1.5, -1.0, -3.0], [-1.0, -2.0, -9.0], [-2.0, -1.0, -1.0])
    mask = T([1.0, 1.0, 1.0],   # EOS at the last position
             [1.0, 1.0, 0.0],   # EOS at position 1, then padding (whose log-probs are junk)
             [1.0, 1.0, 1.0])   # no EOS: truncated; the score still lands on its last token
    rewards, non_score = core.per_token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # row 0: -0.1 * [0.5, -1.0, 0.0] = [-0.05, 0.1, 0.0]; + 1.0 on token 2
    # row 1: -0.1 * [0.0, 1.0, (pad)] = [0.0, -0.1, 0.0]; + 2.0 on token 1 -> 1.9; nothing on the padding
    # row 2: -0.1 * [1.0, 0.0, 0.0] = [-0.1, 0.0, 0.0]; + 3.0 on token 2
    assert torch.allclose(non_score, T([-0.05, 0.1, 0.0], [0.0, -0.1, 0.0], [-0.1, 0.0, 0.0]))
    assert torch.allclose(rewards, T([-0.05, 0.1, 1.0], [0.0, 1.9, 0.0], [-0.1, 0.0, 3.0]))


def test_per_token_rewards_with_the_k3_penalty():
    """k3 = (e^{-Δ} - 1) + Δ with Δ = log pi - log ref: never negative, so the penalty never pays the policy."""
    logp, ref, mask = T([[-1.0, -2.0]]), T([[-1.5, -1.0]]), T([[1.0, 1.0]])
    rewards, non_score = core.per_token_rewards(T([1.0]), logp, ref, mask, kl_coef=0.1, kl_estimator="k3")
    # Δ = [0.5, -1.0]: k3 = [e^-0.5 - 1 + 0.5, e^1 - 1 - 1] = [0.1065307, 0.7182818]; k1 would give [0.05, -0.1]
    expected = [-0.1 * (math.exp(-0.5) - 0.5), -0.1 * (math.e - 2.0)]
    assert non_score[0].tolist() == pytest.approx(expected, abs=1e-6)
    assert rewards[0].tolist() == pytest.approx([expected[0], expected[1] + 1.0], abs=1e-6)


def test_gae_by_hand():
    rewards = T([0.0, 0.0, 1.0], [0.5, 2.0, 0.0])
    values = T([0.5, 0.6, 0.7], [1.0, 1.0, 9.0])
    mask = T([1.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    gamma, lam = 0.9, 0.5  # gamma * lam = 0.45
    advantages, returns = core.gae(rewards, values, mask, gamma, lam)
    # row 0 (V after the last token is 0):
    #   d2 = 1 + 0.9*0 - 0.7 = 0.3;  d1 = 0 + 0.9*0.7 - 0.6 = 0.03;  d0 = 0 + 0.9*0.6 - 0.5 = 0.04
    #   A2 = 0.3;  A1 = 0.03 + 0.45*0.3 = 0.165;  A0 = 0.04 + 0.45*0.165 = 0.11425
    # row 1 (last real token is 1; the padding's value 9.0 must not leak in):
    #   d1 = 2 + 0.9*0 - 1 = 1;  d0 = 0.5 + 0.9*1 - 1 = 0.4;  A1 = 1;  A0 = 0.4 + 0.45*1 = 0.85
    assert torch.allclose(advantages, T([0.11425, 0.165, 0.3], [0.85, 1.0, 0.0]))
    # returns = A + V: [0.61425, 0.765, 1.0] and [1.85, 2.0, 0 (padding)]
    assert torch.allclose(returns, T([0.61425, 0.765, 1.0], [1.85, 2.0, 0.0]))


def test_gae_with_gamma_and_lambda_one_is_the_monte_carlo_return_minus_the_value():
    rewards, values, mask = T([[1.0, 2.0, 3.0]]), T([[0.5, 0.25, 0.0]]), T([[1.0, 1.0, 1.0]])
    advantages, returns = core.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    # returns-to-go 6, 5, 3; minus V
    assert returns.tolist() == [[6.0, 5.0, 3.0]]
    assert advantages.tolist() == [[5.5, 4.75, 3.0]]


# ----------------------------------------------------------------------------- losses


def test_policy_loss_clipping_cases():
    old = T([0.0, 0.0, 0.0, 0.0, 0.0])
    new = T([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5), math.log(1.1)])  # ratios 1.5 1.5 .5 .5 1.1
    adv = T([1.0, -1.0, 1.0, -1.0, 2.0])
    mask = T([1.0, 1.0, 1.0, 1.0, 1.0])
    loss, clipfrac, approx_kl = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # per token max(-A·r, -A·clip(r, 0.8, 1.2)):
    #   A=+1, r=1.5: max(-1.5, -1.2) = -1.2  clipped (no credit beyond 1 + eps)
    #   A=-1, r=1.5: max( 1.5,  1.2) =  1.5  unclipped (the pessimistic term keeps the gradient)
    #   A=+1, r=0.5: max(-0.5, -0.8) = -0.5  unclipped
    #   A=-1, r=0.5: max( 0.5,  0.8) =  0.8  clipped
    #   A=+2, r=1.1: max(-2.2, -2.2) = -2.2  inside the range: not clipped
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8 - 2.2) / 5)
    assert clipfrac.item() == pytest.approx(2 / 5)
    # approx KL = ½ mean (log r)^2
    expected = 0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2 + math.log(1.1) ** 2) / 5
    assert approx_kl.item() == pytest.approx(expected)


def test_policy_loss_ignores_padding_and_is_minus_the_advantage_at_ratio_one():
    loss, clipfrac, approx_kl = core.policy_loss(T([0.0, 5.0]), T([0.0, 0.0]), T([2.0, 100.0]), T([1.0, 0.0]), 0.2)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1 on the only real token: -A
    assert clipfrac.item() == 0.0 and approx_kl.item() == 0.0


def test_policy_loss_gradient_vanishes_where_clipped():
    new = torch.tensor([math.log(1.5), math.log(1.5)], requires_grad=True)
    loss, _, _ = core.policy_loss(new, T([0.0, 0.0]), T([1.0, -1.0]), T([1.0, 1.0]), 0.2)
    loss.backward()
    # token 0 clipped: no gradient; token 1 unclipped: d/dlogp (-A·r)/2 = (1·1.5)/2 = 0.75
    assert new.grad.tolist() == pytest.approx([0.0, 0.75])


def test_truncated_importance_weights_by_hand():
    # train log-probs minus sampler log-probs: log 2, log 0.5, log 5 (capped at 3), padding, a NaN sampler value
    train = T([math.log(2.0), math.log(0.5), math.log(5.0), 9.0, -1.0])
    sampler = T([0.0, 0.0, 0.0, 0.0, float("nan")])
    mask = T([1.0, 1.0, 1.0, 0.0, 1.0])
    w = core.truncated_importance_weights(train, sampler, mask, clip_max=3.0)
    # exp(diff) = 2, 0.5, min(5, 3) = 3; padding -> exp(0) = 1; unknown sampler log-prob -> 1 (no correction)
    assert w.tolist() == pytest.approx([2.0, 0.5, 3.0, 1.0, 1.0])
    assert core.truncated_importance_weights(train[:3], sampler[:3], mask[:3], None).tolist() == pytest.approx([2.0, 0.5, 5.0])


def test_policy_loss_weighted_by_importance_weights():
    # ratio 1 everywhere (new == old), so each token's loss is -A_t; weights 2 and 0.5 scale them
    loss, _, _ = core.policy_loss(T([0.0, 0.0]), T([0.0, 0.0]), T([1.0, 3.0]), T([1.0, 1.0]), 0.2,
                                  is_weights=T([2.0, 0.5]))
    assert loss.item() == pytest.approx((-1.0 * 2.0 + -3.0 * 0.5) / 2)


def test_value_loss_clipping():
    old, returns, mask = T([1.0, 1.0, 1.0, 1.0]), T([2.0, 2.0, 0.0, 0.0]), T([1.0, 1.0, 1.0, 0.0])
    new = T([1.5, 0.9, 1.1, 7.0])
    loss, clipfrac = core.value_loss(new, old, returns, mask, cliprange_value=0.2)
    # V_clip = old + clip(new - old, ±0.2) = [1.2, 0.9, 1.1, (pad)]
    # token 0: unclipped (1.5-2)^2 = 0.25, clipped (1.2-2)^2 = 0.64 -> 0.64 (clipped larger)
    # token 1: both (0.9-2)^2 = 1.21 -> 1.21 (equal: not counted as clipped)
    # token 2: both (1.1-0)^2 = 1.21 -> 1.21
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 1.21) / 3)
    assert clipfrac.item() == pytest.approx(1 / 3)


def test_aggregate_token_and_sequence_by_hand():
    x = T([1.0, 3.0, 100.0], [5.0, 100.0, 100.0])
    m = T([1.0, 1.0, 0.0], [1.0, 0.0, 0.0])
    # token: (1 + 3 + 5) / 3 real tokens = 3; sequence: mean(1, 3) = 2 and 5 -> (2 + 5) / 2 = 3.5
    assert core.aggregate(x, m, "token").item() == pytest.approx(3.0)
    assert core.aggregate(x, m, "sequence").item() == pytest.approx(3.5)
    # with the minibatch's N given, each half is its share and the shares add up to the whole
    top, bottom = (x[:1], m[:1]), (x[1:], m[1:])
    assert (core.aggregate(*top, "token", total=3) + core.aggregate(*bottom, "token", total=3)).item() == pytest.approx(3.0)
    assert core.aggregate(*top, "token", total=3).item() == pytest.approx(4 / 3)  # (1 + 3) / 3, not (1 + 3) / 2
    assert (core.aggregate(*top, "sequence", total=2) + core.aggregate(*bottom, "sequence", total=2)).item() == pytest.approx(3.5)
    with pytest.raises(ValueError, match="token or sequence"):
        core.aggregate(x, m, "batch")


def test_policy_and_value_loss_follow_the_aggregation():
    # ratio 1 everywhere, so the policy loss is -A per token: tokens -2, -4 (row 0) and -6 (row 1)
    zeros, adv, mask = torch.zeros(2, 2), T([2.0, 4.0], [6.0, 99.0]), T([1.0, 1.0], [1.0, 0.0])
    assert core.policy_loss(zeros, zeros, adv, mask, 0.2, "token")[0].item() == pytest.approx(-(2 + 4 + 6) / 3)
    assert core.policy_loss(zeros, zeros, adv, mask, 0.2, "sequence")[0].item() == pytest.approx(-(3 + 6) / 2)
    # value loss ½(V - R)²: errors 1, 3 (row 0) and 2 (row 1); V_old = V so clipping is idle
    values, returns = T([0.0, 0.0], [0.0, 0.0]), T([1.0, 3.0], [2.0, 50.0])
    assert core.value_loss(values, values, returns, mask, 0.2, "token")[0].item() == pytest.approx(0.5 * (1 + 9 + 4) / 3)
    assert core.value_loss(values, values, returns, mask, 0.2, "sequence")[0].item() == pytest.approx(0.5 * (5 + 4) / 2)
    assert core.value_loss(values, values, returns, mask, 0.2, "token", total=7)[0].item() == pytest.approx(0.5 * 14 / 7)


# ----------------------------------------------------------------------------- KL controllers


def test_adaptive_kl_controller_follows_ziegler():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(current_kl=9.0, n_steps=100)  # e = clip(9/6 - 1 = 0.5, ±0.2) = 0.2 -> beta * (1 + 0.2*100/1000)
    assert ctl.value == pytest.approx(0.1 * 1.02)
    ctl.update(current_kl=5.4, n_steps=100)  # e = 5.4/6 - 1 = -0.1 (inside the clip) -> * (1 - 0.1*0.1)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99)
    ctl.update(current_kl=0.0, n_steps=500)  # e = clip(-1) = -0.2 -> * (1 - 0.2*0.5)
    assert ctl.value == pytest.approx(0.1 * 1.02 * 0.99 * 0.9)
    restored = core.AdaptiveKLController(0.5, 1.0, 10)
    restored.load_state_dict(ctl.state_dict())
    assert (restored.value, restored.target, restored.horizon) == (ctl.value, 6.0, 1000)


def test_fixed_kl_controller_never_moves():
    fixed = core.FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3
    other = core.FixedKLController(0.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.3


def test_shape_scores_scales_penalises_then_clips():
    scores, has_eos = T([1.0, 3.0, -5.0]), torch.tensor([True, False, True])
    assert core.shape_scores(scores, has_eos).tolist() == [1.0, 3.0, -5.0]  # defaults: unchanged
    # 2·(s - 1) = [0, 4, -12]; the second response has no EOS: 4 - 1.5 = 2.5; clip to ±3: -12 -> -3
    shaped = core.shape_scores(scores, has_eos, scale=2.0, shift=1.0, missing_eos_penalty=1.5, clip=3.0)
    assert shaped.tolist() == [0.0, 2.5, -3.0]


def test_explained_variance():
    returns, mask = T([[1.0, 2.0, 3.0, 50.0]]), T([[1.0, 1.0, 1.0, 0.0]])
    assert core.explained_variance(returns, returns, mask).item() == pytest.approx(1.0)  # perfect critic
    # constant V = 2: residuals -1, 0, 1 have the variance of the returns -> 0
    assert core.explained_variance(T([[2.0, 2.0, 2.0, 0.0]]), returns, mask).item() == pytest.approx(0.0)
    # V = R/2: the residuals R/2 have a quarter of Var(R) -> 1 - 1/4
    assert core.explained_variance(returns / 2, returns, mask).item() == pytest.approx(0.75)
