"""Read an evaluate stage and the training logs of the stages around it, failing with a clear error.

Only reads files; everything else in ``align.report`` works on the dataclasses built here, so it
can be tested on hand-written folders.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from align.errors import AlignError
from align.state import MARKER, read_marker

REQUIRED_KEYS = ("reference", "primary_judge", "policies")
POLICY_KEYS = ("scores", "kl", "win_rate")
WIN_RATE_KEYS = ("win_rate", "ci_low", "ci_high")


@dataclass
class Policy:
    """One evaluated policy: the evaluate stage's numbers plus, for PPO, its training trajectory."""

    name: str  # label in tables and plots: "ppo", or "run/ppo" when runs are compared
    kind: str | None  # stage kind that produced it: sft, ppo, dpo, grpo, rloo
    metrics: dict  # the evaluate stage's entry for this policy
    trajectory: list[tuple[int, float, float]] = field(default_factory=list)  # (step, eval/kl, eval/score)
    trained_on: str | None = None  # the judge whose scale eval/score is on (the reward PPO maximised)
    n: int | None = None  # prompts evaluated, for the interval around the mean score
    is_reference: bool = False  # the policy the others are compared with (KL and win rate)


@dataclass
class Evaluation:
    eval_dir: Path
    metrics: dict  # metrics.json as written by the evaluate stage
    policies: list[Policy]
    curves: dict[str, tuple[str | None, list[dict]]]  # stage name -> (kind, trainer_state log_history)
    samples: list[dict]  # samples.jsonl rows

    @property
    def judges(self) -> list[str]:
        """Judge names, the primary one first."""
        primary = self.metrics["primary_judge"]
        others = {j for p in self.policies for j in (p.metrics.get("scores") or {})} - {primary}
        return [primary, *sorted(others)]


def check_metrics(metrics, where: str) -> None:
    """Name the first missing key, so a hand-edited or truncated metrics.json is easy to fix."""

    def require(mapping, keys, prefix):
        if not isinstance(mapping, dict):
            raise AlignError(f"{where}: {prefix.rstrip('.') or 'the file'} should be a JSON object, got {type(mapping).__name__}.")
        missing = [k for k in keys if k not in mapping]
        if missing:
            raise AlignError(f"{where}: missing key '{prefix}{missing[0]}'. It is not a metrics.json written by the "
                             f"evaluate stage of this version of align; re-run the evaluate stage to rewrite it.")

    require(metrics, REQUIRED_KEYS, "")
    require(metrics["policies"], [metrics["reference"]], "policies.")
    for name, policy in metrics["policies"].items():
        require(policy, POLICY_KEYS, f"policies.{name}.")
        if policy["win_rate"] is not None:
            require(policy["win_rate"], WIN_RATE_KEYS, f"policies.{name}.win_rate.")


def require_finished(eval_dir: Path) -> None:
    stage = eval_dir.name
    if not eval_dir.is_dir():
        raise AlignError(f"report: there is no evaluate stage at {eval_dir}. Run the evaluate stage '{stage}' first "
                         f"(align run RECIPE --only {stage}), or point the report at the right folder.")
    if read_marker(eval_dir) is None:
        raise AlignError(f"report: the evaluate stage at {eval_dir} has not finished (no {MARKER}). Run the "
                         f"evaluate stage '{stage}' to completion first (align run RECIPE --only {stage}).")


def load_evaluation(eval_dir: str | Path) -> Evaluation:
    """The evaluate stage at ``eval_dir``, its samples, and the training logs of its run's stages."""
    eval_dir = Path(eval_dir)
    require_finished(eval_dir)
    where = str(eval_dir / "metrics.json")
    try:
        metrics = json.loads((eval_dir / "metrics.json").read_text())
    except FileNotFoundError:
        raise AlignError(f"{where}: not found although the stage is marked finished; re-run the evaluate stage.") from None
    except json.JSONDecodeError as e:
        raise AlignError(f"{where}: not valid JSON ({e}); re-run the evaluate stage.") from None
    check_metrics(metrics, where)
    policies, curves = [], {}
    for name, entry in metrics["policies"].items():
        stage_dir = policy_dir(eval_dir, entry.get("path"))
        history = log_history(stage_dir) if stage_dir else []
        policies.append(Policy(name, entry.get("kind"), entry, trajectory(history) if entry.get("kind") == "ppo" else [],
                               n=metrics.get("n_prompts"), is_reference=name == metrics["reference"]))
    for stage_dir in training_stages(eval_dir, policies):
        curves[stage_dir.name] = ((read_marker(stage_dir) or {}).get("kind"), log_history(stage_dir))
    return Evaluation(eval_dir, metrics, policies, curves, read_samples(eval_dir / "samples.jsonl"))


def policy_dir(eval_dir: Path, path: str | None) -> Path | None:
    """The policy's stage folder: as recorded, else beside the eval stage (the run folder was moved)."""
    if not path:
        return None
    for candidate in (Path(path), eval_dir.parent / Path(path).name):
        if candidate.is_dir():
            return candidate
    return None


def training_stages(eval_dir: Path, policies: list[Policy]) -> list[Path]:
    """Finished stages of the run (and the policies' own folders) that logged training, in run order."""
    dirs = {d.resolve() for d in eval_dir.parent.iterdir() if d.is_dir() and read_marker(d)}
    dirs |= {d.resolve() for p in policies if (d := policy_dir(eval_dir, p.metrics.get("path")))}
    dirs = [d for d in dirs if (d / "trainer_state.json").is_file()]
    return sorted(dirs, key=lambda d: ((read_marker(d) or {}).get("finished_at") or "", d.name))


def log_history(stage_dir: Path) -> list[dict]:
    try:
        return json.loads((stage_dir / "trainer_state.json").read_text()).get("log_history", [])
    except (FileNotFoundError, json.JSONDecodeError):
        return []


def trajectory(history: list[dict]) -> list[tuple[int, float, float]]:
    """PPO's periodic evaluations, (step, KL, score), in step order."""
    points = [(h.get("step", 0), h["eval/kl"], h["eval/score"]) for h in history
              if h.get("eval/kl") is not None and h.get("eval/score") is not None]
    return sorted(points)


def read_samples(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def find_eval_stages(run_dir: str | Path) -> list[Path]:
    """Finished evaluate stages in a run folder (found by their completion marker's kind)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AlignError(f"compare: {run_dir} is not a folder; give run folders such as runs/quickstart.")
    found = sorted(d for d in run_dir.iterdir() if d.is_dir() and (read_marker(d) or {}).get("kind") == "evaluate")
    if not found:
        raise AlignError(f"compare: {run_dir} holds no finished evaluate stage (no stage folder whose {MARKER} "
                         f"says kind: evaluate). Run the recipe's evaluate stage first (align run RECIPE --only eval).")
    return found
