"""Is policy A better than policy B? Paired, seed-level, KL-matched and length-controlled statistics.

Pure numpy/scipy and seeded (the same ``seed`` gives the same intervals), cheap enough to call from
a report. Every function returns a plain dict with a ``kind`` key; the sentences that read them are
written in ``align/report/verdict.py`` (numbers here, words there).

Conventions shared by every function:

* **One decision rule per result.** ``significant`` is ``p_value < 1 − confidence``, and the interval
  is the set of nulls the same test would not reject, so a printed interval excludes the null
  exactly when the result is called significant. ``interval_method`` names the procedure.
* **The unit of inference is what varies between repetitions.** Within one run, prompts (paired:
  the same prompts for both policies). Across training seeds, the seeds: ``across_seeds`` treats
  seed and prompt as crossed random factors, so 3 lucky seeds on 200 shared prompts are 3
  observations, not 600.
* **A comparison the data cannot support is refused, not approximated**: the result carries
  ``refused`` (a reason) and no estimate — a frontier with one point, KL ranges that do not meet
  in too many resamples, a length slope that nothing identifies.

The false-positive rate of each procedure is measured by simulation with a known truth in
``tests/eval/test_calibration.py``.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from align.errors import AlignError

_CELLS = 2_000_000  # resample rows x prompts held in memory at once; bigger inputs are chunked


# --------------------------------------------------------------------------------------------- helpers

def _vector(x, name: str, what: str) -> np.ndarray:
    v = np.asarray(x, dtype=float)
    if v.ndim != 1 or len(v) == 0:
        raise AlignError(f"{what}: expected a non-empty list of numbers for {name}, got shape {v.shape}.")
    if not np.isfinite(v).all():
        raise AlignError(f"{what}: {name} contains NaN or infinite values; drop or score those prompts first.")
    return v


def _outcomes(x, what: str, name: str = "outcomes") -> np.ndarray:
    v = _vector(x, name, what)
    if (v < 0).any() or (v > 1).any():
        raise AlignError(f"{what}: every one of {name} must be in [0, 1] (1 = A wins, 0.5 = tie, 0 = B wins).")
    return v


def _check(n_bootstrap, confidence, what: str) -> int:
    if not 0 < confidence < 1:
        raise AlignError(f"{what}: confidence must be between 0 and 1, got {confidence}.")
    if int(n_bootstrap) < 1:
        raise AlignError(f"{what}: n_bootstrap must be at least 1, got {n_bootstrap}.")
    return int(n_bootstrap)


def _counts(rng, n: int, rows: int) -> np.ndarray:
    """Bootstrap resamples as counts: row r says how often each of n prompts was drawn in n draws.

    Counts instead of index arrays, so a mean is one matrix product and a weighted fit (the
    length-controlled logistic regression) takes the resample as weights.
    """
    idx = rng.integers(0, n, size=(rows, n)) + (n * np.arange(rows))[:, None]
    return np.bincount(idx.ravel(), minlength=rows * n).reshape(rows, n).astype(float)


def _chunks(n: int, total: int):
    rows = max(1, _CELLS // n)
    for start in range(0, total, rows):
        yield start, min(rows, total - start)


def _resampled_means(rng, x: np.ndarray, n_bootstrap: int) -> np.ndarray:
    """Means of x (prompts first) over n_bootstrap resamples of its prompts."""
    n = x.shape[0]
    return np.concatenate([_counts(rng, n, rows) @ x / n for _, rows in _chunks(n, n_bootstrap)])


def _percentile(values: np.ndarray, null: float, confidence: float) -> dict:
    """Percentile interval and the p-value of the same bootstrap distribution, made to agree exactly.

    p is twice the smaller share of resamples on either side of the null (ties count on both
    sides); the interval's ends are order statistics chosen so that it excludes the null exactly
    when p < 1 − confidence.
    """
    alpha, b = 1 - confidence, len(values)
    below, above = int((values <= null).sum()), int((values >= null).sum())
    p = min(1.0, 2 * min(below, above) / b)
    low = float(np.quantile(values, alpha / 2, method="inverted_cdf"))
    high = float(-np.quantile(-values, alpha / 2, method="inverted_cdf"))
    return {"ci_low": low, "ci_high": high, "p_value": p, "significant": bool(p < alpha)}


# --------------------------------------------------------------------------------- paired differences

def _flip_counts(signs: np.ndarray, d: np.ndarray, delta: float) -> int:
    """How many sign flips of d − delta give a mean at least as far from 0 as the observed one."""
    observed = abs(d.mean() - delta)
    flipped = np.abs(signs @ (d - delta)) / len(d)
    return int((flipped >= observed - 1e-12 * max(1.0, observed)).sum())


def paired_difference(a, b, *, n_flips: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of a − b over the same prompts: a sign-flip (paired permutation) test and its inverted interval.

    ``a[i]`` and ``b[i]`` are the two policies' scores (same judge) on prompt i; prompt difficulty,
    shared by both, drops out of the difference. Under the null the two policies are exchangeable
    on every prompt, so each difference is as likely to have either sign: the test is exact at any
    number of prompts. The interval is every shift δ the same test does not reject for a − b − δ
    (one set of random signs for all δ), so it excludes 0 exactly when p < 1 − confidence.
    """
    what = "paired difference"
    n_flips = _check(n_flips, confidence, what)
    a, b = _vector(a, "a", what), _vector(b, "b", what)
    if len(a) != len(b):
        raise AlignError(f"{what}: a and b must score the same prompts, got {len(a)} and {len(b)} scores.")
    d = a - b
    n, alpha = len(d), 1 - confidence
    signs = 2.0 * np.random.default_rng(seed).integers(0, 2, size=(n_flips, n)) - 1.0

    def p_at(delta: float) -> float:
        return (1 + _flip_counts(signs, d, delta)) / (1 + n_flips)

    def edge(direction: float) -> float:
        """Bisect between the estimate (never rejected) and a shift far enough to be rejected."""
        inside, span = d.mean(), max(float(np.ptp(d)), 1e-12)
        outside = inside + direction * span
        while p_at(outside) >= alpha and abs(outside - inside) < 1e6 * span:
            outside += direction * span
        for _ in range(60):
            middle = (inside + outside) / 2
            inside, outside = (middle, outside) if p_at(middle) >= alpha else (inside, middle)
        return float(inside)

    p = p_at(0.0)
    low, high = (edge(-1.0), edge(1.0)) if np.ptp(d) > 0 else (float(d.mean()), float(d.mean()))
    return {"kind": "paired", "difference": float(d.mean()), "ci_low": low, "ci_high": high, "p_value": p,
            "significant": bool(p < alpha), "interval_method": "inverted sign-flip permutation test, two-sided",
            "mean_a": float(a.mean()), "mean_b": float(b.mean()), "n": n, "n_flips": n_flips, "confidence": confidence}


