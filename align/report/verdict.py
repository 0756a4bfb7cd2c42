"""RLHF vs DPO, decided: the numbers come from ``align.eval.compare_stats``; this module picks the
comparisons, corrects for their number, and writes the sentences.

Wording rules, so a sentence never claims more than its test:
- one run per method compares two **checkpoints**, and says so; a claim about the **methods** needs
  seeds (``across_runs``), where the seed is the unit of inference;
- a result is "significant" only by its own p-value, which agrees with its interval; when several
  tests decide one sentence, Holm's correction over them is applied and the count stated;
- KLs are named as they are ("at KL 7.8 vs 14.0"), never averaged into a KL neither policy has;
- every length-controlled result is reported, not the one that moved most; an interval wider than
  half the scale is called uninformative; a refused comparison says why.
"""

from __future__ import annotations

import numpy as np

from align.eval.compare_stats import (across_seeds, equal_kl_difference, frontier_curve, head_to_head, holm,
                                      length_controlled_win_rate, paired_difference)

METHODS = {"ppo": "PPO", "dpo": "DPO"}
UNINFORMATIVE_WIDTH = 0.5  # a win-rate interval at least this wide says little either way
ALPHA = 0.05


def per_prompt(samples: list[dict], policy: str, key: str, judge: str | None = None) -> list[float]:
    rows = sorted((r for r in samples if r["policy"] == policy), key=lambda r: r["prompt_id"])
    return [float(r["scores"][judge]) if judge else float(r.get(key) or 0.0) for r in rows]


def outcomes_between(metrics: dict, a: str, b: str) -> list[float] | None:
    """Per-prompt outcomes of a vs b (1 = a better) from the evaluate stage, whichever order it stored."""
    stored = (metrics.get("pairwise") or {}).get("outcomes") or {}
    if f"{a} vs {b}" in stored:
        return stored[f"{a} vs {b}"]
    if f"{b} vs {a}" in stored:
        return [1.0 - x for x in stored[f"{b} vs {a}"]]
    return None


def method_points(policies, judge) -> dict[str, list[tuple[str, float, float]]]:
    """``{kind: [(policy, mean KL, mean score), ...]}`` for the PPO and DPO policies."""
    points: dict[str, list] = {}
    for p in policies:
        if p.kind in METHODS and p.metrics.get("kl") is not None:
            points.setdefault(p.kind, []).append((p.name, p.metrics["kl"], p.metrics["scores"][judge]))
    return points


def anchors_of(metrics: dict, names: list[str]) -> list[tuple]:
    """The evaluate stage's second-sample judgements of these policies (see ``stages/evaluate.length_anchor``)."""
    out = []
    for name in names:
        anchor = (metrics["policies"].get(name) or {}).get("length_anchor")
        if anchor:
            out.append((anchor["outcomes"], anchor["tokens_first"], anchor["tokens_second"]))
    return out


