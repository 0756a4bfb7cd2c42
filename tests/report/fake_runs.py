"""Fake-but-realistic run folders: the files the training and evaluate stages write, with made-up numbers."""

from __future__ import annotations

import json
import math
from pathlib import Path

from align.state import MARKER


def write_stage(run: Path, stage: str, kind: str, *, log_history: list | None = None, metrics: dict | None = None,
                finished: str = "2026-11-23T10:00:00") -> Path:
    folder = run / stage
    folder.mkdir(parents=True, exist_ok=True)
    if log_history is not None:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": log_history[-1]["step"], "log_history": log_history}))
    (folder / "metrics.json").write_text(json.dumps(metrics or {}))
    (folder / MARKER).write_text(json.dumps({"stage": stage, "kind": kind, "spec_hash": "0" * 16, "finished_at": finished,
                                             "fingerprint": "f" * 16, "metrics": metrics or {}}))
    return folder


def policy_metrics(path: Path, kind: str, gold: float, rm: float, kl: float, win: float, perplexity=12.3) -> dict:
    n = 200
    wins, ties = int(win * n * 0.8), int(n * 0.2)
    return {"path": str(path), "kind": kind, "scores": {"gold": gold, "rm": rm}, "score_std": {"gold": 0.4, "rm": 0.5},
            "kl": kl, "kl_k3": kl * 0.9, "response_length": 40.0 + 10 * kl, "perplexity": perplexity,
            "bits_per_byte": 1.21 + kl / 10, "win_rate": {"vs": "sft", "judge": "gold", "win_rate": win, "ci_low": win - 0.07,
                                                          "ci_high": win + 0.07, "wins": wins, "ties": ties,
                                                          "losses": n - wins - ties, "n": n}}


def make_run(root: Path, name: str = "quickstart", *, ppo_kl: float = 4.2, dpo_kl: float = 2.9) -> Path:
    """A run folder with sft, reward, ppo, dpo (trainer states) and a finished evaluate stage."""
    run = root / name
    sft = write_stage(run, "sft", "sft", finished="2026-11-23T10:01:00",
                      log_history=[{"step": s, "loss": 3.0 * math.exp(-s / 40) + 1.0, "learning_rate": 1e-3} for s in range(10, 110, 10)])
    write_stage(run, "reward", "reward", finished="2026-11-23T10:02:00",
                log_history=[{"step": s, "loss": 0.7 - s / 400, "accuracy": 0.5 + s / 250, "margin": s / 50} for s in range(10, 60, 10)])
    ppo_log = []
    for s in range(1, 41):
        ppo_log.append({"step": s, "loss/policy_avg": -0.01 * s ** 0.5, "objective/kl": ppo_kl * s / 40,
                        "objective/scores": 0.3 + 0.02 * s, "objective/rlhf_reward": 0.3 + 0.015 * s})
        if s % 10 == 0:
            ppo_log.append({"step": s, "eval/kl": ppo_kl * s / 40, "eval/score": 0.31 + 0.021 * s})
    ppo = write_stage(run, "ppo", "ppo", log_history=ppo_log, finished="2026-11-23T10:03:00")
    dpo = write_stage(run, "dpo", "dpo", finished="2026-11-23T10:04:00",
                      log_history=[{"step": s, "loss": 0.69 - s / 200, "rewards/accuracies": 0.5 + s / 200,
                                    "rewards/margins": s / 40, "rewards/chosen": s / 80} for s in range(5, 55, 5)]
                      + [{"step": 50, "eval_loss": 0.5, "eval_rewards/accuracies": 0.7, "eval_rewards/margins": 1.0}])
    metrics = {
        "reference": "sft", "primary_judge": "gold", "kl_estimator": "k1: mean over the policy's own samples of sum_t "
        "log pi(a_t|s_t) - log pi_ref(a_t|s_t); k3 also given", "n_prompts": 200,
        "decoding": {"max_new_tokens": 64, "temperature": 1.0, "greedy": False},
        "policies": {"sft": policy_metrics(sft, "sft", 0.12, 0.31, 0.0, 0.5),
                     "ppo": policy_metrics(ppo, "ppo", 0.55, 1.15, ppo_kl, 0.71),
                     "dpo": policy_metrics(dpo, "dpo", 0.48, 0.82, dpo_kl, 0.66, perplexity=None)},
        "pairwise": {"judge": "gold", "policies": ["sft", "ppo", "dpo"],
                     "win_rate": [[0.5, 0.29, 0.34], [0.71, 0.5, 0.55], [0.66, 0.45, 0.5]]},
    }
    evaluation = write_stage(run, "eval", "evaluate", metrics=metrics, finished="2026-11-23T10:05:00")
    rows = [{"prompt_id": i, "prompt": f"Write a positive review of the {thing}.", "policy": policy,
             "response": f"The {thing} is {word} | and I {verb} it.", "scores": {"gold": g, "rm": g * 2}}
            for i, thing in enumerate(["lamp", "phone", "blue cat bed", "kettle", "bicycle", "tent", "radio"])
            for policy, word, verb, g in [("sft", "fine", "like", 0.1), ("ppo", "great great great", "love", 0.9),
                                          ("dpo", "really good", "love", 0.7)]]
    (evaluation / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run
