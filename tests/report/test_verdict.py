"""The verdict's words: what a single run may claim, refusals, every length-controlled result, the seed count."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from align.report.load import Evaluation, Policy
from align.report.verdict import across_runs, decide

N = 200


def evaluation(seed: int, policies: dict[str, tuple[str, float, float, float]]) -> Evaluation:
    """policies: name -> (kind, KL, mean gold score, mean length in tokens); the reference is "sft"."""
    rng = np.random.default_rng(seed)
    difficulty = rng.normal(0, 0.3, N)
    samples, metrics_policies, lengths, scores = [], {}, {}, {}
    for name, (kind, kl, score, length) in policies.items():
        scores[name] = score + difficulty + rng.normal(0, 0.15, N)
        lengths[name] = np.maximum(1, rng.normal(length, 8, N)).round()
        kls = kl * rng.gamma(2, 0.5, N) if kl else np.zeros(N)
        samples += [{"policy": name, "prompt_id": i, "scores": {"gold": float(scores[name][i])}, "kl": float(kls[i]),
                     "response_tokens": int(lengths[name][i])} for i in range(N)]
        second = np.maximum(1, rng.normal(length, 8, N)).round()
        metrics_policies[name] = {"kind": kind, "kl": float(kls.mean()), "scores": {"gold": float(scores[name].mean())},
                                  "length_anchor": {"outcomes": (rng.random(N) < 0.5).astype(float).tolist(),
                                                    "tokens_first": lengths[name].tolist(), "tokens_second": second.tolist()}}
    names = list(policies)
    outcomes = {f"{a} vs {b}": (scores[a] > scores[b]).astype(float).tolist()
                for i, a in enumerate(names) for b in names[i + 1:]}
    metrics = {"reference": "sft", "primary_judge": "gold", "policies": metrics_policies,
               "pairwise": {"judge": "gold", "policies": names, "outcomes": outcomes}}
    return Evaluation(Path("eval"), metrics, [Policy(n, m["kind"], m) for n, m in metrics_policies.items()], {}, samples)


def test_a_single_run_compares_checkpoints_and_reports_every_length_controlled_result():
    e = evaluation(0, {"sft": ("sft", 0, 0.0, 40), "ppo": ("ppo", 7.8, 0.20, 45), "dpo": ("dpo", 14.0, 0.19, 55)})
    d = decide(e, n_bootstrap=300)
    text = d["sentence"]
    assert "compares two checkpoints, not the methods" in text
    kl_ppo, kl_dpo = e.metrics["policies"]["ppo"]["kl"], e.metrics["policies"]["dpo"]["kl"]
    assert f"PPO checkpoint (KL {kl_ppo:.1f}) minus the DPO checkpoint (KL {kl_dpo:.1f})" in text  # each its own KL
    assert "KL ≈" not in text  # no KL that neither policy has
    assert "ppo's win rate over sft" in text and "dpo's win rate over sft" in text  # both, not the larger change
    assert len(d["tests"]) == 4 and "4 tests decide this sentence, Holm-corrected" in text  # paired, head to head, 2 LC
    assert [t["name"] for t in d["tests"]][0] == "PPO − DPO, paired"
    for t in d["tests"]:  # one decision rule: each p and its interval agree
        r = t["result"]
        null = 0.0 if r["kind"] == "paired" else 0.5
        assert r["significant"] == (not r["ci_low"] <= null <= r["ci_high"])
        assert t["p_holm"] >= r["p_value"]


def test_a_one_point_frontier_is_refused_not_approximated():
    e = evaluation(1, {"sft": ("sft", 0, 0.0, 40), "ppo-a": ("ppo", 5.6, 0.19, 45), "ppo-b": ("ppo", 13.1, 0.25, 45),
                       "dpo": ("dpo", 9.7, 0.21, 55)})
    d = decide(e, n_bootstrap=200)
    assert d["equal_kl"]["refused"] and "1 point" in d["equal_kl"]["refused"]
    assert "no equal-KL comparison: sweep b has 1 point" in d["sentence"]
    assert d["tests"][0]["name"] == "PPO − DPO, paired"


def test_across_seeds_treats_the_seed_as_the_unit_and_says_what_three_seeds_can_show():
    runs = [(f"seed-{s}", evaluation(s, {"sft": ("sft", 0, 0.0, 40), "ppo": ("ppo", 8.0, 0.20 + 0.05 * s, 45),
                                          "dpo": ("dpo", 20.0, 0.19, 55)})) for s in range(3)]
    pooled = across_runs(runs, n_bootstrap=200)
    r = pooled["across_seeds"]
    assert r["n_seeds"] == 3 and r["shared_prompts"] and r["df"] > 0
    assert pooled["sentence"].startswith("Over 3 seeds, PPO − DPO = ")
    assert "With 3 seeds the test has few degrees of freedom" in pooled["sentence"]
    assert "p = 0.25" in pooled["sentence"]  # an exact sign-flip test over 3 seeds cannot go lower
