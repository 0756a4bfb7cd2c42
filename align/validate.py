"""``align validate``: a dry run of a recipe. It trains nothing, writes nothing and takes seconds.

Beyond resolving the stage graph (``align.recipe``), it does what each stage would do first:

- **datasets**: loads every dataset that exists before the run (files, builtins, stage outputs already
  made; hub datasets when the hub is reachable, their first rows only) and checks its format against
  what the stage reading it expects (each stage module's ``EXPECTED``) and every row, as the stage will;
- **judges** and ``map:`` functions: imports them, and calls each function judge on one example,
  checking it returns one number per response; malformed judge specs are errors;
- **models**: folders named directly must exist and hold a config; a hub id is noted, not checked;
- **stage keys**: ``args:`` values against the types of the stage's config dataclass, ``lora:`` by
  building a ``peft.LoraConfig``, ``quantization``, ``dtype``, ``chat_template``, ``generation``;
- **plan**: for each stage, whether it is cached (its marker holds the same spec hash) or will run,
  and why in a word.

Every problem is one paragraph naming the field or the row; all are collected, not just the first.
``check_recipe`` is the function ``align run`` calls before training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import inspect
import json
import os
import re
import string
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from align.errors import AlignError
from align.models import MODEL_FILES, looks_like_hub_id, model_folder
from align.recipe import Recipe, Stage, StageRef, suggest

EXAMPLE_PROMPT = "Write a review of the Zenmor X2 blender."
EXAMPLE_RESPONSES = ("The Zenmor X2 blender is quiet and sturdy; it makes a smooth smoothie every morning.",
                     "It broke after a week.")
BUILTIN_ROWS_CHECKED = 20_000  # a builtin split larger than this is checked on its first rows (same generator)
HUB_ROWS_CHECKED = 200  # hub datasets are streamed: their first rows are checked, nothing is downloaded in full
MODEL_KEYS = ("model", "policy", "reward")  # stage keys naming a model to load
TOKENIZER_FILES = ("tokenizer_config.json",)
LORA_ALIASES = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules",
                "target": "target_modules", "modules": "target_modules"}  # names other libraries use
SCALAR_KEYS = {  # stage keys the stages convert with int()/float()/bool(): the value must be of that kind
    "vocab_size": int, "min_frequency": int, "block_size": int, "eval_fraction": float, "samples_per_prompt": int,
    "min_score_gap": float, "limit": int, "n_bootstrap": int, "samples": int, "merge": bool, "chat": bool,
    "text_column": str, "title": str, "reference": str, "trajectory_judge": str,
}


# ---------------------------------------------------------------- results

@dataclass
class PlanStep:
    """One stage of the plan: ``action`` is cached, run or skip; ``reason`` says why in a word."""

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


# ---------------------------------------------------------------- the plan

def plan(recipe: Recipe, *, only=None, from_stage=None, force=False, problems: list[str] | None = None) -> list[PlanStep]:
    """Each stage: cached (marker with the same spec hash) or run, and why: new, changed, resume, upstream, forced."""
    from align import runner

    names = list(recipe.stages)
    selected = set(names)
    if only:
        selected = set(only)
    elif from_stage:
        selected = set(names[names.index(from_stage):]) if from_stage in names else set()
    started_name = getattr(runner, "STARTED", ".align_started.json")
    steps, will_run = [], set()
    for stage in recipe.stages.values():
        marker = runner.read_marker(stage.out_dir)
        try:
            digest = runner.spec_hash(recipe, stage)
        except Exception:  # noqa: BLE001 -- an input that cannot be fingerprinted: the checks below say why
            digest = None
        same = bool(marker and digest and marker.get("spec_hash") == digest)
        if stage.name not in selected:
            steps.append(PlanStep(stage.name, stage.kind, stage.deps, "skip", "cached" if same else
                                  "finished earlier" if marker else "not run yet", stage.out_dir))
            continue
        missing = [d for d in stage.deps if d not in will_run and runner.read_marker(recipe.stages[d].out_dir) is None]
        if missing and problems is not None:
            problems.append(f"stage {stage.name} needs {', '.join(missing)} to have finished; run them first "
                            f"(drop --only, or add them to it).")
        if force or stage.name == from_stage:
            reason = "forced"
        elif not marker:  # never finished: an interrupted attempt with the same spec resumes from its checkpoint
            try:
                started = json.loads((stage.out_dir / started_name).read_text())
                resumes = digest is not None and started.get("spec_hash") == digest
            except (OSError, ValueError, AttributeError):
                resumes = False
            reason = "resume" if resumes else "new"
        elif any(d in will_run for d in stage.deps):
            reason = "upstream"  # an input is made again first, so this stage's inputs change
        else:
            reason = None if same else "changed"
        if reason:
            will_run.add(stage.name)
        steps.append(PlanStep(stage.name, stage.kind, stage.deps, "run" if reason else "cached", reason or "", stage.out_dir))
    return steps


# ---------------------------------------------------------------- types of args / lora fields

def type_hints(cls) -> dict:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # noqa: BLE001 -- unresolvable annotations: check what resolves
        return {f.name: f.type for f in dataclasses.fields(cls) if not isinstance(f.type, str)}


def is_union(tp) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def enum_values(tp) -> list:
    return [e.value for e in tp]


def matches(value, tp) -> bool:
    """Whether a YAML value fits a dataclass field annotation (lenient where the annotation is exotic)."""
    if tp in (typing.Any, object) or isinstance(tp, (str, typing.TypeVar)):
        return True
    if tp is type(None) or tp is None:
        return value is None
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if is_union(tp):
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums and isinstance(value, str):  # `SchedulerType | str`: the string must name a member
            return any(value in enum_values(e) for e in enums)
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return isinstance(value, tp) or value in enum_values(tp)
    if origin in (list, tuple, set, frozenset) or tp in (list, tuple, set):
        if not isinstance(value, (list, tuple)):  # libraries take a single item for a list (loss_type: sigmoid)
            return bool(args) and args[-1] is not Ellipsis and matches(value, args[0])
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(matches(v, a) for v, a in zip(value, args))
        return not args or all(matches(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # another class (e.g. a nested config object): its own constructor judges


def describe_type(tp) -> str:
    if tp is type(None) or tp is None:
        return "null"
    if is_union(tp):
        args = typing.get_args(tp)
        enums = [a for a in args if isinstance(a, type) and issubclass(a, enum.Enum)]
        if enums:
            return "one of " + ", ".join(str(v) for e in enums for v in enum_values(e))
        return " or ".join(describe_type(a) for a in args)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, tuple, set) and args:
        return f"a list of {describe_type(args[0])}"
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(str(v) for v in enum_values(tp))
    return getattr(tp, "__name__", str(tp))


def field_problems(values: dict, cls, where: str, *, unknown: bool, aliases: dict | None = None) -> list[str]:
    """Each value of ``values`` against ``cls``'s field annotation; with ``unknown`` also keys it lacks."""
    hints = type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    problems = []
    for key, value in values.items():
        if key not in valid:
            if unknown:
                hint = f" Did you mean {aliases[key]!r}?" if key in (aliases or {}) else suggest(key, valid)
                problems.append(f"{where}.{key}: not a field of {cls.__name__}.{hint}")
            continue
        tp = hints.get(key)
        if tp is not None and not matches(value, tp):
            problems.append(f"{where}.{key}: expected {describe_type(tp)} ({cls.__name__}.{key}), got {value!r} "
                            f"({type(value).__name__}).")
    return problems


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
        from align.stages import stage_module

        judges: dict[str, list[str]] = {}  # judge -> stages using it
        for stage in stages:
            module = stage_module(stage.kind)
            where = f"stages.{stage.name}"
            for check in (self.stage_keys, self.args, self.training_keys):  # one failing check stops no other
                self.attempt(where, check, stage, module, where)
            self.attempt(where, self.models, stage, where)
            self.attempt(where, self.model_findings, stage, module, where)
            for key in getattr(module, "DATASET_KEYS", ()):
                if key in stage.spec:
                    self.attempt(f"{where}.{key}", self.dataset, stage, module, key)
            for key in getattr(module, "JUDGE_KEYS", ()):
                names = stage.spec.get(key) or []
                for name in names if isinstance(names, list) else [names]:
                    judges.setdefault(name, []).append(stage.name)
        if all_judges:
            for name in self.recipe.judges:
                judges.setdefault(name, [])
        for name, users in judges.items():
            self.attempt(f"judges.{name}", self.judge, name, self.recipe.judges[name], users)

    # -- stage keys
    def stage_keys(self, stage: Stage, module, where: str) -> None:
        for key, kind in SCALAR_KEYS.items():
            if key in stage.spec and key in getattr(module, "KEYS", {}):
                value = stage.spec[key]
                if value is not None and not matches(value, kind):
                    self.problem(f"{where}.{key}: expected {kind.__name__}, got {value!r} ({type(value).__name__}). "
                                 f"{module.KEYS[key]}.")
        defaults = getattr(module, "GENERATION_DEFAULTS", None)
        if defaults is not None and "generation" in stage.spec:
            gen = stage.spec["generation"]
            if not isinstance(gen, dict):
                self.problem(f"{where}.generation: expected a mapping with keys among {sorted(defaults)}, got {gen!r}.")
            else:
                for key, value in gen.items():
                    if key not in defaults:
                        self.problem(f"{where}.generation.{key}: unknown key.{suggest(key, defaults)} "
                                     f"Valid: {', '.join(sorted(defaults))}.")
                    elif not matches(value, type(defaults[key])):
                        self.problem(f"{where}.generation.{key}: expected {type(defaults[key]).__name__} "
                                     f"(default {defaults[key]!r}), got {value!r} ({type(value).__name__}).")

    def args(self, stage: Stage, module, where: str) -> None:
        args = stage.spec.get("args")
        if not isinstance(args, dict) or not hasattr(module, "config_class"):
            return  # build_recipe has refused anything else
        for message in field_problems(args, module.config_class(), f"{where}.args", unknown=False):
            self.problem(message)

    def training_keys(self, stage: Stage, module, where: str) -> None:
        keys = getattr(module, "KEYS", {})
        classifier = stage.kind == "reward"  # LoRA only when given; elsewhere on unless `lora: false`
        for key in ("lora", "value_lora"):
            value = stage.spec.get(key) if key in keys else None
            if value is not None and value is not False and not (key == "value_lora" and value is True):
                self.lora(value, f"{where}.{key}")
        if "quantization" in keys and stage.spec.get("quantization") not in (None, False):
            from align.models import quantization_config

            lora_on = bool(stage.spec.get("lora")) if classifier else stage.spec.get("lora") is not False
            self.attempt(f"{where}.quantization", quantization_config, stage.spec["quantization"], lora=lora_on,
                         where=f"{where}.quantization")
        if "dtype" in keys and stage.spec.get("dtype") is not None:
            from align.models import resolve_dtype

            self.attempt(f"{where}.dtype", resolve_dtype, stage.spec["dtype"], training=True, field=f"{where}.dtype")
        template = stage.spec.get("chat_template")
        if "chat_template" in keys and template not in (None, "default"):
            from align.chat_templates import resolve_chat_template

            self.attempt(f"{where}.chat_template", resolve_chat_template, template, where=f"{where}.chat_template")

    def lora(self, lora, where: str) -> None:
        from peft import LoraConfig

        from align.stages.sft import lora_config

        if not isinstance(lora, dict):
            self.problem(f"{where}: expected LoraConfig fields (r, lora_alpha, target_modules, ...) or false, got {lora!r}.")
            return
        problems = field_problems(lora, LoraConfig, where, unknown=True, aliases=LORA_ALIASES)
        for message in problems:
            self.problem(message)
        if not problems:  # the fields are right: LoraConfig's own checks of their values
            self.attempt(where, lora_config, lora, where)

    # -- models
    def models(self, stage: Stage, where: str) -> None:
        spec = stage.spec
        for key in MODEL_KEYS:
            if key not in spec:
                continue
            if key == "model" and stage.kind == "pretrain" and isinstance(spec[key], dict):
                self.model_preset(spec[key], f"{where}.model")
            elif not (stage.kind == "pretrain" and key == "model" and spec[key] is None):
                self.model(spec[key], f"{where}.{key}")
        if "tokenizer" in spec:
            self.model(spec["tokenizer"], f"{where}.tokenizer", files=TOKENIZER_FILES, what="tokenizer")
        if stage.kind == "evaluate":
            policies = spec.get("policies")
            if not isinstance(policies, dict) or not policies:
                self.problem(f"{where}.policies: expected a mapping of names to policies, e.g. "
                             f"{{sft: ${{stages.sft}}, dpo: ${{stages.dpo}}}}; got {policies!r}.")
                return
            for name, path in policies.items():
                self.model(path, f"{where}.policies.{name}")
            reference = spec.get("reference", next(iter(policies)))
            if reference not in policies:
                self.problem(f"{where}.reference: {reference!r} is not one of the policies "
                             f"({', '.join(policies)}).{suggest(reference, policies)}")

    def model_findings(self, stage: Stage, module, where: str) -> None:
        """What the stage will do with the models it names that exist already (its declared ``model_findings``)."""
        from align.models import resolve_model_path
        from align.runner import read_marker

        own = getattr(module, "model_findings", None)
        if own is None:
            return
        for key in MODEL_KEYS:
            value = stage.spec.get(key)
            if not isinstance(value, str) or (isinstance(value, StageRef) and read_marker(value) is None):
                continue
            if not isinstance(value, StageRef) and not Path(value).expanduser().is_dir():
                continue
            problems, notes = own(stage.spec, key, resolve_model_path(value, field=f"{where}.{key}"), where)
            for message in problems:
                self.problem(message)
            for text in notes:
                self.note(text)

    def model(self, value, where: str, *, files=MODEL_FILES, what: str = "model") -> None:
        from align.runner import read_marker

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

    def model_preset(self, spec: dict, where: str) -> None:
        from transformers import LlamaConfig

        from align.models import llama_config

        valid = set(inspect.signature(LlamaConfig.__init__).parameters) - {"self", "kwargs"} | {"preset"}
        unknown = [k for k in spec if k not in valid]
        for key in unknown:
            self.problem(f"{where}.{key}: not a LlamaConfig field.{suggest(key, valid)}")
        if not unknown:  # the vocabulary comes from the tokenizer stage; any size shows bad shapes
            self.attempt(where, llama_config, spec, StubTokenizer(), field=where)

    # -- datasets
    def dataset(self, stage: Stage, module, key: str) -> None:
        from align.data import validate_dataset
        from align.runner import plain, read_marker

        value = stage.spec[key]
        if isinstance(value, StageRef):
            name, spec = value.stage, {"stage_dir": str(value)}
        elif isinstance(value, str):
            name, spec = value, self.recipe.datasets[value]
        else:
            name, spec = key, value
        spec = plain(spec)
        where = f"stages.{stage.name}.{key} ({name})" if name != key else f"stages.{stage.name}.{key}"
        label = f"datasets.{name}" if isinstance(value, str) and not isinstance(value, StageRef) else where
        expected = getattr(module, "EXPECTED", {}).get(key)
        if spec.get("map"):
            from align.data.loading import import_function

            if self.attempt(f"{label}.map", import_function, spec["map"], f"{label}.map") is None:
                return  # loading would only fail on the same import
        if "stage_dir" in spec and read_marker(spec["stage_dir"]) is None and self.made_by_run(spec["stage_dir"]):
            self.skip(f"{where}: made by stage {Path(spec['stage_dir']).name} during the run; checked when it runs")
            return
        if "hub" in spec and not self.hub_reachable():
            self.skip(f"{label} (hub {spec['hub']}): not checked (no network)")
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
        if stage.kind == "tokenizer":
            column = stage.spec.get("text_column") or ("text" if "text" in ds.column_names else "messages")
            if column not in ds.column_names:
                self.problem(f"stages.{stage.name}.text_column: {where} has no column {column!r}; its columns are "
                             f"{ds.column_names}.")
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
        from align.eval.judges import JUDGE_OPTIONS

        where = f"judges.{name}"
        kinds = [k for k in JUDGE_OPTIONS if isinstance(spec, dict) and k in spec]
        if len(kinds) != 1:
            self.problem(f"{where}: expected exactly one of {', '.join(JUDGE_OPTIONS)}, e.g. "
                         f"{{function: align.data.builtin:gold_judge}}, {{reward_model: ${{stages.reward}}}} or "
                         f"{{llm: path/to/model}}; got {spec!r}.")
            return
        kind = kinds[0]
        valid = (kind, *JUDGE_OPTIONS[kind])
        bad = False
        for key in spec:
            if key not in valid:
                self.problem(f"{where}.{key}: a {kind} judge has no option {key!r}.{suggest(key, valid)} "
                             f"Valid: {', '.join(valid)}.")
                bad = True
        checks = {"tie_tolerance": float, "batch_size": int, "reference": str, "template": str}
        for key, kind_type in checks.items():
            if key in spec and not matches(spec[key], kind_type):
                self.problem(f"{where}.{key}: expected {kind_type.__name__}, got {spec[key]!r}.")
                bad = True
        if isinstance(spec.get("template"), str):
            try:
                fields = {f for _, f, _, _ in string.Formatter().parse(spec["template"]) if f is not None}
            except ValueError as e:
                fields = {f"unreadable: {e}"}
            if fields != {"prompt", "response_a", "response_b"}:
                self.problem(f"{where}.template: must use exactly the fields {{prompt}}, {{response_a}} and "
                             f"{{response_b}} (write literal braces as {{{{ }}}}); it uses {sorted(fields) or 'none'}.")
                bad = True
        target = spec[kind]
        if kind == "function":
            if bad:
                return
            self.function_judge(name, spec, users)
        elif kind not in ("reward_model", "llm"):  # a judge behind a service (e.g. openai): its spec only
            self.service_judge(name, kind, spec)
        elif isinstance(target, StageRef):
            from align.runner import read_marker

            if read_marker(target) is None:
                self.skip(f"{where}: {kind.replace('_', ' ')} made by stage {target.stage}; loaded when it has run")
            else:
                self.model(target, f"{where}.{kind}")
        else:
            self.model(target, f"{where}.{kind}")

    def service_judge(self, name: str, kind: str, spec: dict) -> None:
        """The judge module's own spec check (``<kind>_options``) if it has one; the service is not called."""
        from align.eval import judges

        where = f"judges.{name}"
        options = getattr(judges, f"{kind}_options", None)
        if callable(options):
            try:
                options(where, spec)
            except AlignError as e:
                self.problem(str(e))
                return
            except Exception:  # noqa: BLE001 -- a helper of another shape: leave the spec to build_judge
                pass
        self.skip(f"{where}: {kind} judge: not called (validate sends no requests)")

    def function_judge(self, name: str, spec: dict, users: list[str]) -> None:
        from align.eval.judges import FunctionJudge

        where = f"judges.{name}"
        target = spec["function"]
        if not isinstance(target, str) or ":" not in target:
            self.problem(f"{where}.function: expected 'module:function', e.g. 'align.data.builtin:gold_judge'; "
                         f"got {target!r}.")
            return
        judge = self.attempt(where, FunctionJudge, target, name=name, tie_tolerance=spec.get("tie_tolerance", 0.0))
        if judge is None:
            return
        prompt, source = self.example_prompt(users)
        scores = self.attempt(where, judge.score, [prompt, prompt], list(EXAMPLE_RESPONSES))
        if scores is not None:
            self.note(f"{where}: {target} gave one number per response on an example ({source}): "
                      + ", ".join(f"{s:.3g}" for s in scores))

    def example_prompt(self, users: list[str]):
        for stage in users:
            for ds in self.stage_data.get(stage, []):
                if "prompt" in ds.column_names and len(ds):
                    return ds[0]["prompt"], f"the first prompt stages.{stage} reads"
        return EXAMPLE_PROMPT, "a fixed example prompt"


def plural(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


class StubTokenizer:
    """What ``llama_config`` reads from a tokenizer, for checking a preset before the tokenizer exists."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 4096


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
