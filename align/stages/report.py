"""report stage: the evaluate stage's numbers, plots and samples as report.md + PNGs + report.html.

Trains nothing; see ``align.report``. PPO's training trajectory is drawn on the panel of the judge
that scores with the reward PPO was trained on, found in the recipe (or given as ``trajectory_judge``).
"""

from __future__ import annotations

from pathlib import Path

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
    result = build_report(evaluation, ctx.out_dir, title=ctx.spec.get("title"), samples=int(ctx.spec.get("samples", 5)),
                          shipping=shipping_lines(ctx))
    if ctx.tracking:
        ctx.tracking.log_summary(ctx.name, {}, images={f"{ctx.name}/{Path(f).stem}": f for f in result["figures"]})
    return result


def shipping_lines(ctx) -> list[str]:
    """Where this run was tracked and where its models were exported (finished export stages of the recipe)."""
    import json

    tracking = ctx.tracking
    lines = [f"Tracking: {tracking.describe()}." if tracking else
             "Tracking: off (add `tracking: {report_to: [trackio, tensorboard]}` to the recipe to log every stage, the "
             "evaluation table and these figures; `pip install -e \".[trackers]\"`)."]
    for stage in ctx.recipe.stages.values():
        metrics_file = stage.out_dir / "metrics.json"
        exported = json.loads(metrics_file.read_text()).get("export_dir") if metrics_file.is_file() else None
        if exported:
            lines.append(f"Exported model ({stage.name}): `{exported}` (loads with `AutoModelForCausalLM.from_pretrained`; "
                         f"model card in its README.md).")
    if len(lines) == 1:
        lines.append("Export: `align export <run>/<stage> OUT --merge` writes one plain model folder with its card.")
    return lines