def head_to_head(outcomes, *, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """A's win rate over B from per-prompt outcomes (1 = A wins, 0.5 = tie, 0 = B wins), against 0.5.

    Ties count half; fractional outcomes (a judge's probability that A is better) are averaged as
    they are. Percentile bootstrap over prompts; this is also the win rate against the reference
    that the evaluate stage reports (its ``win_rate`` module calls this function).
    """
    what = "win rate"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    x = _outcomes(outcomes, what)
    rng = np.random.default_rng(seed)
    decision = _percentile(_resampled_means(rng, x, n_bootstrap), 0.5, confidence)
    return {"kind": "head_to_head", "win_rate": float(x.mean()), **decision,
            "interval_method": "bootstrap percentile over prompts, two-sided", "wins": int((x > 0.5).sum()),
            "ties": int((x == 0.5).sum()), "losses": int((x < 0.5).sum()), "n": len(x), "n_bootstrap": n_bootstrap,
            "confidence": confidence}


# ------------------------------------------------------------------------------------------ across seeds

def across_seeds(per_seed_differences, *, confidence: float = 0.95) -> dict:
    """Mean over training seeds of per-prompt differences a − b, with the seed as the experimental unit.

    ``per_seed_differences[s][i]``: seed s's difference on prompt i. When every seed has the same
    number of prompts they are taken to be the same prompts in the same order (the evaluate stage's
    held-out prompts do not change with the seed), and seed and prompt are crossed random factors:
    the variance of the grand mean is estimated from the two-way ANOVA mean squares,
    ``(MS_seed + max(MS_prompt − MS_residual, 0)) / (S·n)``, with Satterthwaite's degrees of freedom,
    so both a seed-to-seed spread and a prompt effect shared by every seed widen the interval.
    Otherwise (different prompts per seed) it is a t-interval on the seed means with S − 1 degrees
    of freedom. Either way a t test and its interval: they agree by construction.

    With 3 seeds the seed term has 2 degrees of freedom (t = 4.30 at 95 %): a difference is called
    only if it is large against the spread of the seed means. ``min_detectable`` is the smallest
    |estimate| this design would have called at the observed spread.
    """
    what = "across seeds"
    if not 0 < confidence < 1:
        raise AlignError(f"{what}: confidence must be between 0 and 1, got {confidence}.")
    if isinstance(per_seed_differences, np.ndarray) and per_seed_differences.ndim == 2:
        per_seed_differences = list(per_seed_differences)
    if not isinstance(per_seed_differences, (list, tuple)) or len(per_seed_differences) < 2:
        raise AlignError(f"{what}: expected one list of per-prompt differences per seed, for at least 2 seeds.")
    rows = [_vector(values, f"seed {i}", what) for i, values in enumerate(per_seed_differences)]
    n_seeds = len(rows)
    means = np.array([r.mean() for r in rows])
    estimate = float(means.mean())
    shared = len({len(r) for r in rows}) == 1
    if shared:
        table = np.stack(rows)
        n = table.shape[1]
        seed_means, prompt_means = table.mean(axis=1), table.mean(axis=0)
        ms_seed = n * ((seed_means - estimate) ** 2).sum() / (n_seeds - 1)
        residual = table - seed_means[:, None] - prompt_means[None, :] + estimate
        ms_residual = (residual ** 2).sum() / ((n_seeds - 1) * (n - 1)) if n > 1 else 0.0
        ms_prompt = n_seeds * ((prompt_means - estimate) ** 2).sum() / (n - 1) if n > 1 else 0.0
        prompt_term = max(ms_prompt - ms_residual, 0.0)
        variance = (ms_seed + prompt_term) / (n_seeds * n)
        spread = ms_seed ** 2 / (n_seeds - 1)
        if prompt_term > 0:
            spread += ms_prompt ** 2 / (n - 1) + ms_residual ** 2 / ((n_seeds - 1) * (n - 1))
        df = float((ms_seed + prompt_term) ** 2 / spread) if spread > 0 else float(n_seeds - 1)
        method = "crossed seed x prompt random effects (two-way ANOVA, Satterthwaite df), t test"
    else:
        variance = means.var(ddof=1) / n_seeds
        df = float(n_seeds - 1)
        method = "t test on the seed means (different prompts per seed)"
    std_error = float(np.sqrt(variance))
    critical = float(stats.t.ppf(1 - (1 - confidence) / 2, df))
    if std_error > 0:
        p = float(2 * stats.t.sf(abs(estimate) / std_error, df))
    else:
        p = 1.0 if estimate == 0 else 0.0
    low, high = estimate - critical * std_error, estimate + critical * std_error
    return {"kind": "across_seeds", "estimate": estimate, "ci_low": float(low), "ci_high": float(high), "p_value": p,
            "significant": bool(p < 1 - confidence), "interval_method": method, "std_error": std_error, "df": df,
            "t_critical": critical, "min_detectable": critical * std_error, "n_seeds": n_seeds,
            "shared_prompts": shared, "seeds": [{"seed": i, "mean": float(m), "n": len(r)}
                                                for i, (m, r) in enumerate(zip(means, rows))],
            "confidence": confidence}


# ------------------------------------------------------------------------------------ reward-KL frontier

def frontier_fit(kl, score, reference_score: float) -> tuple[float, float]:
    """Gao et al. (2023)'s RL frontier through the reference: score − ref = α·d − β·d·log d, d = √KL.

    Least squares over a method's sweep points; with two points it passes through both. Returns
    (α, β). Fitting a curve to all points, instead of drawing a line between the best ones, keeps a
    dense sweep from looking better just because its maximum picks up noise, and a sparse one from
    looking worse because a chord sits below a concave curve.
    """
    a, b = _fit_rows(np.atleast_2d(np.asarray(kl, float)), np.atleast_2d(np.asarray(score, float)),
                     np.atleast_1d(float(reference_score)))
    return float(a[0]), float(b[0])


def _fit_rows(kl: np.ndarray, score: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    d = np.sqrt(np.maximum(kl, 1e-12))
    x1, x2, y = d, -d * np.log(d), score - reference[:, None]
    a11, a12, a22 = (x1 * x1).sum(1), (x1 * x2).sum(1), (x2 * x2).sum(1)
    b1, b2 = (x1 * y).sum(1), (x2 * y).sum(1)
    det = a11 * a22 - a12 ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        return (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det


def frontier_curve(alpha: float, beta: float, reference_score: float, kl) -> np.ndarray:
    """The fitted frontier's score at each KL (for plots and reading off values)."""
    d = np.sqrt(np.maximum(np.asarray(kl, float), 1e-12))
    return reference_score + alpha * d - beta * d * np.log(d)


def _frontier_gaps(kl_a, score_a, kl_b, score_b, reference, n_grid: int) -> np.ndarray:
    """Per row: mean of (A's fitted frontier − B's) over the KLs both sweeps reach in that row; NaN if none."""
    fa, fb = _fit_rows(kl_a, score_a, reference), _fit_rows(kl_b, score_b, reference)
    low, high = np.maximum(kl_a.min(1), kl_b.min(1)), np.minimum(kl_a.max(1), kl_b.max(1))
    ok = high > low
    grid = low[:, None] + (high - low)[:, None] * (np.arange(n_grid) + 0.5) / n_grid
    grid = np.where(ok[:, None], grid, 1.0)
    d = np.sqrt(np.maximum(grid, 1e-12))
    curve = lambda f: f[0][:, None] * d - f[1][:, None] * d * np.log(d)  # noqa: E731 (the reference cancels)
    gaps = (curve(fa) - curve(fb)).mean(axis=1)
    gaps[~ok] = np.nan
    return gaps


def _sweep(samples, name: str, what: str) -> np.ndarray:
    """One method's per-prompt samples as an array (points, 2 [kl, score], prompts)."""
    rows = []
    for i, sample in enumerate(samples):
        kl, score = (sample["kl"], sample["score"]) if isinstance(sample, dict) else sample
        kl = _vector(kl, f"{name} point {i} kl", what)
        score = _vector(score, f"{name} point {i} score", what)
        n = rows[0].shape[1] if rows else len(kl)
        if not len(kl) == len(score) == n:
            raise AlignError(f"{what}: every point of {name} must have one kl and one score per prompt, on the same "
                             f"{n} prompts; point {i} has {len(kl)} kls and {len(score)} scores.")
        rows.append(np.stack([kl, score]))
    return np.stack(rows) if rows else np.zeros((0, 2, 0))


def equal_kl_difference(samples_a, samples_b, reference_scores, *, n_bootstrap: int = 2000, confidence: float = 0.95,
                        seed: int = 0, n_grid: int = 9, max_undefined: float = 0.10) -> dict:
    """Method A's reward–KL frontier minus method B's, averaged over the KLs both sweeps reach.

    ``samples_a`` / ``samples_b``: one entry per sweep point (policy) of each method, its per-prompt
    ``(kl, score)`` arrays or ``{"kl": ..., "score": ...}``; ``reference_scores``: the reference
    policy's per-prompt scores (KL 0). All on the same prompts, in the same order.

    Each method's frontier is ``frontier_fit`` through its points and the reference. The compared
    KLs are the overlap of the two sweeps' KL ranges, recomputed in every bootstrap resample of the
    prompts (one draw shared by every policy), so the matched KL moves with the data. Refused, with
    a reason and no estimate, when a method has fewer than two points (a curve through one point is
    not identified), when the ranges do not overlap, or when more than ``max_undefined`` of the
    resamples have no overlap (the comparison would be conditional on luck). The interval carries
    prompt-to-prompt noise only, not the training noise of each sweep point: that needs seeds.
    """
    what = "equal-KL difference"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    if int(n_grid) < 1:
        raise AlignError(f"{what}: n_grid must be at least 1, got {n_grid}.")
    sa, sb = _sweep(samples_a, "sweep a", what), _sweep(samples_b, "sweep b", what)
    ref = _vector(reference_scores, "reference_scores", what)
    points = lambda s: [(float(k), float(v)) for k, v in s.mean(axis=2)]  # noqa: E731
    result = {"kind": "equal_kl", "points_a": points(sa), "points_b": points(sb), "refused": None, "estimate": None,
              "ci_low": None, "ci_high": None, "p_value": None, "significant": None, "overlap": None,
              "kl_range_a": None, "kl_range_b": None, "undefined_fraction": None, "fit_a": None, "fit_b": None,
              "interval_method": "bootstrap percentile over prompts (one draw for every policy), two-sided",
              "frontier": "score − reference = α·√KL − β·√KL·log √KL (Gao et al. 2023), least squares",
              "n_bootstrap": n_bootstrap, "confidence": confidence}
    for name, s in (("a", sa), ("b", sb)):
        if len(s) < 2:
            result["refused"] = (f"sweep {name} has {len(s)} point{'s' * (len(s) != 1)}: a frontier needs at least two "
                                 "KLs per method (sweep its kl_coef or beta)")
            return result
    n = ref.shape[0]
    if sa.shape[2] != n or sb.shape[2] != n:
        raise AlignError(f"{what}: every policy must be scored on the reference's {n} prompts, got "
                         f"{sa.shape[2]} and {sb.shape[2]}.")
    ma, mb, mref = sa.mean(axis=2), sb.mean(axis=2), np.array([ref.mean()])
    result.update(kl_range_a=(float(ma[:, 0].min()), float(ma[:, 0].max())),
                  kl_range_b=(float(mb[:, 0].min()), float(mb[:, 0].max())),
                  fit_a=frontier_fit(ma[:, 0], ma[:, 1], mref[0]), fit_b=frontier_fit(mb[:, 0], mb[:, 1], mref[0]))
    (a0, a1), (b0, b1) = result["kl_range_a"], result["kl_range_b"]
    if max(a0, b0) >= min(a1, b1):
        result["refused"] = (f"the sweeps' KL ranges do not overlap (a: {a0:.3g}–{a1:.3g} nats, b: {b0:.3g}–{b1:.3g}); "
                             "sweep them over a common KL range")
        return result
    result["overlap"] = (max(a0, b0), min(a1, b1))
    estimate = float(_frontier_gaps(ma[None, :, 0], ma[None, :, 1], mb[None, :, 0], mb[None, :, 1], mref, n_grid)[0])
    rng = np.random.default_rng(seed)
    boot = []
    for _, rows in _chunks(n, n_bootstrap):
        c = _counts(rng, n, rows) / n
        ra, rb = np.einsum("rn,pkn->rpk", c, sa), np.einsum("rn,pkn->rpk", c, sb)
        boot.append(_frontier_gaps(ra[..., 0], ra[..., 1], rb[..., 0], rb[..., 1], c @ ref, n_grid))
    boot = np.concatenate(boot)
    undefined = float(np.isnan(boot).mean())
    result["undefined_fraction"] = undefined
    if undefined > max_undefined:
        result["refused"] = (f"the sweeps' KL ranges overlap only narrowly (a: {a0:.3g}–{a1:.3g} nats, b: "
                             f"{b0:.3g}–{b1:.3g}): {undefined:.0%} of the resamples have no common KL, more than "
                             f"{max_undefined:.0%}; sweep them over a common KL range")
        return result
    result.update(estimate=estimate, **_percentile(boot[~np.isnan(boot)], 0.0, confidence))
    return result


# ------------------------------------------------------------------------------ length-controlled wins

def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))  # overflow-free


def _logistic_fit(x: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float, *, max_iter: int = 100,
                  tol: float = 1e-10) -> np.ndarray:
    """Ridge logistic regression y ~ sigmoid(b0·x[0] + b1·x[1]), one fit per row of ``weights``, by Newton.

    ``x`` is (2, rows): the policy indicator (no intercept on anchor rows) and the length feature.
    Fractional y (ties as 0.5) is the binomial quasi-likelihood, still convex. The slope gets the
    ``l2`` penalty (finite when length separates wins from losses), the indicator almost none.
    Steps are capped at 5 logits so Newton cannot overshoot when a resample is all wins.
    """
    penalty = np.array([1e-6, l2])
    beta = np.zeros((weights.shape[0], 2))
    for _ in range(max_iter):
        p = _sigmoid(beta @ x)
        resid, curv = weights * (y - p), weights * p * (1 - p)
        g = resid @ x.T - penalty * beta
        h00, h01, h11 = curv @ (x[0] * x[0]) + penalty[0], curv @ (x[0] * x[1]), curv @ (x[1] * x[1]) + penalty[1]
        det = h00 * h11 - h01 ** 2
        step = np.column_stack([(h11 * g[:, 0] - h01 * g[:, 1]) / det, (h00 * g[:, 1] - h01 * g[:, 0]) / det])
        size = np.abs(step).max(axis=1, keepdims=True)
        beta += step * np.minimum(1.0, 5.0 / np.maximum(size, 1e-300))
        if size.max() < tol:
            break
    return beta


def extreme_change(raw: float, controlled: float, *, abs_diff: float = 0.10, rel_diff: float = 4.0) -> bool:
    """AlpacaEval's warning rule: the length-controlled rate moved further than the raw one plausibly can."""
    too_small = controlled < min(raw - raw / rel_diff, raw - abs_diff)
    too_large = controlled > max(raw + (1 - raw) / rel_diff, raw + abs_diff)
    return bool(too_small or too_large)


def length_controlled_win_rate(outcomes, length_a, length_b, *, anchors=(), anchor_weight: float = 1.0,
                               length_unit: str = "tokens", n_bootstrap: int = 2000, confidence: float = 0.95,
                               seed: int = 0, l2: float = 0.1, min_each_side: float = 0.2) -> dict:
    """A's win rate over B had both answers been equally long, as AlpacaEval 2's length-controlled win rate.

    Fits P(A beats B) = sigmoid(b0 + b1·tanh(Δ / sd(Δ))), Δ = length_a − length_b per prompt
    (outcomes fractional, ties 0.5), and reports sigmoid(b0). The tanh bounds the feature so a few
    very long answers cannot dominate.

    b0 and b1 are told apart only if something varies the length without varying the quality.
    ``anchors``, a list of ``(outcomes, length_1, length_2)`` on the same prompts, supply that, as
    AlpacaEval's "gamed" baseline rows do: a policy judged against a second sample of itself (B's,
    A's), whose true win rate at equal length is 0.5 by symmetry. Anchor rows enter mirrored
    (o, Δ) and (1 − o, −Δ) with no intercept and share the slope; ``anchor_weight`` is each anchor
    judgement's total weight (1: a real judgement by the same judge counts like the policy's own;
    AlpacaEval gives its artificial gamed rows 0.1). Without anchors the slope comes from the policy
    rows alone, and the result is refused when fewer than ``min_each_side`` of the prompts have A
    shorter (or longer) than B: then no fit can separate length from quality. Prompts are
    resampled together for policy and anchor rows (sd(Δ) fixed). ``extreme`` flags AlpacaEval's
    "very different from the raw win rate" warning.
    """
    what = "length-controlled win rate"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    y = _outcomes(outcomes, what)
    la, lb = _vector(length_a, "length_a", what), _vector(length_b, "length_b", what)
    if not len(y) == len(la) == len(lb):
        raise AlignError(f"{what}: outcomes, length_a and length_b must cover the same prompts, "
                         f"got {len(y)}, {len(la)} and {len(lb)}.")
    if l2 <= 0:
        raise AlignError(f"{what}: l2 must be positive (it keeps the slope finite), got {l2}.")
    delta = la - lb
    result = {"kind": "length_controlled", "win_rate": float(y.mean()), "lc_win_rate": None, "refused": None,
              "ci_low": None, "ci_high": None, "p_value": None, "significant": None, "extreme": None,
              "length_unit": length_unit, "mean_length_difference": float(delta.mean()),
              "share_a_longer": float((delta > 0).mean()), "share_a_shorter": float((delta < 0).mean()),
              "anchors": len(anchors), "interval_method": "bootstrap percentile over prompts, two-sided",
              "n": len(y), "n_bootstrap": n_bootstrap, "confidence": confidence}
    if not anchors:
        if min(result["share_a_longer"], result["share_a_shorter"]) < min_each_side:
            longer = "longer" if result["share_a_longer"] > result["share_a_shorter"] else "shorter"
            result["refused"] = (f"A is {longer} than B on {max(result['share_a_longer'], result['share_a_shorter']):.0%} "
                                 "of the prompts, so length and quality cannot be told apart without anchors "
                                 "(each policy judged against a second sample of itself)")
            return result
    anchor_y, anchor_delta = [], []
    for k, anchor in enumerate(anchors):
        if len(anchor) != 3:
            raise AlignError(f"{what}: anchor {k} must be (outcomes, length_1, length_2).")
        ay = _outcomes(anchor[0], what, f"anchor {k} outcomes")
        l1, l2_ = _vector(anchor[1], f"anchor {k} length_1", what), _vector(anchor[2], f"anchor {k} length_2", what)
        if not len(ay) == len(l1) == len(l2_) == len(y):
            raise AlignError(f"{what}: anchor {k} must judge the same {len(y)} prompts, got {len(ay)} outcomes and "
                             f"{len(l1)}/{len(l2_)} lengths.")
        anchor_y.append(ay)
        anchor_delta.append(l1 - l2_)
    n, k = len(y), len(anchor_y)
    ay = np.concatenate(anchor_y) if k else np.zeros(0)
    ad = np.concatenate(anchor_delta) if k else np.zeros(0)
    scale = float(np.concatenate([delta, ad, -ad]).std()) or 1.0
    x = np.vstack([np.concatenate([np.ones(n), np.zeros(2 * n * k)]),
                   np.tanh(np.concatenate([delta, ad, -ad]) / scale)])
    target = np.concatenate([y, ay, 1 - ay])

    def weights(counts: np.ndarray) -> np.ndarray:  # (rows, n) prompt counts -> weights of every row
        half = np.tile(anchor_weight / 2 * counts, (1, k))
        return np.concatenate([counts, half, half], axis=1)

    (b0, b1), = _logistic_fit(x, target, weights(np.ones((1, n))), l2)
    rng = np.random.default_rng(seed)
    lc = np.concatenate([_sigmoid(_logistic_fit(x, target, weights(_counts(rng, n, rows)), l2)[:, 0])
                         for _, rows in _chunks(n, n_bootstrap)])
    controlled = float(_sigmoid(b0))
    result.update(lc_win_rate=controlled, change=controlled - float(y.mean()), intercept=float(b0), slope=float(b1),
                  length_scale=scale, extreme=extreme_change(float(y.mean()), controlled),
                  length_feature="tanh(length difference / its std)", l2=l2, **_percentile(lc, 0.5, confidence))
    return result


# ------------------------------------------------------------------------------------ multiple tests

def holm(p_values) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at the level they are compared with)."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p)
    adjusted = np.maximum.accumulate((len(p) - np.arange(len(p))) * p[order])
    out = np.empty_like(p)
    out[order] = np.minimum(adjusted, 1.0)
    return out.tolist()
