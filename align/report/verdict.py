"""RLHF vs DPO, decided: the paired difference, the head-to-head, equal-KL frontiers and length control,
computed from an evaluate stage's per-prompt records and turned into a sentence and a table.

Every number compares the two methods on the same prompts under the same judge (the evaluate stage's
primary judge). With several PPO and DPO policies (a sweep) the headline pair is the one closest in KL,
and the frontier comparison uses all of them.
"""

from __future__ import annotations

import statistics

from align.eval.compare_stats import (equal_kl_difference, frontier, head_to_head, length_controlled_win_rate,
                                      paired_bootstrap, verdict)

METHODS = {"ppo": "PPO", "dpo": "DPO"}


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


def method_points(policies, samples, judge) -> dict[str, list[tuple[str, float, float]]]:
    """``{kind: [(policy, mean KL, mean score), ...]}`` for the PPO and DPO policies."""
    points: dict[str, list] = {}
    for p in policies:
        if p.kind in METHODS and p.metrics.get("kl") is not None:
            points.setdefault(p.kind, []).append((p.name, p.metrics["kl"], p.metrics["scores"][judge]))
    return points


def decide(evaluation, *, n_bootstrap: int = 2000, seed: int = 0) -> dict | None:
    """The comparison of PPO with DPO in one evaluate stage; None without one policy of each."""
    m, samples = evaluation.metrics, evaluation.samples
    judge, reference = m["primary_judge"], m["reference"]
    points = method_points(evaluation.policies, samples, judge)
    if "ppo" not in points or "dpo" not in points or not samples:
        return None
    # the headline pair: closest in KL
    ppo, dpo = min(((a, b) for a in points["ppo"] for b in points["dpo"]), key=lambda ab: abs(ab[0][1] - ab[1][1]))
    difference = paired_bootstrap(per_prompt(samples, ppo[0], "", judge), per_prompt(samples, dpo[0], "", judge),
                                  n_bootstrap=n_bootstrap, seed=seed)
    result = {"judge": judge, "reference": reference, "ppo": ppo[0], "dpo": dpo[0], "kl": statistics.fmean([ppo[1], dpo[1]]),
              "kl_ppo": ppo[1], "kl_dpo": dpo[1], "paired": difference}
    versus = outcomes_between(m, ppo[0], dpo[0])
    if versus:
        result["head_to_head"] = head_to_head(versus, n_bootstrap=n_bootstrap, seed=seed)
    lengths = {name: per_prompt(samples, name, "response_tokens") for name in (ppo[0], dpo[0], reference)}
    for name in (ppo[0], dpo[0]):
        won = outcomes_between(m, name, reference)
        if won and len(won) == len(lengths[name]) == len(lengths[reference]):
            result[f"length_controlled_{name}"] = length_controlled_win_rate(
                won, lengths[name], lengths[reference], n_bootstrap=n_bootstrap, seed=seed)
    if len(points["ppo"]) > 1 and len(points["dpo"]) > 1:
        sampled = tuple([{"kl": per_prompt(samples, name, "kl"), "score": per_prompt(samples, name, "", judge)}
                         for name, _, _ in points[kind]] for kind in ("ppo", "dpo"))
        result["equal_kl"] = equal_kl_difference([(kl, s) for _, kl, s in points["ppo"]],
                                                 [(kl, s) for _, kl, s in points["dpo"]], per_point_samples=sampled,
                                                 n_bootstrap=n_bootstrap, seed=seed, concave=True)
        result["frontiers"] = {kind: frontier([(kl, s) for _, kl, s in points[kind]], concave=True)
                               for kind in ("ppo", "dpo")}
    result["sentence"] = sentence(result)
    return result


def sentence(result: dict) -> str:
    """The verdict in words and numbers: at equal KL when the frontiers overlap, else the closest pair."""
    equal_kl = result.get("equal_kl")
    lc_key = max((k for k in result if k.startswith("length_controlled_")),
                 key=lambda k: abs(result[k]["change"]), default=None)
    lc = result.get(lc_key) if lc_key else None
    lc_label = f"{lc_key[len('length_controlled_'):]}'s raw win rate vs {result['reference']}" if lc_key else None
    if equal_kl and equal_kl.get("overlap"):
        main = verdict(equal_kl, head_to_head=result.get("head_to_head"), length_controlled=lc, metric=result["judge"],
                       length_label=lc_label)
    else:
        main = verdict(result["paired"], head_to_head=result.get("head_to_head"), length_controlled=lc,
                       metric=result["judge"], length_label=lc_label, kl=result["kl"])
    return (f"{main} (PPO policy {result['ppo']} at KL {result['kl_ppo']:.1f}, DPO policy {result['dpo']} at KL "
            f"{result['kl_dpo']:.1f}; {result['paired']['n']} prompts, {result['judge']} judge)")