def decide(evaluation, *, n_bootstrap: int = 2000, seed: int = 0) -> dict | None:
    """The comparison of PPO's and DPO's checkpoints in one evaluate stage; None without one policy of each."""
    m, samples = evaluation.metrics, evaluation.samples
    judge, reference = m["primary_judge"], m["reference"]
    points = method_points(evaluation.policies, judge)
    if "ppo" not in points or "dpo" not in points or not samples:
        return None
    ppo, dpo = min(((a, b) for a in points["ppo"] for b in points["dpo"]), key=lambda ab: abs(ab[0][1] - ab[1][1]))
    scores = {name: per_prompt(samples, name, "", judge) for name in {ppo[0], dpo[0], reference}}
    result = {"judge": judge, "reference": reference, "ppo": ppo[0], "dpo": dpo[0], "kl_ppo": ppo[1], "kl_dpo": dpo[1],
              "n_prompts": len(scores[ppo[0]]),
              "paired": paired_difference(scores[ppo[0]], scores[dpo[0]], n_flips=n_bootstrap, seed=seed)}
    versus = outcomes_between(m, ppo[0], dpo[0])
    if versus:
        result["head_to_head"] = head_to_head(versus, n_bootstrap=n_bootstrap, seed=seed)
    lengths = {name: per_prompt(samples, name, "response_tokens") for name in (ppo[0], dpo[0], reference)}
    result["length_controlled"] = {}
    for name in (ppo[0], dpo[0]):
        won = outcomes_between(m, name, reference)
        if won and len(won) == len(lengths[name]) == len(lengths[reference]):
            result["length_controlled"][name] = length_controlled_win_rate(
                won, lengths[name], lengths[reference], anchors=anchors_of(m, [name, reference]),
                length_unit="tokens", n_bootstrap=n_bootstrap, seed=seed)
    if len(points["ppo"]) + len(points["dpo"]) > 2:  # a sweep: compare the methods' frontiers
        sampled = [[{"kl": per_prompt(samples, name, "kl"), "score": per_prompt(samples, name, "", judge)}
                    for name, _, _ in points[kind]] for kind in ("ppo", "dpo")]
        equal = equal_kl_difference(*sampled, scores[reference], n_bootstrap=n_bootstrap, seed=seed)
        result["equal_kl"] = equal
        result["frontiers"] = frontier_lines(equal, float(np.mean(scores[reference])))
    result["tests"] = family(result)
    result["sentence"] = sentence(result)
    return result


def frontier_lines(equal: dict, reference_score: float) -> dict[str, list[tuple[float, float]]]:
    """Each method's fitted frontier over its own sweep's KL range, for the reward-vs-KL plot."""
    lines = {}
    for kind, fit, points in (("ppo", equal.get("fit_a"), equal["points_a"]), ("dpo", equal.get("fit_b"), equal["points_b"])):
        if fit and len(points) > 1:
            kls = np.linspace(min(k for k, _ in points), max(k for k, _ in points), 40)
            lines[kind] = list(zip(kls.tolist(), frontier_curve(*fit, reference_score, kls).tolist()))
    return lines


def family(result: dict) -> list[dict]:
    """The tests that decide the verdict sentence, with Holm-adjusted p-values over all of them."""
    tests = []
    equal = result.get("equal_kl")
    if equal and not equal.get("refused"):
        tests.append({"name": "PPO − DPO at equal KL", "result": equal})
    else:
        tests.append({"name": "PPO − DPO, paired", "result": result["paired"]})
    if "head_to_head" in result:
        tests.append({"name": "PPO over DPO, head to head", "result": result["head_to_head"]})
    for name, lc in result["length_controlled"].items():
        if not lc.get("refused"):
            tests.append({"name": f"{name} vs {result['reference']}, length-controlled", "result": lc})
    for test, adjusted in zip(tests, holm([t["result"]["p_value"] for t in tests])):
        test["p_holm"] = adjusted
        test["significant"] = adjusted < ALPHA
    return tests


# ------------------------------------------------------------------------------------------- words

def _num(x: float, digits: int = 2, sign: bool = False) -> str:
    return (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}").replace("-", "−")


def _p(p: float, name: str = "p") -> str:
    return f"{name} < 0.001" if p < 0.001 else f"{name} = {p:.2g}"


def _decision(test: dict, n_tests: int) -> str:
    """How the test came out, with the correction named when it changes the answer."""
    r = test["result"]
    if n_tests == 1:
        return f"{_p(r['p_value'])}: {'significant' if r['significant'] else 'no difference shown'}"
    if test["significant"]:
        return f"{_p(r['p_value'])}, {_p(test['p_holm'], 'Holm-adjusted p')} over {n_tests} tests: significant"
    if r["significant"]:
        return (f"{_p(r['p_value'])}, but {_p(test['p_holm'], 'Holm-adjusted p')} over {n_tests} tests: "
                "not significant after correction")
    return f"{_p(r['p_value'])}: no difference shown"


