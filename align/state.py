"""A run's state on disk, and the plan read from it: the one place that decides what runs and why.

A stage is finished when ``<stage>/.align_complete.json`` (its marker) exists and holds the hash of the
stage's current fingerprint: its resolved spec and seed, the completion fingerprints of the stages it
reads, its datasets, its judges, the source files of the user modules it calls (judge functions,
dataset ``map`` functions) and align's version. The marker is written last and atomically, so a
killed run never looks finished.

Finished work is never destroyed by a failed attempt: a stage that already has a result and must
re-run is built in ``<run>/.attempts/<stage>/`` beside it and swapped in only once it has finished
(``swap_in``; ``recover_stage_dir`` completes a swap cut short). A stage that starts with the same
hash as an interrupted attempt resumes from that attempt's last checkpoint (``prepare_stage_dir``).

``plan`` turns this state into one step per stage (cached, run or skip, and why). ``align run``
executes those steps (``align.runner``); ``align validate`` prints them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from align.checkpoints import atomic_write_json
from align.errors import AlignError, suggest
from align.refs import StageRef, plain
from align import version

if TYPE_CHECKING:  # the run state reads a resolved recipe; it does not load one
    from align.recipe import Recipe, Stage

MARKER = ".align_complete.json"  # written last: the stage finished
STARTED = ".align_started.json"  # written first: the spec hash an interrupted attempt may resume with
ATTEMPTS = ".attempts"


# ---------------------------------------------------------------- markers

def read_marker(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError, json.JSONDecodeError):  # NotADirectory: output_dir under a file
        return None


def write_json_atomic(path: Path, payload: dict) -> None:
    """Through a fsync'd temporary name and one rename (``align.checkpoints``); a full disk is an AlignError."""
    atomic_write_json(path, payload)


def write_marker(stage_dir: Path, stage: Stage, digest: str, parts: dict, metrics: dict) -> dict:
    """The completion marker, last and atomically; its ``fingerprint`` is new on every finish, so readers re-run."""
    finished = time.strftime("%Y-%m-%dT%H:%M:%S")
    marker = {"stage": stage.name, "kind": stage.kind, "spec_hash": digest, "finished_at": finished,
              "fingerprint": hashlib.sha256(f"{digest}{finished}{time.time_ns()}".encode()).hexdigest()[:16],
              "parts": parts, "metrics": metrics}
    write_json_atomic(stage_dir / MARKER, marker)
    return marker


# ---------------------------------------------------------------- fingerprints

def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


_code_seen: dict[str, str] = {}  # module -> hash of its file when this process last fingerprinted it


def module_code_hash(target: str) -> str:
    """Hash of the source file of the module in ``module:function``, found without importing it.

    A module that was edited since this process last hashed it is dropped from ``sys.modules``,
    so the stage that re-runs because of the edit imports the new code (notebooks, tests)."""
    import importlib.util
    import sys

    module = str(target).partition(":")[0].strip()
    importlib.invalidate_caches()  # a module file written a moment ago
    try:
        found = importlib.util.find_spec(module)
    except Exception:  # a parent package that fails to import, a module without a spec
        found = None
    origin = found.origin if found is not None and found.has_location else None
    if not origin or not os.path.isfile(origin):
        return "not found"  # the stage itself reports the import error
    digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
    if _code_seen.get(module, digest) != digest:
        sys.modules.pop(module, None)
        with contextlib.suppress(OSError, NotImplementedError, ValueError):  # stale bytecode (same-second edit)
            os.remove(importlib.util.cache_from_source(origin))
    _code_seen[module] = digest
    return digest


def function_source(target: str) -> str | None:
    """The source of a ``map`` function, so editing it invalidates cached stages."""
    import inspect

    from align.functions import import_function

    try:
        return inspect.getsource(import_function(target, "map"))
    except (AlignError, OSError, TypeError):
        return None


