"""report stage: the evaluate stage's numbers, plots and samples as report.md + PNGs + report.html.

Trains nothing; see ``align.report``. PPO's training trajectory is drawn on the panel of the judge
that scores with the reward PPO was trained on, found in the recipe (or given as ``trajectory_judge``).
"""

from __future__ import annotations

REQUIRED = ("eval",)
KEYS = {
    "eval": "${stages.eval}: the evaluate stage to report on",
    "title": "the page title (default: '<run name>: policies compared')",
    "samples": "number of example prompts shown (default 5)",
    "trajectory_judge": "the judge whose scale PPO's eval/score is on (default: found from the PPO stage's reward)",
}
TYPES = {"title": str, "samples": int, "trajectory_judge": str}


def trained_on(recipe, policy_path: str | None) -> str | None:
    """The judge that scores with the reward the stage at ``policy_path`` was trained on, if the recipe says."""
    stage = next((s for s in recipe.stages.values() if str(s.out_dir) == str(policy_path)), None)
    reward = stage.spec.get("reward") if stage else None
    if reward is None:
        return None
    return next((name for name, judge in recipe.judges.items()
                 if str(reward) == name or str(reward) in map(str, judge.values())), None)


def run(ctx) -> dict:
    from align.report import build_report, load_evaluation

    evaluation = load_evaluation(ctx.spec["eval"])  # on every process, so all fail alike instead of one hanging
    if not ctx.is_main_process:
        return {}
    for p in evaluation.policies:
        if p.kind == "ppo":
            p.trained_on = ctx.spec.get("trajectory_judge") or trained_on(ctx.recipe, p.metrics.get("path"))
    return build_report(evaluation, ctx.out_dir, title=ctx.spec.get("title"), samples=int(ctx.spec.get("samples", 5)))
