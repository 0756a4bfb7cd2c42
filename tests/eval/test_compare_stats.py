"""The PPO-vs-DPO statistics against closed forms, hand examples and simulated data with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from align.errors import AlignError
from align.eval.compare_stats import (equal_kl_difference, frontier, head_to_head, hierarchical_bootstrap,
                                      length_controlled_win_rate, paired_bootstrap, score_at_kl, verdict)


def logit(p):
    return math.log(p / (1 - p))


# ------------------------------------------------------------------------------------ paired bootstrap

def test_paired_bootstrap_recovers_a_known_shift():
    rng = np.random.default_rng(0)
    difficulty = rng.normal(0, 1, 300)  # shared by both policies: pairing must cancel it
    a = difficulty + 0.2 + rng.normal(0, 0.3, 300)
    b = difficulty + rng.normal(0, 0.3, 300)
    r = paired_bootstrap(a, b, n_bootstrap=1000)
    assert r["kind"] == "paired" and r["n"] == 300
    assert r["difference"] == pytest.approx(np.mean(a - b))
    assert r["ci_low"] < 0.2 < r["ci_high"] and r["ci_low"] > 0
    assert r["significant"] and r["p_value"] < 0.01
    # Paired, the interval is far narrower than the two scores' own spreads would suggest.
    unpaired_se = math.sqrt(a.var() / 300 + b.var() / 300)
    assert r["ci_high"] - r["ci_low"] < 0.5 * (2 * 1.96 * unpaired_se)
    assert paired_bootstrap(a, b, n_bootstrap=1000) == r  # seeded


def test_paired_bootstrap_interval_coverage_and_test_size():
    rng = np.random.default_rng(1)
    covered = rejected = 0
    for sim in range(200):
        a, b = rng.normal(0.1, 1, 80), rng.normal(0, 1, 80)  # true mean difference 0.1
        r = paired_bootstrap(a, b, n_bootstrap=300, seed=sim)
        covered += r["ci_low"] <= 0.1 <= r["ci_high"]
        null = paired_bootstrap(rng.normal(0, 1, 80), rng.normal(0, 1, 80), n_bootstrap=300, seed=sim)
        rejected += null["p_value"] < 0.05
    assert 0.90 <= covered / 200 <= 0.99
    assert rejected / 200 <= 0.10  # the sign-flip test holds its 5 % level (up to simulation noise)


def test_paired_bootstrap_rejects_bad_input():
    with pytest.raises(AlignError, match="same prompts"):
        paired_bootstrap([1.0, 2.0], [1.0])
    with pytest.raises(AlignError, match="NaN"):
        paired_bootstrap([1.0, float("nan")], [1.0, 2.0])


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


# -------------------------------------------------------------------------------- hierarchical bootstrap

def test_hierarchical_interval_is_wider_than_flat_when_seeds_differ():
    rng = np.random.default_rng(2)
    # Per-prompt differences PPO - DPO on 200 prompts for 3 seeds; one seed is lucky.
    per_seed = [rng.normal(mean, 1.0, 200) for mean in (-0.05, 0.0, 0.6)]
    r = hierarchical_bootstrap(per_seed, n_bootstrap=1000)
    assert r["mean"] == pytest.approx(np.mean([np.mean(s) for s in per_seed]))
    assert r["n_seeds"] == 3 and r["n_per_seed"] == [200, 200, 200]
    flat = paired_bootstrap(np.concatenate(per_seed), np.zeros(600), n_bootstrap=1000)
    width = r["ci_high"] - r["ci_low"]
    assert width > 2 * (flat["ci_high"] - flat["ci_low"])
    assert width > 2 * (r["prompts_only_ci_high"] - r["prompts_only_ci_low"])
    assert flat["significant"] and r["prompts_only_ci_low"] > 0  # pooled prompts: "PPO wins"
    assert not r["significant"] and r["ci_low"] < 0 < r["ci_high"]  # the lucky seed does not decide


def test_hierarchical_bootstrap_weights_seeds_equally_and_takes_a_null():
    rng = np.random.default_rng(3)
    per_seed = [(rng.random(n) < 0.8).astype(float) for n in (50, 200, 120)]  # win outcomes per seed
    r = hierarchical_bootstrap(per_seed, n_bootstrap=500, null=0.5)
    assert r["mean"] == pytest.approx(np.mean([s.mean() for s in per_seed]))
    assert r["significant"] and r["ci_low"] > 0.5 and r["null"] == 0.5
    same = [np.linspace(-1, 1, 100) + 0.3] * 4  # identical seeds: no seed-to-seed spread to add
    s = hierarchical_bootstrap(same, n_bootstrap=500)
    assert s["ci_high"] - s["ci_low"] == pytest.approx(s["prompts_only_ci_high"] - s["prompts_only_ci_low"], rel=0.25)
    with pytest.raises(AlignError, match="one list"):
        hierarchical_bootstrap([])


# ------------------------------------------------------------------------------------------- frontier

POINTS = [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.5), (4, 0.4), (5, 0.5)]


def test_frontier_and_interpolation_on_a_hand_example():
    # (3, 0.2) is beaten by (2, 0.3); (4, 0.4) by (4, 0.5); (5, 0.5) scores no more than (4, 0.5).
    assert frontier(POINTS) == [(1.0, 0.1), (2.0, 0.3), (4.0, 0.5)]
    assert frontier(list(reversed(POINTS))) == frontier(POINTS)
    assert score_at_kl(POINTS, 3) == pytest.approx(0.4)
    assert score_at_kl(POINTS, 1.5) == pytest.approx(0.2)
    assert score_at_kl(POINTS, 4) == pytest.approx(0.5) and score_at_kl(POINTS, 1) == pytest.approx(0.1)
    assert score_at_kl(POINTS, 0.5) is None and score_at_kl(POINTS, 4.5) is None  # no extrapolation
    assert frontier([(2, 1.0)]) == [(2.0, 1.0)] and score_at_kl([(2, 1.0)], 2) == 1.0


def test_concave_frontier_drops_points_under_the_chord():
    points = [(0, 0.0), (1, 1.0), (2, 1.2), (3, 2.5), (4, 2.0)]
    assert frontier(points) == [(0.0, 0.0), (1.0, 1.0), (2.0, 1.2), (3.0, 2.5)]
    assert frontier(points, concave=True) == [(0.0, 0.0), (1.0, 1.0), (3.0, 2.5)]
    assert score_at_kl(points, 2, concave=True) == pytest.approx(1.75)
    assert score_at_kl(points, 2) == pytest.approx(1.2)


def test_equal_kl_difference_on_a_hand_example():
    a, b = [(0, 0.0), (10, 1.0)], [(2, 0.0), (12, 0.5), (13, 0.4)]
    r = equal_kl_difference(a, b, n_grid=4)
    assert r["overlap"] == (2.0, 10.0) and r["kl_grid"] == pytest.approx([3, 5, 7, 9])
    # a's frontier is 0.1 * kl, b's 0.05 * (kl - 2).
    assert r["differences"] == pytest.approx([0.3 - 0.05, 0.5 - 0.15, 0.7 - 0.25, 0.9 - 0.35])
    assert r["midpoint_kl"] == 6.0 and r["difference"] == pytest.approx(0.6 - 0.2)
    assert r["mean_difference"] == pytest.approx(np.mean(r["differences"]))
    assert r["ci_low"] is None and r["significant"] is None
    assert verdict(r) == "At KL ≈ 6 nats PPO leads DPO by +0.40 gold (no interval: pass per-prompt samples for one)."


def test_equal_kl_difference_without_overlap():
    r = equal_kl_difference([(1, 0.0), (2, 1.0)], [(3, 0.0), (4, 1.0)])
    assert r["overlap"] is None and r["difference"] is None and r["differences"] == []
    assert r["reason"].startswith("no overlap")
    assert verdict(r) == ("PPO's and DPO's reward–KL frontiers do not overlap (PPO: KL 1–2 nats, DPO: 3–4), "
                          "so they cannot be compared at equal KL.")
    touching = equal_kl_difference([(1, 0.0), (3, 1.0)], [(3, 0.5), (4, 1.0)])
    assert touching["overlap"] == (3.0, 3.0) and touching["difference"] == pytest.approx(0.5)


def _sweep(rng, kls, shift, n=150):
    """Per-prompt (kl, score) for each sweep point: score rises as sqrt(kl), plus a policy shift."""
    samples = []
    for kl in kls:
        per_prompt_kl = rng.gamma(4.0, kl / 4.0, n)
        samples.append((per_prompt_kl, 0.1 * np.sqrt(per_prompt_kl) + shift + rng.normal(0, 0.3, n)))
    return [(k.mean(), s.mean()) for k, s in samples], samples


@pytest.mark.parametrize("concave", [False, True])
def test_equal_kl_difference_recovers_a_known_shift_with_an_interval(concave):
    rng = np.random.default_rng(4)
    points_a, samples_a = _sweep(rng, [2, 6, 12, 20], shift=0.15)
    points_b, samples_b = _sweep(rng, [4, 9, 16, 30], shift=0.0)
    r = equal_kl_difference(points_a, points_b, per_point_samples=(samples_a, samples_b), n_bootstrap=300,
                            concave=concave)
    assert r["paired"] and r["n_prompts"] == 150 and r["undefined_fraction"] < 0.05
    assert r["ci_low"] < 0.15 < r["ci_high"] and r["significant"] and r["ci_low"] > 0
    assert abs(r["mean_difference"] - 0.15) < 0.05
    assert all(lo <= d <= hi for lo, d, hi in zip(r["differences_ci_low"], r["differences"], r["differences_ci_high"]))
    assert verdict(r).startswith(f"At KL ≈ {r['midpoint_kl']:.3g} nats PPO beats DPO by +0.1")


def test_equal_kl_difference_checks_samples_against_points():
    rng = np.random.default_rng(5)
    points, samples = _sweep(rng, [2, 8], shift=0.0)
    with pytest.raises(AlignError, match="same order"):
        equal_kl_difference(points, points, per_point_samples=(samples[::-1], samples), n_bootstrap=10)
    dicts = [{"kl": k, "score": s} for k, s in samples]
    r = equal_kl_difference(points, points, per_point_samples=(dicts, samples), n_bootstrap=50)
    assert r["difference"] == 0 and r["ci_low"] == r["ci_high"] == 0  # same samples, same resamples


# ------------------------------------------------------------------------------- length-controlled wins

def _lengths(rng, n, advantage):
    return rng.normal(100 + advantage, 30, n), rng.normal(100, 30, n)


def test_length_controlled_equals_raw_when_lengths_are_equal():
    rng = np.random.default_rng(6)
    outcomes = rng.choice([0.0, 0.5, 1.0], size=200, p=[0.3, 0.1, 0.6])
    lengths = rng.integers(20, 200, 200)
    r = length_controlled_win_rate(outcomes, lengths, lengths, n_bootstrap=300)
    assert r["lc_win_rate"] == pytest.approx(r["win_rate"], abs=1e-6) and r["slope"] == 0
    assert r["change"] == pytest.approx(0, abs=1e-6) and r["ci_low"] == pytest.approx(r["raw_ci_low"], abs=1e-6)


def test_length_controlled_matches_the_closed_form_logistic_fit():
    # Two groups, A longer by d or shorter by d: the fit is saturated, so the predicted win rate of
    # each group is its observed rate and sigmoid(b0) is the logit midpoint of the two.
    n = 100
    outcomes = np.array([1.0] * 80 + [0.0] * 20 + [1.0] * 40 + [0.0] * 60)
    length_b = np.full(2 * n, 100.0)
    length_a = np.concatenate([np.full(n, 110.0), np.full(n, 90.0)])
    r = length_controlled_win_rate(outcomes, length_a, length_b, n_bootstrap=200, l2=1e-9)
    b0 = (logit(0.8) + logit(0.4)) / 2
    assert r["intercept"] == pytest.approx(b0, abs=1e-6)
    assert r["slope"] == pytest.approx((logit(0.8) - logit(0.4)) / (2 * math.tanh(1.0)), abs=1e-6)
    assert r["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-b0)), abs=1e-6)
    assert r["win_rate"] == pytest.approx(0.6) and r["length_scale"] == pytest.approx(10.0)


def test_length_controlled_moves_toward_half_when_length_explains_the_wins():
    rng = np.random.default_rng(7)
    length_a, length_b = _lengths(rng, 400, advantage=25)
    z = np.tanh((length_a - length_b) / np.std(length_a - length_b))
    outcomes = (rng.random(400) < 1 / (1 + np.exp(-3 * z))).astype(float)  # no quality edge, only length
    r = length_controlled_win_rate(outcomes, length_a, length_b, n_bootstrap=300)
    assert r["win_rate"] > 0.6 and r["raw_ci_low"] > 0.5
    assert abs(r["lc_win_rate"] - 0.5) < (r["win_rate"] - 0.5) / 3
    assert r["ci_low"] < 0.5 < r["ci_high"] and not r["significant"]
    assert r["change_ci_high"] < 0 and r["slope"] > 1
    # A real edge unrelated to length survives the control.
    fair = (rng.random(400) < 0.7).astype(float)
    kept = length_controlled_win_rate(fair, length_a, length_b, n_bootstrap=300)
    assert abs(kept["lc_win_rate"] - kept["win_rate"]) < 0.05 and kept["significant"]


def test_length_controlled_stays_finite_when_length_separates_or_all_win():
    rng = np.random.default_rng(8)
    length_a, length_b = _lengths(rng, 200, advantage=10)
    separated = length_controlled_win_rate((length_a > length_b).astype(float), length_a, length_b, n_bootstrap=200)
    assert np.isfinite(separated["slope"]) and 0.2 < separated["lc_win_rate"] < 0.8
    sweep = length_controlled_win_rate(np.ones(200), length_a, length_b, n_bootstrap=200)
    assert sweep["lc_win_rate"] > 0.999 and sweep["ci_low"] > 0.999
    with pytest.raises(AlignError, match="same prompts"):
        length_controlled_win_rate([1.0, 0.0], [1, 2, 3], [1, 2])


# -------------------------------------------------------------------------------------------- verdict

def test_verdict_for_a_non_significant_seed_comparison_and_a_length_control():
    seeds = {"kind": "hierarchical", "mean": 0.031, "ci_low": -0.012, "ci_high": 0.072, "significant": False,
             "p_value": 0.21, "n_seeds": 3, "n_bootstrap": 2000}
    lc = {"kind": "length_controlled", "win_rate": 0.86, "lc_win_rate": 0.803, "ci_low": 0.74, "ci_high": 0.86,
          "significant": True}
    assert verdict(seeds, length_controlled=lc, kl=10, length_label="DPO's raw win rate") == (
        "At KL ≈ 10 nats PPO leads DPO by +0.03 gold [−0.01, +0.07] over 3 seeds: no significant difference; "
        "DPO's raw win rate falls from 0.86 to 0.80 [0.74, 0.86] once length is controlled.")


def test_verdict_for_significant_results_from_real_dicts():
    rng = np.random.default_rng(9)
    a, b = rng.normal(0.0, 1, 200), rng.normal(0.0, 1, 200)
    r = paired_bootstrap(b + 0.5, b, n_bootstrap=500)  # no noise: every prompt +0.5
    h = head_to_head([1.0] * 150 + [0.0] * 50, n_bootstrap=500)
    assert verdict(r, head_to_head=h, metric="gold score") == (
        "PPO beats DPO by +0.50 gold score [+0.50, +0.50] over 200 prompts: significant (p ≤ 0.002); "
        f"PPO's head-to-head win rate over DPO is 0.75 [{h['ci_low']:.2f}, {h['ci_high']:.2f}], "
        "significantly above 0.5 (p ≤ 0.002).")
    # A negative difference is told from the winner's side, its interval flipped.
    worse = paired_bootstrap(a, a + 0.5, n_bootstrap=500)
    assert verdict(worse).startswith("DPO beats PPO by +0.50 gold [+0.50, +0.50] over 200 prompts: significant")
    lost = {"kind": "length_controlled", "win_rate": 0.64, "lc_win_rate": 0.52, "ci_low": 0.44, "ci_high": 0.59,
            "significant": False}
    assert verdict(length_controlled=lost, a="DPO", b="SFT") == (
        "DPO's raw win rate over SFT falls from 0.64 to 0.52 [0.44, 0.59] once length is controlled, "
        "no longer different from 0.5.")
    with pytest.raises(AlignError, match="at least one"):
        verdict()
    with pytest.raises(AlignError, match="kind"):
        verdict(h)
