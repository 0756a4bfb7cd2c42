"""Is policy A better than policy B? Paired, seed-aware, KL-matched and length-controlled statistics.

Pure numpy and seeded (the same ``seed`` gives the same intervals), so the functions run without
torch and are cheap enough to call from a report. Every result is a plain dict with a ``kind`` key;
``verdict`` turns a few of them into one sentence with the numbers.

Conventions shared by every function:

* Intervals are percentile bootstrap intervals (``ci_low``, ``ci_high`` at ``confidence``): no
  normality assumption, and they stay inside [0, 1] for win rates.
* Prompts are the unit resampled. Scores of two policies on the same prompts are paired, so the
  pair is resampled together: the prompt-to-prompt difficulty cancels and the interval is much
  narrower than two independent intervals would suggest.
* ``significant`` means the interval excludes the null (0 for a difference, 0.5 for a win rate),
  so it always agrees with the printed interval; ``p_value`` is reported beside it, with
  ``p_value_method`` saying how it was obtained.
"""

from __future__ import annotations

import numpy as np

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


def _outcomes(x, what: str) -> np.ndarray:
    v = _vector(x, "outcomes", what)
    if (v < 0).any() or (v > 1).any():
        raise AlignError(f"{what}: every outcome must be in [0, 1] (1 = A wins, 0.5 = tie, 0 = B wins).")
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
    """Means of x (prompts first; shape (n,) or (n, k)) over n_bootstrap resamples of its prompts."""
    n = x.shape[0]
    return np.concatenate([_counts(rng, n, rows) @ x / n for _, rows in _chunks(n, n_bootstrap)])


def _sign_flip_p(rng, d: np.ndarray, n_flips: int) -> float:
    """Two-sided Monte Carlo sign-flip (paired permutation) p-value for mean(d) = 0.

    Under the null the two policies are exchangeable on every prompt, so each paired difference
    is as likely to have either sign; unlike a bootstrap p-value this is a real test of that null.
    The +1s make it valid at any number of flips (never exactly 0).
    """
    n, observed = len(d), abs(d.mean())
    tol = 1e-12 * max(1.0, float(np.abs(d).max()))
    hits = 0
    for _, rows in _chunks(n, n_flips):
        signs = 2.0 * rng.integers(0, 2, size=(rows, n)) - 1.0
        hits += int((np.abs(signs @ d / n) >= observed - tol).sum())
    return (1 + hits) / (1 + n_flips)


def _bootstrap_p(values: np.ndarray, null: float) -> float:
    """Two-sided bootstrap p-value: twice the share of resamples on the far side of the null.

    The smallest two-sided level at which the percentile interval would exclude the null, so it
    agrees with ``significant``; used where no exchangeability test fits (seeds, frontiers).
    """
    values = values[~np.isnan(values)]
    below, above = (values <= null).sum(), (values >= null).sum()
    return float(min(1.0, 2 * (1 + min(below, above)) / (1 + len(values))))


def _interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = (1 - confidence) / 2
    low, high = np.quantile(values, [alpha, 1 - alpha])
    return float(low), float(high)


def _excludes(low, high, null: float) -> bool:
    return bool(low > null or high < null)


# --------------------------------------------------------------------------------- paired differences

