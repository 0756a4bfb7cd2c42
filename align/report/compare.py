"""Several runs on one frontier, e.g. a sweep of DPO beta and PPO kl_coef: which gets more reward per nat of KL."""

from __future__ import annotations

from pathlib import Path

from align.errors import AlignError
from align.report import plots
from align.report.load import Evaluation, find_eval_stages, load_evaluation
from align.report.page import Heading, Image, Table, Text, write_pages
from align.report.tables import policy_table
from align.report.verdict import across_runs

NOTE = ("Every final policy of every run, measured by its run's evaluate stage (points, with the 95 % interval of "
        "the mean score), and PPO's trajectories during training (lines, from eval/kl and eval/score). "
        "Win rates are against each run's own reference. KL estimator: {estimator}.")


def labelled(run_dirs: list[str], *, rename: bool = True) -> list[tuple[str, Evaluation]]:
    """Load each run's evaluate stage(s) and rename policies ``run/policy`` (``run/stage/policy`` if a run has several)."""
    names = [Path(r).name for r in run_dirs]
    if len(set(names)) < len(names):  # two runs with the same folder name: use the paths as given
        names = [str(Path(r)) for r in run_dirs]
    out = []
    for name, run_dir in zip(names, run_dirs):
        stages = find_eval_stages(run_dir)
        for stage in stages:
            evaluation = load_evaluation(stage)
            prefix = f"{name}/{stage.name}" if len(stages) > 1 else name
            for p in evaluation.policies if rename else ():
                p.name = f"{prefix}/{p.name}"
            out.append((prefix, evaluation))
    return out


def shared_judges(evaluations: list[Evaluation]) -> list[str]:
    """Judges every run scored with, the first run's primary judge first."""
    judges = [j for j in evaluations[0].judges if all(j in e.judges for e in evaluations)]
    if not judges:
        raise AlignError("compare: the runs share no judge (each evaluate stage scored with different judges), so "
                         "their scores are not comparable; evaluate them with a common judge.")
    return judges


def compare_runs(run_dirs: list[str], out_dir: str, *, trained_on: str | None = None,
                 title: str = "Runs compared: reward vs KL") -> Path:
    """Write report.md, report.html and frontier.png into ``out_dir``; returns the HTML page.

    ``trained_on`` names the judge on whose scale PPO's eval/score lies (the reward it trained
    with); without it the trajectories get a panel of their own.
    """
    if not run_dirs:
        raise AlignError("compare: give at least one run folder (e.g. runs/quickstart).")
    pooled = across_runs([(name, e) for name, e in labelled(run_dirs, rename=False)])
    runs = labelled(run_dirs)
    evaluations = [e for _, e in runs]
    judges = shared_judges(evaluations)
    policies = [p for e in evaluations for p in e.policies]
    for p in policies:
        p.trained_on = trained_on
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    headers, rows = policy_table(policies, judges, "reference")
    setup = Table(["run", "evaluate stage", "reference", "primary judge", "prompts", "decoding"],
                  [[name, str(e.eval_dir), e.metrics["reference"], e.metrics["primary_judge"], str(e.metrics.get("n_prompts", "?")),
                    ", ".join(f"{k}={v}" for k, v in (e.metrics.get("decoding") or {}).items())] for name, e in runs])
    estimators = {e.metrics.get("kl_estimator") or "not recorded" for e in evaluations}
    blocks = [Heading("Verdict: PPO vs DPO across runs"), Text(pooled["sentence"]), Table(*pooled["table"])] \
        if pooled else []
    blocks += [Heading("Frontier"), Image(plots.frontier(policies, judges, out / "frontier.png", title), "reward vs KL frontier"),
              Text(NOTE.format(estimator=" / ".join(sorted(estimators)))),
              Heading("Policies"), Table(headers, rows), Heading("Runs"), setup]
    if len({(e.metrics.get("n_prompts"), str(e.metrics.get("decoding"))) for e in evaluations}) > 1:
        blocks.append(Text("Warning: the runs were evaluated on different prompt counts or decoding settings; "
                           "their numbers are not strictly comparable."))
    return write_pages(title, blocks, out)[1]
