"""``align validate``: a dry run of a recipe. It trains nothing, writes nothing and takes seconds.

It holds no stage knowledge of its own: it prints the plan ``align run`` would execute
(``align.state.plan``), runs each stage kind's own checks (``StageKind.check``: key types, options,
``args:``, LoRA and the other training keys, the kind's own rules) and then what each stage would
do first, with the real loaders:

- **datasets**: loads every dataset that exists before the run (files, builtins, stage outputs already
  made; hub datasets when the hub is reachable, their first rows only) and checks its format against
  what the stage reading it expects (the kind's ``expected``) and every row, as the stage will;
- **judges** and ``map:`` functions: checks each judge spec (``judge_factory.judge_problems``), imports
  functions and calls each function judge on one example, checking it returns one number per response;
- **models**: folders the stage loads (``StageKind.models``) must exist and hold a model; a hub id is
  noted, not checked.

Every problem is one paragraph naming the field or the row; all are collected, not just the first.
``check_recipe`` is the function ``align run`` calls before training.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from align.errors import AlignError
from align.models import MODEL_FILES, looks_like_hub_id, model_folder
from align.recipe import Recipe, Stage
from align.refs import StageRef
from align.state import PlanStep, plan, read_marker

EXAMPLE_PROMPT = "Write a review of the Zenmor X2 blender."
EXAMPLE_RESPONSES = ("The Zenmor X2 blender is quiet and sturdy; it makes a smooth smoothie every morning.",
                     "It broke after a week.")
BUILTIN_ROWS_CHECKED = 20_000  # a builtin split larger than this is checked on its first rows (same generator)
HUB_ROWS_CHECKED = 200  # hub datasets are streamed: their first rows are checked, nothing is downloaded in full
FILES = {"model": MODEL_FILES, "tokenizer": ("tokenizer_config.json",)}  # what a folder of each must hold


# ---------------------------------------------------------------- results

@dataclass
class Validation:
    """What ``check_recipe`` found: ``problems`` (one paragraph each; empty when the recipe is clean), the
    ``plan``, and what was checked or deliberately not checked."""

    source: str
    recipe: Recipe | None
    problems: list[str] = field(default_factory=list)
    plan: list[PlanStep] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)
    not_checked: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def raise_for_problems(self) -> None:
        """An AlignError holding every problem (one paragraph each), if there is any."""
        if len(self.problems) == 1:
            raise AlignError(self.problems[0])
        if self.problems:
            raise AlignError(f"{len(self.problems)} problems in recipe {self.source}:\n\n" + "\n\n".join(self.problems))

    def report(self) -> str:
        """The plan and what was checked, for stdout (problems go to stderr)."""
        if self.recipe is None:
            return f"{self.source}: the recipe could not be read."
        r = self.recipe
        state = (f"valid recipe {r.name!r} with {len(r.stages)} stages -> {r.output_dir}" if self.ok else
                 f"recipe {r.name!r} with {len(r.stages)} stages -> {r.output_dir}: "
                 f"{len(self.problems)} problem{'s' if len(self.problems) != 1 else ''}")
        lines = [f"{self.source}: {state}", *(f"  {step.line()}" for step in self.plan)]
        if self.checked:
            lines += ["checked:", *(f"  {c}" for c in self.checked)]
        if self.not_checked:
            lines += ["not checked:", *(f"  {c}" for c in self.not_checked)]
        lines.append(f"validated in {self.seconds:.1f} s; nothing was trained or written.")
        return "\n".join(lines)


def validate_file(path: str | Path, overrides: list[str] = (), *, output_dir: str | None = None) -> Validation:
    """Read a recipe (with ``--set`` overrides) and check it; a recipe that cannot be read is one problem."""
    from align.recipe import load_recipes

    start = time.perf_counter()
    try:
        recipes = load_recipes(path, overrides, output_dir=output_dir)
    except AlignError as e:
        return Validation(str(path), None, [str(e)], seconds=time.perf_counter() - start)
    result = check_recipe(recipes[0])
    for other in recipes[1:]:  # a seed sweep: the same stages, checked once; every run's plan
        result.plan += plan(other, problems=result.problems)
    result.source = str(path)
    result.seconds = time.perf_counter() - start
    return result


def check_recipe(recipe: Recipe, *, only: list[str] | None = None, from_stage: str | None = None,
                 force: bool = False, skip_cached: bool = False) -> Validation:
    """Dry-run ``recipe``: every problem a run would meet before training, and the plan. Writes nothing.

    ``only`` / ``from_stage`` / ``force`` shape the plan as ``run_recipe`` would; ``skip_cached`` checks only
    the stages that will run (what ``align run`` needs); by default every stage is checked.
    """
    start = time.perf_counter()
    result = Validation(str(recipe.source or recipe.name), recipe)
    result.plan = plan(recipe, only=only, from_stage=from_stage, force=force, problems=result.problems)
    checked = {s.stage for s in result.plan if s.action == "run" or (s.action == "cached" and not skip_cached)}
    checker = Checker(recipe, result)
    with quiet_progress_bars():
        checker.run([recipe.stages[n] for n in recipe.stages if n in checked],
                    all_judges=not (only or from_stage or skip_cached))
    result.seconds = time.perf_counter() - start
    return result


@contextlib.contextmanager
def quiet_progress_bars():
    """``datasets`` progress bars off while checking (restored after)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()