def dataset_fingerprint(spec: dict, *, name: str = "dataset") -> str:
    """A stable hash of what a dataset spec would load: files by path, size and mtime; stages by marker."""
    from align.data.loading import check_spec, expand_paths

    check_spec(spec, name)
    payload = dict(spec)
    if "path" in spec:
        payload["files"] = [[str(p.resolve()), *((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else ())]
                            for p in expand_paths(spec)]
    if "stage_dir" in spec:
        marker = Path(spec["stage_dir"]) / MARKER
        payload["marker"] = marker.read_text() if marker.exists() else None
    if spec.get("map"):
        payload["map_source"] = function_source(spec["map"])
    if "mixture" in spec:  # each source as it would load (its files, its map)
        payload["sources"] = [dataset_fingerprint({k: v for k, v in source.items() if k not in ("fraction", "weight")},
                                                  name=f"{name}.mixture[{i}]")
                              for i, source in enumerate(spec["mixture"])]
    return short_hash(payload)


def fingerprint_parts(recipe: Recipe, stage: Stage) -> dict[str, str] | None:
    """What determines a stage's output, part by part (so a re-run can say which part changed);
    None while an input is unfinished."""
    markers = {dep: read_marker(recipe.stages[dep].out_dir) for dep in stage.deps}
    if any(marker is None for marker in markers.values()):
        return None

    def canonical(value: Any) -> Any:
        if isinstance(value, StageRef):
            return f"stage:{value.stage}"  # its fingerprint is the part "input <stage>"
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        return value

    parts = {"spec": short_hash({"kind": stage.kind, "spec": canonical(stage.spec)}), "seed": str(recipe.seed),
             "align": str(version.__version__)}
    for dep, marker in markers.items():
        parts[f"input {dep}"] = str(marker.get("fingerprint"))

    def dataset(label: str, spec: dict) -> None:
        if spec.get("map"):  # first: an edited module is re-imported by what follows
            parts[f"code {str(spec['map']).partition(':')[0]} (dataset {label} map)"] = module_code_hash(spec["map"])
        parts[f"dataset {label}"] = dataset_fingerprint(plain(spec))

    for key in stage.dataset_keys:
        value = stage.spec.get(key)
        if isinstance(value, str) and not isinstance(value, StageRef):
            dataset(value, recipe.datasets[value])
        elif isinstance(value, dict):
            dataset(key, value)
    for name in stage.judges:
        judge = recipe.judges[name]
        parts[f"judge {name}"] = short_hash(canonical(judge))
        if judge.get("function"):
            module_name = str(judge["function"]).partition(":")[0]
            parts[f"code {module_name} (judge {name})"] = module_code_hash(judge["function"])
    return parts


def spec_hash(recipe: Recipe, stage: Stage) -> str | None:
    """Hash of everything that determines a stage's output; None while an input is unfinished."""
    parts = fingerprint_parts(recipe, stage)
    return None if parts is None else short_hash(parts)


def rerun_reasons(marker: dict | None, parts: dict[str, str]) -> list[str]:
    """Why a finished stage's result no longer matches, from the parts recorded in its marker."""
    old = (marker or {}).get("parts")
    if not isinstance(old, dict):
        return ["fingerprint changed (result from an older align)"]
    reasons = []
    for key in [*parts, *(k for k in old if k not in parts)]:
        if old.get(key) == parts.get(key):
            continue
        if key == "align":
            reasons.append(f"code changed: align {old.get(key)} -> {parts.get(key)}")
        elif key.startswith("code "):
            reasons.append(f"code changed: {key[5:]}")
        elif key in ("spec", "seed"):
            reasons.append(f"{key} changed")
        elif key not in parts:
            reasons.append(f"{key} no longer used")
        else:
            reasons.append(f"{key} changed")
    return reasons or ["fingerprint changed"]


# ---------------------------------------------------------------- the plan

@dataclasses.dataclass
class PlanStep:
    """One stage of the plan: ``action`` is cached, run or skip; ``reason`` says why in a word
    (run: new, resume, changed, upstream, forced; skip: cached, finished earlier, not run yet)."""

    stage: str
    kind: str
    deps: list[str]
    action: str
    reason: str
    out_dir: Path

    def line(self) -> str:
        deps = f" (after {', '.join(self.deps)})" if self.deps else ""
        status = {"cached": "cached, skipped", "run": f"will run ({self.reason})",
                  "skip": f"not selected ({self.reason})"}[self.action]
        return f"{self.stage}: {self.kind}{deps}: {status}"


def select_stages(recipe: Recipe, only: list[str] | None, from_stage: str | None) -> list[Stage]:
    """The stages ``--only`` / ``--from`` select, in file order; an unknown name is an error with the closest."""
    names = recipe.stage_names()
    for name in (only or []) + ([from_stage] if from_stage else []):
        if name not in names:
            raise AlignError(f"no stage named {name!r} in recipe {recipe.name}.{suggest(name, names)} Stages: {', '.join(names)}.")
    if only:
        return [recipe.stages[n] for n in names if n in only]
    if from_stage:
        return [recipe.stages[n] for n in names[names.index(from_stage):]]
    return [recipe.stages[n] for n in names]


def plan(recipe: Recipe, *, only=None, from_stage=None, force=False, problems: list[str] | None = None) -> list[PlanStep]:
    """Each stage: cached (marker with the same spec hash), run (new, resume, changed, upstream, forced) or skip
    (not selected). A selected stage whose inputs neither exist nor will be made is a problem: appended to
    ``problems`` when given, else an AlignError."""
    selected = {s.name for s in select_stages(recipe, only, from_stage)}
    steps, will_run = [], set()
    for stage in recipe.stages.values():
        marker = read_marker(stage.out_dir)
        try:
            digest = spec_hash(recipe, stage)
        except Exception:  # noqa: BLE001 -- an input that cannot be fingerprinted: the checks say why
            digest = None
        same = bool(marker and digest and marker.get("spec_hash") == digest)
        if stage.name not in selected:
            steps.append(PlanStep(stage.name, stage.kind, stage.deps, "skip", "cached" if same else
                                  "finished earlier" if marker else "not run yet", stage.out_dir))
            continue
        missing = [d for d in stage.deps if d not in will_run and read_marker(recipe.stages[d].out_dir) is None]
        if missing:
            message = (f"stage {stage.name} needs {', '.join(missing)} to have finished; run them first "
                       f"(drop --only, or add them to it).")
            if problems is None:
                raise AlignError(message)
            problems.append(message)
        if force or stage.name == from_stage:
            reason = "forced"
        elif not marker:  # never finished: an interrupted attempt with the same spec resumes from its checkpoint
            reason = "resume" if digest is not None and started_hash(stage.out_dir) == digest else "new"
        elif any(d in will_run for d in stage.deps):
            reason = "upstream"  # an input is made again first, so this stage's inputs change
        else:
            reason = None if same else "changed"
        if reason:
            will_run.add(stage.name)
        steps.append(PlanStep(stage.name, stage.kind, stage.deps, "run" if reason else "cached", reason or "", stage.out_dir))
    return steps


# ---------------------------------------------------------------- attempts

def started_hash(stage_dir: Path) -> str | None:
    """The spec hash an attempt in ``stage_dir`` started with (None: no attempt, or an unreadable record)."""
    try:
        return json.loads((Path(stage_dir) / STARTED).read_text()).get("spec_hash")
    except (OSError, ValueError, AttributeError):
        return None


def attempt_dir(stage_dir: Path) -> Path:
    """Where a stage that already has a finished result builds its next one: ``<run>/.attempts/<stage>/``
    (the same base name, so model cards and logs name the stage)."""
    return stage_dir.parent / ATTEMPTS / stage_dir.name


def old_dir(stage_dir: Path) -> Path:
    return stage_dir.parent / ATTEMPTS / f"{stage_dir.name}.old"


def tidy_attempts(stage_dir: Path) -> None:
    with contextlib.suppress(OSError):  # only when empty
        (stage_dir.parent / ATTEMPTS).rmdir()


def prepare_stage_dir(stage_dir: Path, digest: str, *, fresh: bool) -> bool:
    """Keep an interrupted attempt with the same spec (to resume); clear anything else. True when
    an interrupted attempt is kept."""
    same_attempt = started_hash(stage_dir) == digest
    if stage_dir.exists() and (fresh or not same_attempt):
        shutil.rmtree(stage_dir)
        same_attempt = False
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not (stage_dir / STARTED).exists():
        write_json_atomic(stage_dir / STARTED, {"spec_hash": digest, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return same_attempt


def swap_in(work: Path, stage_dir: Path) -> None:
    """Replace the finished result in ``stage_dir`` by the finished attempt in ``work``: two renames,
    then the old result is deleted. ``recover_stage_dir`` completes a swap cut short."""
    old = old_dir(stage_dir)
    if old.exists():
        shutil.rmtree(old)
    if stage_dir.exists():
        os.rename(stage_dir, old)
    os.rename(work, stage_dir)
    shutil.rmtree(old, ignore_errors=True)
    tidy_attempts(stage_dir)


def recover_stage_dir(stage_dir: Path) -> None:
    """After a run killed during ``swap_in``: put a finished result back in place."""
    attempt, old = attempt_dir(stage_dir), old_dir(stage_dir)
    if read_marker(attempt) is not None:  # finished, not yet swapped in: it is the newest result
        swap_in(attempt, stage_dir)
    elif old.exists() and not stage_dir.exists():
        os.rename(old, stage_dir)
    if old.exists() and read_marker(stage_dir) is not None:
        shutil.rmtree(old, ignore_errors=True)
    tidy_attempts(stage_dir)


def discard_failed_attempt(work: Path, stage_dir: Path) -> None:
    """A failed attempt with no checkpoint to resume from leaves nothing behind (e.g. a config error)."""
    if work.is_dir() and read_marker(work) is None and not any(work.glob("checkpoint-*")):
        shutil.rmtree(work, ignore_errors=True)
        tidy_attempts(stage_dir)


def relocate(value: Any, work: Path, stage_dir: Path) -> Any:
    """Paths into the attempt folder (e.g. a report's files) as they will be once it is swapped in."""
    if work == stage_dir:
        return value
    if isinstance(value, str):
        for prefix, target in ((str(work.resolve()), str(stage_dir.resolve())), (str(work), str(stage_dir))):
            if value == prefix or value.startswith(prefix + os.sep):
                return target + value[len(prefix):]
        return value
    if isinstance(value, dict):
        return {k: relocate(v, work, stage_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, work, stage_dir) for v in value]
    return value