def paired_bootstrap(a, b, *, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """Mean of a − b over the same prompts, with a paired bootstrap interval and a sign-flip p-value.

    ``a[i]`` and ``b[i]`` are the two policies' scores (same judge) on prompt i. Resampling prompts
    with the pair kept together is what makes the comparison paired: prompt difficulty, shared by
    both scores, drops out of the difference.
    """
    what = "paired bootstrap"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    a, b = _vector(a, "a", what), _vector(b, "b", what)
    if len(a) != len(b):
        raise AlignError(f"{what}: a and b must score the same prompts, got {len(a)} and {len(b)} scores.")
    d = a - b
    rng = np.random.default_rng(seed)
    boot = _resampled_means(rng, d, n_bootstrap)
    low, high = _interval(boot, confidence)
    return {"kind": "paired", "difference": float(d.mean()), "ci_low": low, "ci_high": high,
            "p_value": _sign_flip_p(rng, d, n_bootstrap), "p_value_method": "sign-flip permutation, two-sided",
            "significant": _excludes(low, high, 0.0), "mean_a": float(a.mean()), "mean_b": float(b.mean()),
            "std_error": float(boot.std()), "n": len(d), "n_bootstrap": n_bootstrap, "confidence": confidence}


def head_to_head(outcomes, *, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0) -> dict:
    """A's win rate over B from per-prompt outcomes (1 = A wins, 0.5 = tie, 0 = B wins), against 0.5.

    Fractional outcomes (a judge's probability that A is better) are averaged as they are. The
    p-value flips each outcome to 1 − outcome at random: swapping which policy is "A" on a prompt,
    which under the null (neither policy better) changes nothing.
    """
    what = "head-to-head"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    x = _outcomes(outcomes, what)
    rng = np.random.default_rng(seed)
    low, high = _interval(_resampled_means(rng, x, n_bootstrap), confidence)
    return {"kind": "head_to_head", "win_rate": float(x.mean()), "ci_low": low, "ci_high": high,
            "p_value": _sign_flip_p(rng, x - 0.5, n_bootstrap),
            "p_value_method": "sign-flip permutation (swap A and B per prompt), two-sided",
            "significant": _excludes(low, high, 0.5), "wins": int((x > 0.5).sum()), "ties": int((x == 0.5).sum()),
            "losses": int((x < 0.5).sum()), "n": len(x), "n_bootstrap": n_bootstrap, "confidence": confidence}


def hierarchical_bootstrap(per_seed, *, n_bootstrap: int = 2000, confidence: float = 0.95, seed: int = 0,
                           null: float = 0.0) -> dict:
    """Mean over training seeds of per-prompt values, with an interval that resamples seeds, then prompts.

    ``per_seed[s]`` holds one training seed's per-prompt values: scores, win outcomes (pass
    ``null=0.5``), or paired differences a − b (the default null 0). Each seed's mean counts
    equally. A resample draws seeds with replacement, then prompts with replacement within each
    drawn seed, so the interval carries both the seed-to-seed and the prompt-to-prompt spread and
    one lucky seed cannot make a difference look certain. ``prompts_only_ci_*`` keeps the seeds
    fixed and resamples prompts only: what a flat analysis would claim, for comparison.

    With few seeds (3 is typical) the seed level has only a handful of distinct resamples and the
    bootstrap understates between-seed variance by a factor (S − 1) / S; read such an interval as
    a lower bound on the uncertainty, not as a precise one.
    """
    what = "hierarchical bootstrap"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    if isinstance(per_seed, np.ndarray) and per_seed.ndim == 2:
        per_seed = list(per_seed)
    if not isinstance(per_seed, (list, tuple)) or not per_seed:
        raise AlignError(f"{what}: expected a non-empty list with one list of per-prompt values per seed.")
    seeds = [_vector(values, f"seed {i}", what) for i, values in enumerate(per_seed)]
    n_seeds = len(seeds)
    seed_means = np.array([values.mean() for values in seeds])
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, n_seeds, size=(n_bootstrap, n_seeds))
    drawn = np.empty((n_bootstrap, n_seeds))
    for s, values in enumerate(seeds):  # every time seed s is drawn it gets its own prompt resample
        where = np.nonzero(picks == s)
        if len(where[0]):
            drawn[where] = _resampled_means(rng, values, len(where[0]))
    boot = drawn.mean(axis=1)
    low, high = _interval(boot, confidence)
    fixed = np.column_stack([_resampled_means(rng, values, n_bootstrap) for values in seeds]).mean(axis=1)
    flat_low, flat_high = _interval(fixed, confidence)
    return {"kind": "hierarchical", "mean": float(seed_means.mean()), "ci_low": low, "ci_high": high,
            "p_value": _bootstrap_p(boot, null), "p_value_method": "hierarchical bootstrap percentile, two-sided",
            "significant": _excludes(low, high, null), "null": null, "seed_means": seed_means.tolist(),
            "prompts_only_ci_low": flat_low, "prompts_only_ci_high": flat_high, "n_seeds": n_seeds,
            "n_per_seed": [len(values) for values in seeds], "n_bootstrap": n_bootstrap, "confidence": confidence}


