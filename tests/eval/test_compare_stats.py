"""The PPO-vs-DPO statistics against hand computations and closed forms.

Their false-positive rates under simulated truths are in ``test_calibration.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from align.errors import AlignError
from align.eval.compare_stats import (across_seeds, equal_kl_difference, extreme_change, frontier_curve, frontier_fit,
                                      head_to_head, holm, length_controlled_win_rate, paired_difference)


# ------------------------------------------------------------------------------------ paired difference

def test_paired_difference_recovers_a_known_shift_and_cancels_prompt_difficulty():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 300)  # shared by both policies: pairing must cancel it
    a = difficulty + 0.2 + rng.normal(0, 0.3, 300)
    b = difficulty + rng.normal(0, 0.3, 300)
    r = paired_difference(a, b, n_flips=1000)
    assert r["kind"] == "paired" and r["n"] == 300
    assert r["difference"] == pytest.approx(np.mean(a - b))
    assert 0 < r["ci_low"] < 0.2 < r["ci_high"]
    assert r["significant"] and r["p_value"] < 0.01
    # Paired, the interval is far narrower than the two scores' own spreads would suggest.
    assert r["ci_high"] - r["ci_low"] < 0.5 * 2 * 1.96 * np.sqrt(a.var() / 300 + b.var() / 300)
    # The inverted permutation interval is close to the t interval on normal data.
    t = stats.ttest_1samp(a - b, 0).confidence_interval()
    assert r["ci_low"] == pytest.approx(t.low, abs=0.01) and r["ci_high"] == pytest.approx(t.high, abs=0.01)
    assert paired_difference(a, b, n_flips=1000) == r  # seeded


def test_paired_difference_hand_example():
    # d = (1, 1, 1, 1): of the 16 sign patterns only all-plus and all-minus reach |mean| 1, so the exact
    # p-value is 2/16; with many random flips the Monte Carlo p is near (1 + 2/16 * B) / (1 + B).
    r = paired_difference([2, 3, 4, 5], [1, 2, 3, 4], n_flips=4000)
    assert r["difference"] == 1.0 and r["ci_low"] == r["ci_high"] == 1.0  # no spread: the interval is the point
    assert r["p_value"] == pytest.approx(2 / 16, abs=0.02) and not r["significant"]


def test_paired_difference_rejects_bad_input():
    with pytest.raises(AlignError, match="same prompts"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(AlignError, match="NaN"):
        paired_difference([1.0, float("nan")], [1.0, 2.0])


# ----------------------------------------------------------------------------------------- head to head

def test_head_to_head_counts_ties_half_and_tests_against_one_half():
    r = head_to_head([1.0] * 70 + [0.0] * 30, n_bootstrap=1000)
    assert r["win_rate"] == pytest.approx(0.7) and (r["wins"], r["ties"], r["losses"]) == (70, 0, 30)
    assert r["ci_low"] > 0.5 and r["significant"] and r["p_value"] < 0.001
    assert head_to_head([1, 0.5, 0.5, 0])["win_rate"] == 0.5
    ties = head_to_head([0.5] * 50, n_bootstrap=300)
    assert ties["ci_low"] == ties["ci_high"] == 0.5 and ties["p_value"] == 1.0 and not ties["significant"]
    even = head_to_head([1.0] * 52 + [0.0] * 48, n_bootstrap=1000)
    assert even["ci_low"] < 0.5 < even["ci_high"] and not even["significant"] and even["p_value"] > 0.5
    with pytest.raises(AlignError, match=r"\[0, 1\]"):
        head_to_head([1.2, 0.0])


def test_every_interval_agrees_with_its_p_value():
    """One decision rule: the interval excludes the null exactly when p < 1 - confidence."""
    rng = np.random.default_rng(3)
    for i in range(60):
        n = int(rng.integers(8, 60))
        shift = rng.normal(0, 0.3)
        d = paired_difference(rng.normal(shift, 1, n), rng.normal(0, 1, n), n_flips=300, seed=i)
        assert d["significant"] == (not d["ci_low"] <= 0 <= d["ci_high"]), d
        h = head_to_head((rng.random(n) < 0.5 + shift / 2).astype(float), n_bootstrap=300, seed=i)
        assert h["significant"] == (not h["ci_low"] <= 0.5 <= h["ci_high"]), h
        s = across_seeds(rng.normal(shift, 1, (3, n)))
        assert s["significant"] == (not s["ci_low"] <= 0 <= s["ci_high"]), s


# ------------------------------------------------------------------------------------------ across seeds

def test_across_seeds_is_the_crossed_anova_by_hand():
    table = np.array([[1.0, 2.0, 3.0], [2.0, 2.0, 5.0]])  # 2 seeds x 3 shared prompts
    r = across_seeds(table)
    grand = 15 / 6
    ms_seed = 3 * ((2 - grand) ** 2 + (3 - grand) ** 2) / 1  # seed means 2 and 3
    prompt_means = np.array([1.5, 2.0, 4.0])
    ms_prompt = 2 * ((prompt_means - grand) ** 2).sum() / 2
    residual = table - np.array([[2.0], [3.0]]) - prompt_means + grand
    ms_residual = (residual ** 2).sum() / 2
    variance = (ms_seed + max(ms_prompt - ms_residual, 0)) / 6
    df = (ms_seed + ms_prompt - ms_residual) ** 2 / (ms_seed ** 2 + ms_prompt ** 2 / 2 + ms_residual ** 2 / 2)
    assert r["estimate"] == pytest.approx(grand) and r["std_error"] == pytest.approx(np.sqrt(variance))
    assert r["df"] == pytest.approx(df)
    assert r["p_value"] == pytest.approx(2 * stats.t.sf(grand / np.sqrt(variance), df))
    assert r["shared_prompts"] and [s["mean"] for s in r["seeds"]] == [2.0, 3.0]


def test_across_seeds_on_different_prompts_is_a_t_test_on_the_seed_means():
    rng = np.random.default_rng(4)
    per_seed = [rng.normal(0.1, 1, n) for n in (150, 200, 180, 190)]
    r = across_seeds(per_seed)
    t = stats.ttest_1samp([np.mean(s) for s in per_seed], 0)
    assert not r["shared_prompts"] and r["df"] == 3
    assert r["p_value"] == pytest.approx(t.pvalue)
    ci = t.confidence_interval()
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high))


def test_a_lucky_seed_does_not_decide():
    rng = np.random.default_rng(2)
    per_seed = [rng.normal(mean, 1.0, 200) for mean in (-0.05, 0.0, 0.6)]
    r = across_seeds(per_seed)
    assert not r["significant"] and r["ci_low"] < 0 < r["ci_high"]
    assert r["min_detectable"] > abs(r["estimate"])


def test_across_seeds_rejects_bad_input():
    with pytest.raises(AlignError, match="at least 2 seeds"):
        across_seeds([[1.0, 2.0]])
    with pytest.raises(AlignError, match="NaN"):
        across_seeds([[1.0, float("nan")], [1.0, 2.0]])


# ------------------------------------------------------------------------------------------- frontier

def test_frontier_fit_recovers_the_curve_and_passes_through_two_points():
    kl = np.array([2.0, 5.0, 9.0, 16.0])
    score = frontier_curve(0.1, 0.02, 0.3, kl)  # on the curve exactly
    assert frontier_fit(kl, score, 0.3) == pytest.approx((0.1, 0.02))
    alpha, beta = frontier_fit([4.0, 9.0], [0.5, 0.6], 0.2)
    assert frontier_curve(alpha, beta, 0.2, [4.0, 9.0]) == pytest.approx([0.5, 0.6])


def sweep(rng, truth, kls, n=200, sd=0.15):
    difficulty = rng.normal(0, 0.3, n)
    points = [{"kl": k * rng.gamma(2, 0.5, n), "score": truth(k) + difficulty + rng.normal(0, sd, n)} for k in kls]
    return points, difficulty + rng.normal(0, sd, n)


def test_equal_kl_finds_a_known_gap_and_refuses_what_it_cannot_compare():
    rng = np.random.default_rng(5)
    truth = lambda k: np.sqrt(k) * (0.1 - 0.02 * np.log(np.sqrt(k)))  # noqa: E731
    difficulty = rng.normal(0, 0.3, 200)
    a = [{"kl": k * rng.gamma(2, 0.5, 200), "score": truth(k) + 0.1 + difficulty + rng.normal(0, 0.15, 200)}
         for k in (3, 8, 14)]
    b = [{"kl": k * rng.gamma(2, 0.5, 200), "score": truth(k) + difficulty + rng.normal(0, 0.15, 200)}
         for k in (5, 12)]
    reference = difficulty + rng.normal(0, 0.15, 200)
    r = equal_kl_difference(a, b, reference, n_bootstrap=400)
    assert r["refused"] is None and r["significant"] and r["ci_low"] < r["estimate"] < r["ci_high"]
    assert r["estimate"] > 0.05
    assert r["overlap"] == (max(r["kl_range_a"][0], r["kl_range_b"][0]), min(r["kl_range_a"][1], r["kl_range_b"][1]))
    assert r["undefined_fraction"] <= 0.1

    one = equal_kl_difference(a, b[:1], reference, n_bootstrap=100)
    assert one["estimate"] is None and "1 point" in one["refused"]
    apart = [{"kl": p["kl"] * 10, "score": p["score"]} for p in b]
    assert "do not overlap" in equal_kl_difference(a, apart, reference, n_bootstrap=100)["refused"]
    # Ranges that barely touch: most resamples have no common KL, so no verdict.
    shift = 0.999 * r["kl_range_a"][1] / r["kl_range_b"][0]  # b's lowest KL just under a's highest
    near = [{"kl": p["kl"] * shift, "score": p["score"]} for p in b]
    touching = equal_kl_difference(a, near, reference, n_bootstrap=300)
    assert touching["refused"] and "resamples" in touching["refused"] and touching["undefined_fraction"] > 0.1


# ------------------------------------------------------------------------------ length-controlled wins

def test_length_controlled_equals_raw_when_lengths_are_equal():
    rng = np.random.default_rng(6)
    outcomes = (rng.random(300) < 0.7).astype(float)
    lengths = rng.integers(20, 80, 300).astype(float)
    same = (rng.random(300) < 0.5).astype(float)
    r = length_controlled_win_rate(outcomes, lengths, lengths, anchors=[(same, lengths, lengths)], n_bootstrap=300)
    assert r["lc_win_rate"] == pytest.approx(outcomes.mean(), abs=1e-3) and r["change"] == pytest.approx(0, abs=1e-3)
    assert r["length_unit"] == "tokens" and r["anchors"] == 1 and not r["extreme"]


def test_length_controlled_refuses_without_anchors_when_one_side_is_always_longer():
    rng = np.random.default_rng(7)
    ref = rng.normal(40, 10, 200)
    longer = ref + 25
    r = length_controlled_win_rate((rng.random(200) < 0.8).astype(float), longer, ref, n_bootstrap=100)
    assert r["lc_win_rate"] is None and "longer than B on 100%" in r["refused"]


def test_anchor_rows_identify_the_length_slope():
    """A judge that only likes length, a policy always 25 tokens longer: raw win rate far above 0.5,
    length-controlled back at 0.5 once the anchors show what length alone is worth."""
    rng = np.random.default_rng(8)
    n = 400
    judge = lambda d: 1 / (1 + np.exp(-1.5 * np.tanh(d / 20)))  # noqa: E731
    ref, ref2 = rng.normal(40, 10, n), rng.normal(40, 10, n)
    pol, pol2 = ref + 25 + rng.normal(0, 8, n), ref2 + 25 + rng.normal(0, 8, n)
    won = (rng.random(n) < judge(pol - ref)).astype(float)
    anchors = [((rng.random(n) < judge(ref - ref2)).astype(float), ref, ref2),
               ((rng.random(n) < judge(pol - pol2)).astype(float), pol, pol2)]
    r = length_controlled_win_rate(won, pol, ref, anchors=anchors, n_bootstrap=300)
    assert r["win_rate"] > 0.65 and abs(r["lc_win_rate"] - 0.5) < 0.08 and r["ci_low"] < 0.5 < r["ci_high"]
    assert r["slope"] > 0.5


def test_extreme_change_is_alpacaevals_rule():
    # AlpacaEval's docstring: from 20 % it warns below 10 % or above 40 %; from 50 %, below 37.5 % or above 62.5 %.
    assert extreme_change(0.20, 0.09) and not extreme_change(0.20, 0.11)
    assert extreme_change(0.50, 0.37) and not extreme_change(0.50, 0.38) and extreme_change(0.50, 0.63)


def test_length_controlled_rejects_bad_input():
    with pytest.raises(AlignError, match="same prompts"):
        length_controlled_win_rate([1.0, 0.0], [1, 2, 3], [1, 2])
    with pytest.raises(AlignError, match="anchor 0 must judge the same 2 prompts"):
        length_controlled_win_rate([1.0, 0.0], [1, 2], [2, 1], anchors=[([1.0], [1], [2])])


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04 -> 3*0.01, max(0.03, 2*0.03), max(0.06, 1*0.04)
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