# ---------------------------------------------------------------- the checks

class Checker:
    """Runs every check on a recipe, collecting problems and notes into a ``Validation``."""

    def __init__(self, recipe: Recipe, result: Validation):
        self.recipe, self.result = recipe, result
        self.loaded: dict[str, object] = {}  # dataset spec (json) -> Dataset, or None after a failure
        self.validated: set = set()
        self.stage_data: dict[str, list] = {}  # stage -> datasets it reads (for example prompts)
        self.hub: bool | None = None

    # -- bookkeeping
    def problem(self, message: str) -> None:
        if message not in self.result.problems:
            self.result.problems.append(message)

    def note(self, text: str) -> None:
        self.result.checked.append(text)

    def skip(self, text: str) -> None:
        if text not in self.result.not_checked:
            self.result.not_checked.append(text)

    def attempt(self, label: str, fn, /, *args, **kwargs):
        """``fn(...)``; an AlignError (or any error, named with ``label``) becomes a problem and None."""
        try:
            return fn(*args, **kwargs)
        except AlignError as e:
            self.problem(str(e))
        except Exception as e:  # noqa: BLE001 -- the user's code or a library refusing a value
            self.problem(f"{label}: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
        return None

    # -- driver
    def run(self, stages: list[Stage], *, all_judges: bool) -> None:
        from align.stages import stage_kind

        judges: dict[str, list[str]] = {}  # judge -> stages using it
        for stage in stages:
            kind = stage_kind(stage.kind)
            where = f"stages.{stage.name}"
            for message in self.attempt(where, kind.check, stage.spec, where) or []:
                self.problem(message)
            summary = self.attempt(f"{where}.args", kind.defaults, self.recipe, stage.name, stage.spec)
            if summary:
                self.note(summary)
            backend = self.attempt(where, kind.sampling_backend, stage.spec)
            if backend in ("transformers", "vllm"):  # an unknown one is a problem of kind.check
                self.note(f"{where}: samples with {backend}")
            for key, (value, what) in (self.attempt(where, kind.model_refs, stage.spec) or {}).items():
                self.model(value, f"{where}.{key}", files=FILES[what], what=what)
                if what == "model":
                    self.attempt(f"{where}.{key}", self.model_findings, kind, stage, key, value, where)
            for key in kind.dataset_keys:
                if key in stage.spec:
                    self.attempt(f"{where}.{key}", self.dataset, stage, kind, key)
            for name in kind.judge_names(stage.spec):
                judges.setdefault(name, []).append(stage.name)
        if all_judges:
            for name in self.recipe.judges:
                judges.setdefault(name, [])
        for name, users in judges.items():
            self.attempt(f"judges.{name}", self.judge, name, self.recipe.judges[name], users)

    # -- models
    def model(self, value, where: str, *, files=MODEL_FILES, what: str = "model") -> None:
        if isinstance(value, StageRef):
            if read_marker(value) is None:
                return  # made by the run; the plan says when
            folder = Path(value)
            if model_folder(folder, files) is None:
                self.problem(f"{where}: stage {value.stage} is marked finished but {folder} holds no {what} "
                             f"(no {' or '.join(files)}); re-run it with --from {value.stage}.")
            return
        if not isinstance(value, str) or not value.strip():
            self.problem(f"{where}: expected ${{stages.<name>}}, a local {what} folder or a hub id, got {value!r}.")
            return
        path = Path(value).expanduser()
        if path.exists():
            if not path.is_dir():
                self.problem(f"{where}: {value} is a file; expected a {what} folder (holding {' or '.join(files)}).")
            elif model_folder(path, files) is None:
                self.problem(f"{where}: {value} holds no {what} (no {' or '.join(files)}). Give a folder written by "
                             f"save_pretrained, a stage reference like ${{stages.sft}}, or a hub id.")
            else:
                self.note(f"{where}: {value} holds a {what}")
            return
        if looks_like_hub_id(value):
            self.skip(f"{where}: {value}: not checked (hub id)")
            return
        self.problem(f"{where}: {value} does not exist (relative paths are relative to the working directory, "
                     f"{Path.cwd()}). Give a stage reference like ${{stages.sft}}, a local {what} folder or a hub id.")

    def model_findings(self, kind, stage: Stage, key: str, value, where: str) -> None:
        """What the stage will do with a model that exists already (its declared ``model_findings``): the context
        its replies are trained and sampled in, the scalar head of a family without a classification class."""
        path = Path(value) if isinstance(value, (str, StageRef)) else None
        if path is None or (isinstance(value, StageRef) and read_marker(value) is None):
            return
        folder = model_folder(path.expanduser())
        if folder is None:
            return
        problems, notes = kind.model_findings(stage.spec, key, str(folder), where)
        for message in problems:
            self.problem(message)
        for text in notes:
            self.note(text)

    # -- datasets
    def dataset(self, stage: Stage, kind, key: str) -> None:
        from align.data import validate_dataset
        from align.functions import import_function

        value = stage.spec[key]
        name, spec = self.recipe.dataset_spec(stage, key)
        where = f"stages.{stage.name}.{key} ({name})" if name != key else f"stages.{stage.name}.{key}"
        label = f"datasets.{name}" if isinstance(value, str) and not isinstance(value, StageRef) else where
        expected = kind.expected.get(key)
        if spec.get("map") and self.attempt(f"{label}.map", import_function, spec["map"], f"{label}.map") is None:
            return  # loading would only fail on the same import
        if "stage_dir" in spec and read_marker(spec["stage_dir"]) is None and self.made_by_run(spec["stage_dir"]):
            self.skip(f"{where}: made by stage {Path(spec['stage_dir']).name} during the run; checked when it runs")
            return
        if "hub" in spec and not self.hub_reachable():
            self.skip(f"{label} (hub {spec['hub']}): not checked (no network)")
            return
        hubs = [s["hub"] for s in spec.get("mixture") or [] if isinstance(s, dict) and "hub" in s]
        if hubs and not self.hub_reachable():
            self.skip(f"{label} (a mixture with hub {', '.join(hubs)}): not checked (no network)")
            return
        ds = self.load(spec, where, label)
        if ds is None:
            return
        self.stage_data.setdefault(stage.name, []).append(ds)
        check_key = (json.dumps(spec, sort_keys=True, default=str), json.dumps(expected))
        if check_key in self.validated:
            return
        self.validated.add(check_key)
        fmt = self.attempt(where, validate_dataset, ds, name=where, expected=expected)
        if fmt is None:
            return
        self.attempt(where, kind.check_dataset, stage.spec, key, ds, f"stages.{stage.name}", where)
        dropped = getattr(ds, "align_dropped", None)
        drop_note = (f"; {plural(dropped.dropped, 'invalid row')} will be dropped ("
                     + "; ".join(f"{n:,} x {r}" for r, n in dropped.counts.items()) + ")"
                     if dropped is not None and dropped.dropped else "")
        sample = getattr(ds, "align_sample", None)
        rows = f"first {len(ds):,} rows of {sample}" if sample else plural(len(ds), "row")
        self.note(f"{where}: {rows}, {fmt}; every row valid{drop_note}")

    def made_by_run(self, stage_dir) -> bool:
        return any(Path(s.out_dir) == Path(stage_dir) for s in self.recipe.stages.values())

    def load(self, spec: dict, where: str, label: str):
        from align.data import load_dataset

        key = json.dumps(spec, sort_keys=True, default=str)
        if key in self.loaded:
            return self.loaded[key]
        ds = None
        if "builtin" in spec:
            ds = self.attempt(where, self.load_builtin, spec, where)
        elif "hub" in spec:
            from align.data.loading import load_hub_head

            ds = self.attempt(where, load_hub_head, spec, name=where, rows=HUB_ROWS_CHECKED)
            if ds is not None:
                ds.align_sample = f"hub {spec['hub']}"
        else:
            ds = self.attempt(where, load_dataset, spec, name=where)
        self.loaded[key] = ds
        return ds

    @staticmethod
    def load_builtin(spec: dict, where: str):
        from align.data import load_dataset
        from align.data.builtin import DEFAULT_SIZES

        size = spec.get("size") or DEFAULT_SIZES.get(spec.get("split", "train"), 0)
        if size <= BUILTIN_ROWS_CHECKED:
            return load_dataset(spec, name=where)
        ds = load_dataset({**spec, "size": BUILTIN_ROWS_CHECKED}, name=where)  # the same rows, fewer of them
        ds.align_sample = f"{size:,} (builtin)"
        return ds

    def hub_reachable(self) -> bool:
        if self.hub is None:
            self.hub = hub_reachable()
        return self.hub

    # -- judges
    def judge(self, name: str, spec, users: list[str]) -> None:
        from align.eval.judge_factory import MODEL_KINDS, judge_kind, judge_problems

        where = f"judges.{name}"
        problems = judge_problems(spec, where)
        for message in problems:
            self.problem(message)
        try:
            kind = judge_kind(spec, where)
        except AlignError:
            return
        target = spec[kind]
        if kind in MODEL_KINDS:  # a model: checked like a stage's
            if isinstance(target, StageRef) and read_marker(target) is None:
                self.skip(f"{where}: {kind.replace('_', ' ')} made by stage {target.stage}; loaded when it has run")
            else:
                self.model(target, f"{where}.{kind}")
        elif problems:
            return
        elif kind == "function":
            self.function_judge(name, spec, users)
        else:  # a judge behind a service (e.g. openai): its spec only
            self.skip(f"{where}: {kind} judge: not called (validate sends no requests)")

    def function_judge(self, name: str, spec: dict, users: list[str]) -> None:
        from align.eval.judge_factory import build_judge

        where = f"judges.{name}"
        judge = self.attempt(where, build_judge, name, spec)
        if judge is None:
            return
        from align.functions import columns_of

        row, source = self.example_row(users)
        scores = self.attempt(where, judge.score, [row["prompt"]] * 2, list(EXAMPLE_RESPONSES),
                              **columns_of([row, row]))  # the dataset's columns, as the stages pass them
        if scores is not None:
            self.note(f"{where}: {spec['function']} gave one number per response on an example ({source}): "
                      + ", ".join(f"{s:.3g}" for s in scores))

    def example_row(self, users: list[str]):
        """The first prompt row a stage using the judge reads (its other columns are what the judge gets too)."""
        for stage in users:
            for ds in self.stage_data.get(stage, []):
                if "prompt" in ds.column_names and len(ds):
                    return ds[0], f"the first prompt stages.{stage} reads"
        return {"prompt": EXAMPLE_PROMPT}, "a fixed example prompt"


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def hub_reachable(timeout: float = 2.0) -> bool:
    """False when offline mode is set or huggingface.co cannot be reached within ``timeout`` seconds."""
    import socket
    from urllib.parse import urlparse

    if any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    try:
        from huggingface_hub import constants

        endpoint = urlparse(constants.ENDPOINT)
    except Exception:  # noqa: BLE001
        endpoint = urlparse("https://huggingface.co")
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


__all__ = ["PlanStep", "Validation", "check_recipe", "plan", "validate_file"]
