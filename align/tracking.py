"""Recipe-level experiment tracking: ``tracking: {report_to: [trackio, tensorboard], project: ..., run_name: ...}``.

Every training stage (Trainer stages and PPO) logs to the recipe's trackers as one run per stage, grouped under the
recipe's run group (its ``run_name``, default the recipe's name, with ``-seed-N`` for each run of a seed sweep), so
``trackio show`` / ``tensorboard --logdir`` show a whole recipe side by side. The evaluate stage logs its table and
the report stage its figures to the same group. A stage whose ``args:`` name ``report_to`` keeps its own choice.

trackio and tensorboard go through align's own callbacks (transformers' classes, given the group and the folder);
any other transformers integration (wandb, mlflow, ...) goes into ``args.report_to`` with the run name.
trackio stores locally in ``$TRACKIO_DIR`` (default ``$HF_HOME/trackio``); tensorboard writes event files under
``tracking.dir`` (default ``<output_dir>/tensorboard``; a seed sweep's runs share their parent's).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from align.errors import AlignError, suggest

log = logging.getLogger("align")

KEYS = {
    "report_to": "trackers: trackio, tensorboard, or any transformers integration (wandb, mlflow, comet_ml, ...)",
    "project": "the trackio/wandb project (default: the recipe's name)",
    "run_name": "the run group every stage logs under (default: the recipe's name; a seed sweep adds -seed-N)",
    "dir": "tensorboard's folder (default: <output_dir>/tensorboard, a seed sweep's parent folder)",
}
PACKAGES = {"trackio": "trackio", "tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow",
            "comet_ml": "comet_ml", "clearml": "clearml", "swanlab": "swanlab", "neptune": "neptune"}
OWN = ("trackio", "tensorboard")  # the backends align sets up itself (grouping, folder)


def backends(value) -> list[str]:
    if value in (None, "none", False):
        return []
    return [value] if isinstance(value, str) else list(value)


def check(spec, where: str = "tracking") -> dict:
    """``tracking:`` as given, checked: known keys, known trackers, their packages installed. Returns it."""
    if spec is None:
        return {}
    if not isinstance(spec, dict):
        raise AlignError(f"{where}: expected a mapping like {{report_to: [trackio, tensorboard], project: name}}, "
                         f"got {spec!r}.")
    for key in spec:
        if key not in KEYS:
            raise AlignError(f"{where}.{key}: unknown key.{suggest(key, KEYS)} Valid keys: {', '.join(KEYS)}.")
    for key in ("project", "run_name", "dir"):
        if key in spec and not isinstance(spec[key], str):
            raise AlignError(f"{where}.{key}: expected a string, got {spec[key]!r}.")
    report_to = spec.get("report_to")
    if not (isinstance(report_to, str) or (isinstance(report_to, list) and all(isinstance(v, str) for v in report_to))):
        raise AlignError(f"{where}.report_to: expected a tracker name or a list of them (trackio, tensorboard, wandb, "
                         f"...), got {report_to!r}.")
    from transformers.integrations.integration_utils import INTEGRATION_TO_CALLBACK

    for name in backends(report_to):
        if name not in INTEGRATION_TO_CALLBACK:
            raise AlignError(f"{where}.report_to: unknown tracker {name!r}.{suggest(name, INTEGRATION_TO_CALLBACK)} "
                             f"Known: {', '.join(sorted(INTEGRATION_TO_CALLBACK))}.")
        package = PACKAGES.get(name, name)
        if importlib.util.find_spec(package) is None:
            raise AlignError(f"{where}.report_to: {name} is not installed here; pip install {package} (align's "
                             f"[trackers] extra has trackio and tensorboard), or remove it.")
    return spec


class Tracking:
    """Where and under which names one recipe run logs."""

    def __init__(self, recipe):
        spec = recipe.tracking or {}
        self.report_to = backends(spec.get("report_to"))
        self.project = spec.get("project") or recipe.name
        group = spec.get("run_name") or recipe.name
        self.group = f"{group}-{recipe.variant}" if recipe.variant else group
        root = recipe.output_dir.parent if recipe.variant else recipe.output_dir
        self.dir = Path(spec["dir"]) if spec.get("dir") else root / "tensorboard"

    def __bool__(self) -> bool:
        return bool(self.report_to)

    def run_name(self, stage: str) -> str:
        return f"{self.group}/{stage}"

    def logdir(self, stage: str) -> Path:
        return self.dir / self.group / stage

    def trainer_args(self, stage: str) -> dict:
        """Library config fields for a stage that does not set ``report_to`` itself: other integrations by name."""
        return {"report_to": [b for b in self.report_to if b not in OWN] or "none",
                "run_name": self.run_name(stage), "project": self.project}

    def callbacks(self, stage: str) -> list:
        """align's trackio and tensorboard callbacks for one stage."""
        out = []
        if "trackio" in self.report_to:
            out.append(grouped_trackio_callback(self.project, self.run_name(stage), self.group))
        if "tensorboard" in self.report_to:
            from transformers.integrations import TensorBoardCallback

            callback = TensorBoardCallback()
            callback.logging_dir = str(self.logdir(stage))
            out.append(callback)
        return out

    def log_summary(self, stage: str, scalars: dict, tables: dict | None = None, images: dict | None = None) -> None:
        """A finished stage's numbers (``{"eval/ppo/win_rate": 0.8}``), tables (name -> (columns, rows)) and images
        (name -> PNG path) into every own tracker, under this stage's run name in the group."""
        tables, images = tables or {}, images or {}
        if "trackio" in self.report_to:
            import trackio

            trackio.init(project=self.project, name=self.run_name(stage), group=self.group, resume="allow",
                         auto_log_cpu=False, auto_log_gpu=False)
            payload = dict(scalars)
            payload.update({name: trackio.Table(columns=columns, data=rows) for name, (columns, rows) in tables.items()})
            payload.update({name: trackio.Image(str(path)) for name, path in images.items()})
            trackio.log(payload)
            trackio.finish()
        if "tensorboard" in self.report_to:
            from torch.utils.tensorboard import SummaryWriter

            writer = SummaryWriter(log_dir=str(self.logdir(stage)))
            for name, value in scalars.items():
                writer.add_scalar(name, value, 0)
            for name, (columns, rows) in tables.items():
                writer.add_text(name, markdown_table(columns, rows), 0)
            for name, path in images.items():
                import numpy as np
                from PIL import Image

                writer.add_image(name, np.asarray(Image.open(path).convert("RGB")), 0, dataformats="HWC")
            writer.close()
        others = [b for b in self.report_to if b not in OWN]
        if others:
            log.info("tracking: %s get the training logs only; the %s stage's table goes to trackio/tensorboard",
                     ", ".join(others), stage)

    def describe(self) -> str:
        """One line for the report: where to look."""
        parts = []
        if "trackio" in self.report_to:
            parts.append(f"trackio project `{self.project}`, group `{self.group}` (`trackio show --project "
                         f"\"{self.project}\"`)")
        if "tensorboard" in self.report_to:
            parts.append(f"tensorboard `{self.dir / self.group}` (`tensorboard --logdir {self.dir}`)")
        parts += [b for b in self.report_to if b not in OWN]
        return "; ".join(parts)


def markdown_table(columns: list, rows: list[list]) -> str:
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    return "\n".join(["| " + " | ".join(map(str, columns)) + " |", "|" + "---|" * len(columns),
                      *("| " + " | ".join(cell(v) for v in row) + " |" for row in rows)])


def flat_scalars(prefix: str, value) -> dict:
    """Nested numbers as ``prefix/a/b`` scalars (booleans and non-numbers left out)."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out.update(flat_scalars(f"{prefix}/{key}", item))
        return out
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {prefix: float(value)}
    return {}


class _GroupedTrackio:
    """The trackio module, with ``init`` given align's project, run name and group (transformers' callback passes
    neither a group nor a way to set one)."""

    def __init__(self, module, **names):
        self._module, self._names = module, names

    def init(self, **kwargs):
        return self._module.init(**{**kwargs, **self._names, "auto_log_cpu": False, "auto_log_gpu": False})

    def __getattr__(self, name):
        return getattr(self._module, name)


def grouped_trackio_callback(project: str, name: str, group: str):
    from transformers.integrations import TrackioCallback

    callback = TrackioCallback()
    callback._trackio = _GroupedTrackio(callback._trackio, project=project, name=name, group=group)
    return callback
