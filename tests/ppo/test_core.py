"""Every PPO formula against numbers worked out by hand (small tensors, padding included)."""

import math

import pytest
import torch

from align.ppo import core

T = lambda *rows: torch.tensor(rows[0] if len(rows) == 1 else rows, dtype=torch.float)  # noqa: E731


def test_masked_mean_var_whiten():
    x, m = T([1.0, 2.0, 3.0, 100.0]), T([1.0, 1.0, 1.0, 0.0])
    assert core.masked_mean(x, m).item() == pytest.approx(2.0)  # (1+2+3)/3, the 100 is padding
    # deviations -1, 0, 1 -> sum of squares 2; biased 2/3, unbiased 2/2 = 1
    assert core.masked_var(x, m, unbiased=False).item() == pytest.approx(2 / 3)
    assert core.masked_var(x, m).item() == pytest.approx(1.0)
    assert core.masked_whiten(x, m).tolist() == pytest.approx([-1.0, 0.0, 1.0, 0.0], abs=1e-4)
    assert core.masked_whiten(x, m, shift_mean=False).tolist() == pytest.approx([1.0, 2.0, 3.0, 0.0], abs=1e-4)
    rows, rows_mask = T([1.0, 3.0], [5.0, 0.0]), T([1.0, 1.0], [1.0, 0.0])
    assert core.masked_mean(rows, rows_mask, dim=1).tolist() == [2.0, 5.0]


def test_response_mask_keeps_the_first_eos_and_drops_what_follows():
    eos = 2
    responses = torch.tensor([[5, 6, 2, 9, 9], [5, 2, 2, 7, 7], [5, 6, 7, 8, 9]])
    assert core.first_true_indices(responses == eos).tolist() == [2, 1, 5]  # 5 = no EOS: the row length
    assert core.response_mask(responses, eos).tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


def test_logprobs_and_entropy():
    logits = T([[0.0, 0.0, math.log(2.0)]])  # softmax = [1/4, 1/4, 1/2]
    assert core.logprobs_from_logits(logits.unsqueeze(0), torch.tensor([[2]])).item() == pytest.approx(math.log(0.5))
    # H = -(1/4 ln 1/4 + 1/4 ln 1/4 + 1/2 ln 1/2) = 1.5 ln 2
    assert core.entropy_from_logits(logits).item() == pytest.approx(1.5 * math.log(2.0))


def test_kl_estimators():
    logp, ref = T([-1.0, -2.0]), T([-1.5, -1.0])  # log ratio = [0.5, -1.0]
    assert core.kl_estimate(logp, ref, "k1").tolist() == pytest.approx([0.5, -1.0])
    assert core.kl_estimate(logp, ref, "k2").tolist() == pytest.approx([0.125, 0.5])
    # k3 = (r - 1) - log r with r = exp(ref - logp): r = e^-0.5 and e^1
    assert core.kl_estimate(logp, ref, "k3").tolist() == pytest.approx(
        [math.exp(-0.5) - 1 + 0.5, math.e - 1 - 1.0])
    with pytest.raises(ValueError):
        core.kl_estimate(logp, ref, "k4")


def test_per_token_rewards_put_the_score_on_the_last_real_token():
    scores = T(1.0, 2.0)
    logp = T([-1.0, -2.0, -3.0], [-1.0, -1.0, 0.0])
    ref = T([-1.5, -1.0, -3.0], [-1.0, -2.0, -9.0])
    mask = T([1.0, 1.0, 1.0], [1.0, 1.0, 0.0])  # second response: EOS at position 1, then padding
    rewards, non_score = core.per_token_rewards(scores, logp, ref, mask, kl_coef=0.1)
    # row 0: -0.1 * [0.5, -1.0, 0.0] = [-0.05, 0.1, 0]; score 1.0 on the last token
    # row 1: -0.1 * [0.0, 1.0, (padding)] = [0, -0.1, 0]; score 2.0 on token 1, not on the padding
    assert torch.allclose(non_score, T([-0.05, 0.1, 0.0], [0.0, -0.1, 0.0]))
    assert torch.allclose(rewards, T([-0.05, 0.1, 1.0], [0.0, 1.9, 0.0]))


