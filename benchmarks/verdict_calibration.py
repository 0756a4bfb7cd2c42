"""The verdict's statistics on simulated data with a known truth: false-positive rates and power.

    python benchmarks/verdict_calibration.py            # the current procedures (align.eval.compare_stats)
    python benchmarks/verdict_calibration.py --before   # the same simulations through 6161d35's procedures

Three questions, each with the truth known:
- across seeds: S training seeds x 200 shared prompts, per-prompt noise sd 1, a seed-level spread tau and
  optionally a prompt effect shared by every seed (sd 2); true difference 0 (false positives) or 0.2 (power);
- equal KL: two methods on the same true reward-KL frontier, swept at different densities;
- length control: a policy always ~25 tokens longer than the reference, judged by a judge that likes length.
``--before`` loads ``align/eval/compare_stats.py`` from commit 6161d35 (``git show``), whose across-seeds
procedure was a hierarchical bootstrap, whose equal-KL comparison interpolated concave hulls at a fixed KL,
and whose length control had no anchor rows. Results in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "6161d35"


def load_before():
    source = subprocess.run(["git", "show", f"{BEFORE}:align/eval/compare_stats.py"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout
    module = types.ModuleType("compare_stats_before")
    exec(compile(source, f"{BEFORE}:compare_stats.py", "exec"), module.__dict__)
    return module


def seeds_table(cs, before: bool, runs: int) -> None:
    taus = (0, 0.05, 0.1, 0.2, 0.4)
    print("across seeds: share of runs called significant at nominal 5 %")
    for seeds in (3, 5):
        for prompt_sd in (0.0, 2.0):
            for truth in (0.0, 0.2):
                rng, cells = np.random.default_rng(0), []
                for tau in taus:
                    hits = 0
                    for r in range(runs):
                        table = (truth + rng.normal(size=(seeds, 200)) + rng.normal(0, tau, size=(seeds, 1))
                                 + rng.normal(0, prompt_sd, size=(1, 200)))
                        hits += bool(cs.hierarchical_bootstrap(list(table), n_bootstrap=500, seed=r)["significant"]
                                     if before else cs.across_seeds(table)["significant"])
                    cells.append(hits / runs)
                print(f"  S={seeds} shared prompt sd={prompt_sd} true difference={truth}: "
                      + "  ".join(f"tau={t}: {c:.3f}" for t, c in zip(taus, cells)), flush=True)


def gao(kl):
    d = np.sqrt(kl)
    return d * (0.1 - 0.02 * np.log(d))


def saturating(kl):
    return 0.3 * (1 - np.exp(-kl / 6))


def equal_kl_table(cs, before: bool, runs: int) -> None:
    print("equal KL, both methods on one true frontier: false-positive rate, mean estimate, answered runs")
    sweeps = {"8 vs 2": (np.linspace(3, 16, 8), [5, 14]), "8 vs 3": (np.linspace(3, 16, 8), [5, 9.5, 14]),
              "3 vs 3": ([5.6, 9, 13.1], [9.7, 12, 15.8])}
    for truth in (gao, saturating):
        for label, (kls_a, kls_b) in sweeps.items():
            rng, called, answered, estimates = np.random.default_rng(1), 0, 0, []
            for i in range(runs):
                difficulty = rng.normal(0, 0.3, 200)

                def policy(kl):
                    return {"kl": kl * rng.gamma(2, 0.5, 200), "score": truth(kl) + difficulty + rng.normal(0, 0.15, 200)}

                a, b = [policy(k) for k in kls_a], [policy(k) for k in kls_b]
                reference = difficulty + rng.normal(0, 0.15, 200)
                if before:
                    means = lambda s: [(np.mean(p["kl"]), np.mean(p["score"])) for p in s]  # noqa: E731
                    r = cs.equal_kl_difference(means(a), means(b), per_point_samples=(a, b), n_bootstrap=200, seed=i,
                                               concave=True)
                    decided, estimate = r["significant"] is not None, r["difference"]
                else:
                    r = cs.equal_kl_difference(a, b, reference, n_bootstrap=200, seed=i)
                    decided, estimate = not r["refused"], r["estimate"]
                if decided:
                    answered += 1
                    called += bool(r["significant"])
                    estimates.append(estimate)
            print(f"  {truth.__name__} frontier, {label} points: false positives {called / max(answered, 1):.3f}, "
                  f"mean estimate {np.mean(estimates):+.3f}, answered {answered}/{runs}", flush=True)


def length_table(cs, before: bool, runs: int) -> None:
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    print("length control, policy always ~25 tokens longer: LC mean, sd, share within 0.1 of the truth, coverage")
    cases = {"length-liking judge, no quality edge (truth 0.50)": (0.0, lambda d: 1.5 * np.tanh(d / 20)),
             "length-blind judge, real edge (truth 0.75)": (np.log(3), lambda d: 0 * d),
             "length-liking judge, real edge (truth 0.75)": (np.log(3), lambda d: 1.5 * np.tanh(d / 20)),
             "judge linear in length (not tanh), no edge (truth 0.50)": (0.0, lambda d: d / 15)}
    for name, (quality, judge) in cases.items():
        rng, values, covered, refused = np.random.default_rng(2), [], 0, 0
        truth = sigmoid(quality)
        for i in range(runs):
            ref, ref2 = rng.normal(40, 10, 200), rng.normal(40, 10, 200)
            pol, pol2 = ref + 25 + rng.normal(0, 8, 200), ref2 + 25 + rng.normal(0, 8, 200)
            won = (rng.random(200) < sigmoid(quality + judge(pol - ref))).astype(float)
            anchors = [((rng.random(200) < sigmoid(judge(ref - ref2))).astype(float), ref, ref2),
                       ((rng.random(200) < sigmoid(judge(pol - pol2))).astype(float), pol, pol2)]
            r = (cs.length_controlled_win_rate(won, pol, ref, n_bootstrap=200, seed=i) if before else
                 cs.length_controlled_win_rate(won, pol, ref, anchors=anchors, n_bootstrap=200, seed=i))
            if r["lc_win_rate"] is None:
                refused += 1
                continue
            values.append(r["lc_win_rate"])
            covered += r["ci_low"] <= truth <= r["ci_high"]
        v = np.array(values)
        print(f"  {name}: mean {v.mean():.3f}, sd {v.std():.3f}, within 0.1 {np.mean(np.abs(v - truth) <= 0.1):.2f}, "
              f"interval covers the truth {covered / len(v):.2f}, refused {refused}/{runs}", flush=True)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", action="store_true", help=f"run the simulations through commit {BEFORE}'s procedures")
    p.add_argument("--runs", type=int, default=400, help="simulated experiments per cell (default 400)")
    args = p.parse_args(argv)
    if args.before:
        cs = load_before()
    else:
        sys.path.insert(0, str(ROOT))
        from align.eval import compare_stats as cs
    seeds_table(cs, args.before, args.runs)
    equal_kl_table(cs, args.before, min(args.runs, 200))
    length_table(cs, args.before, min(args.runs, 200))


if __name__ == "__main__":
    main()