# ------------------------------------------------------------------------------------ reward-KL frontier

def _points(points, what: str) -> np.ndarray:
    p = np.asarray(points, dtype=float)
    if p.ndim != 2 or p.shape[1] != 2 or len(p) == 0:
        raise AlignError(f"{what}: expected a non-empty list of (kl, score) pairs, got shape {p.shape}.")
    if not np.isfinite(p).all():
        raise AlignError(f"{what}: a (kl, score) point contains NaN or infinity.")
    return p


def _pareto(kl: np.ndarray, score: np.ndarray, concave: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The points no other point beats on both axes (lower-or-equal KL and higher score), by KL.

    ``concave``: then only the vertices of the upper concave hull of those points.
    """
    order = np.lexsort((-score, kl))  # KL ascending; at equal KL the best score first
    kl, score = kl[order], score[order]
    best_before = np.maximum.accumulate(np.concatenate(([-np.inf], score[:-1])))
    keep = score > best_before
    kl, score = kl[keep], score[keep]
    if not concave or len(kl) < 3:
        return kl, score
    hull = []  # monotone chain: drop a vertex on or below the chord of its neighbours
    for i in range(len(kl)):
        while len(hull) >= 2:
            o, m = hull[-2], hull[-1]
            if (kl[m] - kl[o]) * (score[i] - score[o]) - (score[m] - score[o]) * (kl[i] - kl[o]) < 0:
                break
            hull.pop()
        hull.append(i)
    return kl[hull], score[hull]


def frontier(points, *, concave: bool = False) -> list[tuple[float, float]]:
    """The upper (Pareto) frontier of (kl, score) points, sorted by KL; scores rise strictly along it.

    A point is dropped when another reaches at least its score at no more KL: nobody would pick
    it. ``score_at_kl`` interpolates linearly between frontier points.

    That interpolation jumps when a point crosses the line between its neighbours: just below it,
    the point is dropped; just above, it pulls the line down to itself. So the frontier's value
    at a KL can jump between bootstrap resamples and an interval can sit off-centre.
    ``concave=True`` keeps only the upper concave hull, which moves continuously with the points.
    It is also what is achievable: answering each prompt with one of two neighbouring policies
    at random gets the mixed score at no more than the mixed KL (KL is convex).
    """
    kl, score = _pareto(*_points(points, "frontier").T, concave=concave)
    return [(float(k), float(s)) for k, s in zip(kl, score)]


def _on_frontier(kl: np.ndarray, score: np.ndarray, at: np.ndarray) -> np.ndarray:
    values = np.interp(at, kl, score)
    values[(at < kl[0]) | (at > kl[-1])] = np.nan
    return values


def score_at_kl(points, kl: float, *, concave: bool = False) -> float | None:
    """The frontier's score at ``kl`` by linear interpolation; None outside the frontier's KL range.

    No extrapolation: a sweep says nothing about KLs it did not reach. ``concave`` as in ``frontier``.
    """
    front = np.array(frontier(points, concave=concave))
    value = _on_frontier(front[:, 0], front[:, 1], np.array([float(kl)]))[0]
    return None if np.isnan(value) else float(value)


def _sweep_samples(samples, points: np.ndarray, name: str, what: str) -> np.ndarray:
    """One sweep's per-prompt samples as an array (points, 2, prompts), checked against the points."""
    if len(samples) != len(points):
        raise AlignError(f"{what}: sweep {name} has {len(points)} points but {len(samples)} per-point samples.")
    rows = []
    for i, sample in enumerate(samples):
        kl, score = (sample["kl"], sample["score"]) if isinstance(sample, dict) else sample
        kl = _vector(kl, f"sweep {name} point {i} kl", what)
        score = _vector(score, f"sweep {name} point {i} score", what)
        n = rows[0].shape[1] if rows else len(kl)
        if not len(kl) == len(score) == n:
            raise AlignError(f"{what}: every point of sweep {name} must have one kl and one score per prompt, on "
                             f"the same {n} prompts; point {i} has {len(kl)} kls and {len(score)} scores.")
        rows.append(np.stack([kl, score]))
    arr = np.stack(rows)
    means = arr.mean(axis=2)
    bad = np.nonzero(~np.isclose(means, points, rtol=1e-4, atol=1e-6).all(axis=1))[0]
    if len(bad):
        i = int(bad[0])
        raise AlignError(f"{what}: point {i} of sweep {name} is {tuple(points[i])} but its samples average to "
                         f"{tuple(means[i])}; list the samples in the same order as the points.")
    return arr


def equal_kl_difference(points_a, points_b, *, per_point_samples=None, n_bootstrap: int = 2000,
                        confidence: float = 0.95, seed: int = 0, n_grid: int = 5, paired: bool | None = None,
                        concave: bool = False) -> dict:
    """Frontier of A minus frontier of B at the same KLs, over the overlap of their KL ranges.

    Comparing two final checkpoints mixes "better at optimising" with "spent more KL"; comparing
    the frontiers at equal KL separates them. The difference is taken at ``n_grid`` KLs (the
    centres of equal cells of the overlap, not its ends, which move in every resample) and at the
    overlap's midpoint, which is the headline ``difference``; ``mean_difference`` averages the grid.
    With no overlap every difference is None and ``reason`` says why.

    ``per_point_samples=(samples_a, samples_b)`` gives, for every sweep point in order, its
    per-prompt ``(kl, score)`` arrays (or ``{"kl": ..., "score": ...}``); then prompts are
    resampled, each point's mean KL and score recomputed, both frontiers rebuilt and the
    differences retaken, which yields intervals. The same resample is used for both sweeps when
    they have the same number of prompts (``paired=None``: the evaluation uses the same held-out
    prompts for every policy). A KL can fall outside a resampled frontier; such resamples are left
    out of that KL's interval and ``undefined_fraction`` counts them (a large share means the
    interval is conditional on the frontier reaching that far). ``concave=True`` compares upper
    concave hulls instead of Pareto frontiers (see ``frontier``): steadier intervals when a sweep
    point sits near the line between its neighbours.
    """
    what = "equal-KL difference"
    n_bootstrap = _check(n_bootstrap, confidence, what)
    if int(n_grid) < 1:
        raise AlignError(f"{what}: n_grid must be at least 1, got {n_grid}.")
    pa, pb = _points(points_a, f"{what} (sweep a)"), _points(points_b, f"{what} (sweep b)")
    fa, fb = _pareto(*pa.T, concave=concave), _pareto(*pb.T, concave=concave)
    range_a, range_b = (float(fa[0][0]), float(fa[0][-1])), (float(fb[0][0]), float(fb[0][-1]))
    lo, hi = max(range_a[0], range_b[0]), min(range_a[1], range_b[1])
    result = {"kind": "equal_kl", "frontier_a": [(float(k), float(s)) for k, s in zip(*fa)],
              "frontier_b": [(float(k), float(s)) for k, s in zip(*fb)], "kl_range_a": range_a, "kl_range_b": range_b,
              "overlap": None, "reason": None, "kl_grid": [], "differences": [], "differences_ci_low": None,
              "differences_ci_high": None, "midpoint_kl": None, "difference": None, "ci_low": None, "ci_high": None,
              "p_value": None, "p_value_method": None, "significant": None, "mean_difference": None,
              "mean_difference_ci_low": None, "mean_difference_ci_high": None, "undefined_fraction": None,
              "paired": None, "n_prompts": None, "concave": concave, "n_bootstrap": n_bootstrap,
              "confidence": confidence}
    if lo > hi:
        result["reason"] = (f"no overlap: sweep a's frontier spans KL {range_a[0]:.3g}–{range_a[1]:.3g}, "
                            f"sweep b's {range_b[0]:.3g}–{range_b[1]:.3g}")
        return result
    grid = lo + (hi - lo) * (np.arange(int(n_grid)) + 0.5) / int(n_grid)
    at = np.append(grid, (lo + hi) / 2)
    gaps = _on_frontier(*fa, at) - _on_frontier(*fb, at)
    result.update(overlap=(lo, hi), kl_grid=grid.tolist(), differences=gaps[:-1].tolist(), midpoint_kl=float(at[-1]),
                  difference=float(gaps[-1]), mean_difference=float(gaps[:-1].mean()))
    if per_point_samples is None:
        return result

    if len(per_point_samples) != 2:
        raise AlignError(f"{what}: per_point_samples must be (samples_a, samples_b).")
    sa = _sweep_samples(per_point_samples[0], pa, "a", what)
    sb = _sweep_samples(per_point_samples[1], pb, "b", what)
    na, nb = sa.shape[2], sb.shape[2]
    paired = na == nb if paired is None else bool(paired)
    if paired and na != nb:
        raise AlignError(f"{what}: paired resampling needs the same prompts in both sweeps, got {na} and {nb}.")
    rng = np.random.default_rng(seed)
    boot = np.empty((n_bootstrap, len(at)))
    for start, rows in _chunks(max(na, nb), n_bootstrap):
        ca = _counts(rng, na, rows)
        cb = ca if paired else _counts(rng, nb, rows)
        ma, mb = np.einsum("rn,pkn->rpk", ca, sa) / na, np.einsum("rn,pkn->rpk", cb, sb) / nb
        for r in range(rows):
            boot[start + r] = (_on_frontier(*_pareto(ma[r, :, 0], ma[r, :, 1], concave), at)
                               - _on_frontier(*_pareto(mb[r, :, 0], mb[r, :, 1], concave), at))
    lows, highs, undefined = [], [], []
    for column in boot.T:
        defined = column[~np.isnan(column)]
        undefined.append(1 - len(defined) / n_bootstrap)
        low, high = _interval(defined, confidence) if len(defined) else (None, None)
        lows.append(low)
        highs.append(high)
    whole = boot[:, :-1][~np.isnan(boot[:, :-1]).any(axis=1)].mean(axis=1)
    mean_low, mean_high = _interval(whole, confidence) if len(whole) else (None, None)
    low, high = lows[-1], highs[-1]
    result.update(differences_ci_low=lows[:-1], differences_ci_high=highs[:-1], ci_low=low, ci_high=high,
                  p_value=_bootstrap_p(boot[:, -1], 0.0) if low is not None else None,
                  p_value_method="bootstrap percentile, two-sided",
                  significant=_excludes(low, high, 0.0) if low is not None else None,
                  mean_difference_ci_low=mean_low, mean_difference_ci_high=mean_high,
                  undefined_fraction=undefined[-1], paired=paired, n_prompts=na if paired else (na, nb))
    return result


# ------------------------------------------------------------------------------ length-controlled wins

def _sigmoid(x):
    return 0.5 * (1 + np.tanh(0.5 * x))  # overflow-free


def _logistic_fit(z: np.ndarray, y: np.ndarray, weights: np.ndarray, l2: float, *, intercept_l2: float = 1e-6,
                  max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Ridge logistic regression y ~ sigmoid(b0 + b1 z), one fit per row of ``weights``, by Newton.

    Fractional y (ties as 0.5) is the binomial quasi-likelihood, still convex. The slope gets the
    ``l2`` penalty (finite when length separates wins from losses); the intercept almost none, so
    with no length signal sigmoid(b0) is the raw win rate. Steps are capped at 5 logits, enough
    to keep Newton from overshooting when a resample is all wins. Returns (rows, 2).
    """
    beta = np.zeros((weights.shape[0], 2))
    for _ in range(max_iter):
        p = _sigmoid(beta[:, :1] + beta[:, 1:] * z)
        resid, curv = weights * (y - p), weights * p * (1 - p)
        g0, g1 = resid.sum(axis=1) - intercept_l2 * beta[:, 0], resid @ z - l2 * beta[:, 1]
        h00, h01, h11 = curv.sum(axis=1) + intercept_l2, curv @ z, curv @ (z * z) + l2
        det = h00 * h11 - h01 ** 2
        step = np.column_stack([(h11 * g0 - h01 * g1) / det, (h00 * g1 - h01 * g0) / det])
        size = np.abs(step).max(axis=1, keepdims=True)
        beta += step * np.minimum(1.0, 5.0 / np.maximum(size, 1e-300))
        if size.max() < tol:
            break
    return beta


def length_controlled_win_rate(outcomes, length_a, length_b, *, n_bootstrap: int = 2000,
                               confidence: float = 0.95, seed: int = 0, l2: float = 0.1) -> dict:
    """A's win rate over B with the length advantage regressed out, as AlpacaEval 2's LC win rate.

    Fits P(A beats B) = sigmoid(b0 + b1 * tanh(Δ / sd(Δ))) with Δ = length_a − length_b per
    prompt (tokens or characters, the same unit for both), outcomes fractional (ties 0.5), and
    reports sigmoid(b0): the predicted win rate had both answers been equally long. Δ is scaled
    by its standard deviation but not centred, since Δ = 0 is the point asked about; the tanh
    (AlpacaEval's choice) bounds the feature so a few very long answers cannot dominate the fit.
    No per-prompt terms are fitted (AlpacaEval has one per instruction; here each prompt is judged
    once). The interval refits on bootstrap resamples of the prompts (sd(Δ) fixed); ``change`` is
    LC minus raw on the same resamples, so its interval says whether length mattered.
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
    scale = float(delta.std()) or 1.0  # all Δ equal: length explains nothing, the slope stays at 0
    z = np.tanh(delta / scale)
    (b0, b1), = _logistic_fit(z, y, np.ones((1, len(y))), l2)
    rng = np.random.default_rng(seed)
    raw, lc = [], []
    for _, rows in _chunks(len(y), n_bootstrap):
        counts = _counts(rng, len(y), rows)
        raw.append(counts @ y / len(y))
        lc.append(_sigmoid(_logistic_fit(z, y, counts, l2)[:, 0]))
    raw, lc = np.concatenate(raw), np.concatenate(lc)
    low, high = _interval(lc, confidence)
    raw_low, raw_high = _interval(raw, confidence)
    change_low, change_high = _interval(lc - raw, confidence)
    return {"kind": "length_controlled", "lc_win_rate": float(_sigmoid(b0)), "ci_low": low, "ci_high": high,
            "p_value": _bootstrap_p(lc, 0.5), "p_value_method": "bootstrap percentile, two-sided",
            "significant": _excludes(low, high, 0.5), "win_rate": float(y.mean()), "raw_ci_low": raw_low,
            "raw_ci_high": raw_high, "change": float(_sigmoid(b0) - y.mean()), "change_ci_low": change_low,
            "change_ci_high": change_high, "intercept": float(b0), "slope": float(b1), "length_scale": scale,
            "mean_length_difference": float(delta.mean()), "length_feature": "tanh(length difference / its std)",
            "l2": l2, "n": len(y), "n_bootstrap": n_bootstrap, "confidence": confidence}


# ------------------------------------------------------------------------------------------- verdict

def _signed(x: float, digits: int) -> str:
    return f"{x:+.{digits}f}".replace("-", "−")


def _plain(x: float, digits: int) -> str:
    return f"{x:.{digits}f}".replace("-", "−")


def _p(result: dict) -> str:
    p, n = result.get("p_value"), result.get("n_bootstrap")
    if p is None:
        return ""
    floor = 1 / (1 + n) if n else 0.0
    return f"p ≤ {floor:.2g}" if p <= floor + 1e-15 else f"p = {p:.2g}"


def _difference_clause(d: dict, a: str, b: str, metric: str, digits: int, kl: float | None) -> str:
    kind = d.get("kind")
    if kind not in ("paired", "hierarchical", "equal_kl"):
        raise AlignError(f"verdict: difference must come from paired_bootstrap, hierarchical_bootstrap or "
                         f"equal_kl_difference, got kind {kind!r}.")
    if kind == "equal_kl" and d["overlap"] is None:
        (a0, a1), (b0, b1) = d["kl_range_a"], d["kl_range_b"]
        return (f"{a}'s and {b}'s reward–KL frontiers do not overlap ({a}: KL {a0:.3g}–{a1:.3g} nats, "
                f"{b}: {b0:.3g}–{b1:.3g}), so they cannot be compared at equal KL")
    estimate = d["mean"] if kind == "hierarchical" else d["difference"]
    low, high = d.get("ci_low"), d.get("ci_high")
    where = d["midpoint_kl"] if kind == "equal_kl" else kl
    prefix = f"at KL ≈ {where:.3g} nats " if where is not None else ""
    over = {"hierarchical": f" over {d.get('n_seeds')} seeds", "paired": f" over {d.get('n')} prompts"}.get(kind, "")
    if kind == "equal_kl" and d.get("n_prompts") is not None:
        n = d["n_prompts"]
        over = f" over {n if isinstance(n, int) else ' and '.join(map(str, n))} prompts"
    leader, trailer = (a, b) if estimate >= 0 else (b, a)
    gap = abs(estimate)
    if low is None:
        return (f"{prefix}{leader} leads {trailer} by {_signed(gap, digits)} {metric}{over} "
                f"(no interval: pass per-prompt samples for one)")
    if estimate < 0:
        low, high = -high, -low
    interval = f"[{_signed(low, digits)}, {_signed(high, digits)}]"
    if d["significant"]:
        p = _p(d)
        return (f"{prefix}{leader} beats {trailer} by {_signed(gap, digits)} {metric} {interval}{over}: "
                f"significant{f' ({p})' if p else ''}")
    return (f"{prefix}{leader} leads {trailer} by {_signed(gap, digits)} {metric} {interval}{over}: "
            "no significant difference")


def _head_to_head_clause(h: dict, a: str, b: str, digits: int) -> str:
    rate = f"{_plain(h['win_rate'], digits)} [{_plain(h['ci_low'], digits)}, {_plain(h['ci_high'], digits)}]"
    if not h["significant"]:
        return f"{a}'s head-to-head win rate over {b} is {rate}, not different from 0.5"
    side = "above" if h["win_rate"] > 0.5 else "below"
    p = _p(h)
    return f"{a}'s head-to-head win rate over {b} is {rate}, significantly {side} 0.5{f' ({p})' if p else ''}"


def _length_clause(lc: dict, label: str, digits: int) -> str:
    raw, controlled = _plain(lc["win_rate"], digits), _plain(lc["lc_win_rate"], digits)
    interval = f"[{_plain(lc['ci_low'], digits)}, {_plain(lc['ci_high'], digits)}]"
    if raw == controlled:
        text = f"{label} stays at {raw} {interval} once length is controlled"
    else:
        move = "falls" if lc["lc_win_rate"] < lc["win_rate"] else "rises"
        text = f"{label} {move} from {raw} to {controlled} {interval} once length is controlled"
    return text if lc["significant"] else text + ", no longer different from 0.5"


def verdict(difference: dict | None = None, *, head_to_head: dict | None = None,
            length_controlled: dict | None = None, a: str = "PPO", b: str = "DPO", metric: str = "gold",
            length_label: str | None = None, kl: float | None = None, digits: int = 2) -> str:
    """One sentence, in words and numbers, from the result dicts of this module.

    ``difference``: a ``paired_bootstrap``, ``hierarchical_bootstrap`` (of per-seed a − b lists) or
    ``equal_kl_difference`` result, read as ``a`` minus ``b`` in ``metric`` units; the equal-KL one
    names its matched KL, the others take ``kl`` when the caller matched KLs itself. A significant
    gap "beats"; a gap whose interval holds 0 only "leads", with "no significant difference".
    ``head_to_head``: a ``head_to_head`` result for ``a`` over ``b``. ``length_controlled``: a
    ``length_controlled_win_rate`` result; ``length_label`` names whose win rate it is (default
    "{a}'s raw win rate over {b}"), since it is often against a third policy such as SFT.
    """
    clauses = []
    if difference is not None:
        clauses.append(_difference_clause(difference, a, b, metric, digits, kl))
    if head_to_head is not None:
        clauses.append(_head_to_head_clause(head_to_head, a, b, digits))
    if length_controlled is not None:
        clauses.append(_length_clause(length_controlled, length_label or f"{a}'s raw win rate over {b}", digits))
    if not clauses:
        raise AlignError("verdict: pass at least one result (difference, head_to_head or length_controlled).")
    sentence = "; ".join(clauses)
    return sentence[0].upper() + sentence[1:] + "."