def _win_rate_interval(r: dict, value_key: str = "win_rate") -> str:
    text = f"{_num(r[value_key])} [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
    return text + (" (uninformative)" if r["ci_high"] - r["ci_low"] >= UNINFORMATIVE_WIDTH else "")


def _difference_clause(test: dict, result: dict, n_tests: int) -> str:
    r, metric = test["result"], result["judge"]
    if r["kind"] == "equal_kl":
        low, high = r["overlap"]
        (a0, a1), (b0, b1) = r["kl_range_a"], r["kl_range_b"]
        head = (f"Along the reward–KL frontier (fitted to each method's sweep, compared over KL {low:.1f}–{high:.1f} "
                f"nats, where both reach; PPO's sweep covers {a0:.1f}–{a1:.1f}, DPO's {b0:.1f}–{b1:.1f}), PPO − DPO = ")
        estimate = r["estimate"]
    else:
        head = (f"In this run, the PPO checkpoint (KL {result['kl_ppo']:.1f}) minus the DPO checkpoint "
                f"(KL {result['kl_dpo']:.1f}) = ")
        estimate = r["difference"]
    return (f"{head}{_num(estimate, 3, True)} {metric} [{_num(r['ci_low'], 3, True)}, {_num(r['ci_high'], 3, True)}] "
            f"({_decision(test, n_tests)})")


def sentence(result: dict) -> str:
    """The verdict of one run, in words and numbers, every clause from ``result['tests']`` or a refusal."""
    tests, clauses = result["tests"], []
    n = len(tests)
    clauses.append(_difference_clause(tests[0], result, n))
    equal = result.get("equal_kl")
    if equal and equal.get("refused"):
        clauses.append(f"no equal-KL comparison: {equal['refused']}")
    for test in tests[1:]:
        r = test["result"]
        if r["kind"] == "head_to_head":
            clauses.append(f"PPO's head-to-head win rate over DPO is {_win_rate_interval(r)} ({_decision(test, n)})")
        else:
            name = test["name"].split(" vs ")[0]
            warn = "; AlpacaEval's extreme-change warning: the fit may have failed" if r.get("extreme") else ""
            clauses.append(f"{name}'s win rate over {result['reference']} is {_num(r['win_rate'])} raw and "
                           f"{_win_rate_interval(r, 'lc_win_rate')} at equal length in {r['length_unit']} "
                           f"({_decision(test, n)}{warn})")
    for name, lc in result["length_controlled"].items():
        if lc.get("refused"):
            clauses.append(f"no length-controlled win rate for {name}: {lc['refused']}")
    scope = ("One training run per method: this compares two checkpoints, not the methods; "
             "run several seeds (recipes/seeds.yaml) to compare the methods.")
    return "; ".join(clauses) + (f". {scope} ({result['n_prompts']} prompts, {result['judge']} judge; {n} "
                                 f"test{'s' * (n > 1)} decide this sentence, Holm-corrected.)")


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    """The numbers behind the sentence, one row per test, with raw and Holm-adjusted p-values."""
    def interval(value, low, high, digits=3, sign=True):
        return f"{_num(value, digits, sign)} [{_num(low, digits, sign)}, {_num(high, digits, sign)}]"

    rows = []
    for test in result["tests"]:
        r = test["result"]
        if r["kind"] == "equal_kl":
            estimate = interval(r["estimate"], r["ci_low"], r["ci_high"])
        elif r["kind"] == "paired":
            estimate = interval(r["difference"], r["ci_low"], r["ci_high"])
        elif r["kind"] == "head_to_head":
            estimate = interval(r["win_rate"], r["ci_low"], r["ci_high"], sign=False)
        else:
            estimate = f"{_num(r['win_rate'], 3)} → " + interval(r["lc_win_rate"], r["ci_low"], r["ci_high"], sign=False)
        rows.append([test["name"], estimate, f"{r['p_value']:.3f}", f"{test['p_holm']:.3f}",
                     "yes" if test["significant"] else "no"])
    if result["tests"][0]["result"]["kind"] == "equal_kl":
        p = result["paired"]
        rows.append(["PPO − DPO, paired (closest-KL checkpoints; not in the family)",
                     interval(p["difference"], p["ci_low"], p["ci_high"]), f"{p['p_value']:.3f}", "—", "—"])
    refused = [("PPO − DPO at equal KL", result.get("equal_kl"))] + \
        [(f"{name} vs {result['reference']}, length-controlled", lc) for name, lc in result["length_controlled"].items()]
    rows += [[name, f"refused: {r['refused']}", "—", "—", "—"] for name, r in refused if r and r.get("refused")]
    return ["comparison", "estimate [95 % CI]", "p", f"p, Holm ({len(result['tests'])} tests)", "significant"], rows