def test_gae_by_hand():
    rewards = T([0.0, 0.0, 1.0], [0.5, 2.0, 0.0])
    values = T([0.5, 0.6, 0.7], [1.0, 1.0, 9.0])
    mask = T([1.0, 1.0, 1.0], [1.0, 1.0, 0.0])
    gamma, lam = 0.9, 0.5
    advantages, returns = core.gae(rewards, values, mask, gamma, lam)
    # row 0: d2 = 1 - 0.7 = 0.3; d1 = 0 + 0.9*0.7 - 0.6 = 0.03; d0 = 0 + 0.9*0.6 - 0.5 = 0.04
    # A2 = 0.3; A1 = 0.03 + 0.45*0.3 = 0.165; A0 = 0.04 + 0.45*0.165 = 0.11425
    # row 1 (last real token is 1; the 9.0 is padding and must not leak in):
    # d1 = 2 - 1 = 1; d0 = 0.5 + 0.9*1 - 1 = 0.4; A1 = 1; A0 = 0.4 + 0.45*1 = 0.85
    assert torch.allclose(advantages, T([0.11425, 0.165, 0.3], [0.85, 1.0, 0.0]))
    assert torch.allclose(returns, T([0.61425, 0.765, 1.0], [1.85, 2.0, 0.0]))


def test_policy_loss_clipping_cases():
    old = T([0.0, 0.0, 0.0, 0.0])
    new = T([math.log(1.5), math.log(1.5), math.log(0.5), math.log(0.5)])  # ratios 1.5, 1.5, 0.5, 0.5
    adv = T([1.0, -1.0, 1.0, -1.0])
    mask = T([1.0, 1.0, 1.0, 1.0])
    loss, clipfrac, approx_kl = core.policy_loss(new, old, adv, mask, cliprange=0.2)
    # per token max(-A r, -A clip(r, 0.8, 1.2)):
    #  A=+1, r=1.5: max(-1.5, -1.2) = -1.2 (clipped: no more credit past 1.2)
    #  A=-1, r=1.5: max(1.5, 1.2) = 1.5 (unclipped: the pessimistic term)
    #  A=+1, r=0.5: max(-0.5, -0.8) = -0.5 (unclipped)
    #  A=-1, r=0.5: max(0.5, 0.8) = 0.8 (clipped)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)
    assert clipfrac.item() == pytest.approx(0.5)
    assert approx_kl.item() == pytest.approx(0.5 * (2 * math.log(1.5) ** 2 + 2 * math.log(0.5) ** 2) / 4)


def test_policy_loss_ignores_padding():
    loss, _, _ = core.policy_loss(T([0.0, 5.0]), T([0.0, 0.0]), T([2.0, 100.0]), T([1.0, 0.0]), 0.2)
    assert loss.item() == pytest.approx(-2.0)  # ratio 1 on the only real token


def test_value_loss_clipping():
    old, returns, mask = T([1.0, 1.0, 1.0]), T([2.0, 2.0, 0.0]), T([1.0, 1.0, 0.0])
    new = T([1.5, 0.9, 7.0])
    loss, clipfrac = core.value_loss(new, old, returns, mask, cliprange_value=0.2)
    # token 0: unclipped (1.5-2)^2 = 0.25, clipped V = 1.2 -> 0.64; max 0.64 (clipped larger)
    # token 1: unclipped (0.9-2)^2 = 1.21, clipped V = 0.9 -> 1.21; max 1.21 (equal: not clipped)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21) / 2)
    assert clipfrac.item() == pytest.approx(0.5)


def test_adaptive_kl_controller_follows_ziegler():
    ctl = core.AdaptiveKLController(0.1, target=6.0, horizon=1000)
    ctl.update(current_kl=9.0, n_steps=100)  # e = clip(9/6 - 1) = 0.2 (clipped from 0.5)
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 1000))
    ctl.update(current_kl=5.4, n_steps=100)  # e = 5.4/6 - 1 = -0.1
    assert ctl.value == pytest.approx(0.1 * 1.02 * (1 - 0.1 * 0.1))
    restored = core.AdaptiveKLController(0.5, 6.0, 1000)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    fixed = core.FixedKLController(0.3)
    fixed.update(100.0, 10)
    assert fixed.value == 0.3