def table(result: dict) -> tuple[list[str], list[list[str]]]:
    """The numbers behind the sentence, one row each."""
    def interval(value, low, high, digits=3):
        return f"{value:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"

    p = result["paired"]
    rows = [["PPO − DPO, mean score (paired bootstrap)", interval(p["difference"], p["ci_low"], p["ci_high"]),
             f"{p['p_value']:.3f}"]]
    if "head_to_head" in result:
        h = result["head_to_head"]
        rows.append(["PPO beats DPO head to head (win rate)", f"{h['win_rate']:.3f} [{h['ci_low']:.3f}, {h['ci_high']:.3f}]",
                     f"{h['p_value']:.3f}"])
    for key in (k for k in result if k.startswith("length_controlled_")):
        lc = result[key]
        rows.append([f"{key[len('length_controlled_'):]} win rate vs reference: raw → length-controlled",
                     f"{lc['win_rate']:.3f} → {lc['lc_win_rate']:.3f} [{lc['ci_low']:.3f}, {lc['ci_high']:.3f}]",
                     f"{lc['p_value']:.3f}"])
    e = result.get("equal_kl")
    if e and e.get("overlap") and e.get("difference") is not None:
        rows.append([f"PPO − DPO at equal KL ≈ {e['midpoint_kl']:.1f} (concave frontiers)",
                     interval(e["difference"], e["ci_low"], e["ci_high"]), f"{e['p_value']:.3f}"])
    elif e:
        rows.append(["PPO − DPO at equal KL", e.get("reason") or "frontiers do not overlap", "—"])
    return ["comparison", "estimate [95 % CI]", "p"], rows


def across_runs(evaluations: list[tuple[str, object]], *, n_bootstrap: int = 2000, seed: int = 0) -> dict | None:
    """PPO vs DPO over several runs of one recipe (seeds): each run's headline pair, and the mean paired
    difference with a hierarchical bootstrap (runs, then prompts within a run), so one lucky seed cannot decide."""
    from align.eval.compare_stats import hierarchical_bootstrap

    decided = [(name, e, decide(e, n_bootstrap=n_bootstrap, seed=seed)) for name, e in evaluations]
    decided = [(name, e, d) for name, e, d in decided if d]
    if len(decided) < 2:
        return None
    judge = decided[0][2]["judge"]
    differences = [[a - b for a, b in zip(per_prompt(e.samples, d["ppo"], "", judge),
                                          per_prompt(e.samples, d["dpo"], "", judge))] for _, e, d in decided]
    pooled = hierarchical_bootstrap(differences, n_bootstrap=n_bootstrap, seed=seed)
    kl_ppo = statistics.fmean(d["kl_ppo"] for _, _, d in decided)
    kl_dpo = statistics.fmean(d["kl_dpo"] for _, _, d in decided)
    rows = [[name, d["ppo"], f"{d['kl_ppo']:.2f}", d["dpo"], f"{d['kl_dpo']:.2f}",
             f"{d['paired']['difference']:+.3f} [{d['paired']['ci_low']:+.3f}, {d['paired']['ci_high']:+.3f}]",
             f"{d['head_to_head']['win_rate']:.2f}" if "head_to_head" in d else "—"] for name, _, d in decided]
    where = f"PPO at a mean KL of {kl_ppo:.1f} nats, DPO at {kl_dpo:.1f}"
    return {"judge": judge, "hierarchical": pooled, "kl_ppo": kl_ppo, "kl_dpo": kl_dpo,
            "sentence": verdict(pooled, metric=judge) + f" ({where}; {len(decided)} runs, {judge} judge; per run below)",
            "table": (["run", "PPO policy", "KL", "DPO policy", "KL", "PPO − DPO [95 % CI]", "PPO beats DPO"], rows)}