def across_runs(evaluations: list[tuple[str, object]], *, n_bootstrap: int = 2000, seed: int = 0) -> dict | None:
    """PPO vs DPO over several runs of one recipe (seeds): the seed is the unit of inference.

    Each run contributes its headline pair's per-prompt differences; ``across_seeds`` crosses seeds
    with the shared prompts (a t test whose degrees of freedom come from the seeds)."""
    decided = [(name, e, decide(e, n_bootstrap=n_bootstrap, seed=seed)) for name, e in evaluations]
    decided = [(name, e, d) for name, e, d in decided if d]
    if len(decided) < 2:
        return None
    judge = decided[0][2]["judge"]
    differences = [[a - b for a, b in zip(per_prompt(e.samples, d["ppo"], "", judge),
                                          per_prompt(e.samples, d["dpo"], "", judge))] for _, e, d in decided]
    pooled = across_seeds(differences)
    rows = [[name, d["ppo"], f"{d['kl_ppo']:.2f}", d["dpo"], f"{d['kl_dpo']:.2f}",
             f"{d['paired']['difference']:+.3f} [{d['paired']['ci_low']:+.3f}, {d['paired']['ci_high']:+.3f}]",
             f"{d['head_to_head']['win_rate']:.2f}" if "head_to_head" in d else "—"] for name, _, d in decided]
    kl_ppo = [d["kl_ppo"] for _, _, d in decided]
    kl_dpo = [d["kl_dpo"] for _, _, d in decided]
    return {"judge": judge, "across_seeds": pooled, "kl_ppo": kl_ppo, "kl_dpo": kl_dpo,
            "sentence": seeds_sentence(pooled, judge, kl_ppo, kl_dpo),
            "table": (["run", "PPO policy", "KL", "DPO policy", "KL", "PPO − DPO [95 % CI] (this run's checkpoints)",
                       "PPO beats DPO"], rows)}


def seeds_sentence(r: dict, judge: str, kl_ppo: list[float], kl_dpo: list[float]) -> str:
    s = r["n_seeds"]
    where = (f"PPO at KL {min(kl_ppo):.1f}–{max(kl_ppo):.1f} nats across seeds, DPO at "
             f"{min(kl_dpo):.1f}–{max(kl_dpo):.1f}")
    verdict = "significant" if r["significant"] else "no difference shown"
    text = (f"Over {s} seeds, PPO − DPO = {_num(r['estimate'], 3, True)} {judge} [{_num(r['ci_low'], 3, True)}, "
            f"{_num(r['ci_high'], 3, True)}] ({_p(r['p_value'])}, t test with the seed as the unit"
            f"{', crossed with the shared prompts' if r['shared_prompts'] else ''}, {r['df']:.1f} df): {verdict} ({where}).")
    if s < 5:
        text += (f" With {s} seeds the test has few degrees of freedom (t = {r['t_critical']:.2f} at 95 %): a difference is "
                 f"called only if it exceeds {_num(r['min_detectable'], 3)} at this spread of the seed means, and the "
                 f"seeds' own sign pattern cannot be significant (an exact sign-flip test over {s} seeds cannot go "
                 f"below p = {2 / 2 ** s:.2g}); 5 or more seeds are needed to detect a difference of the size seeds vary by.")
    return text
