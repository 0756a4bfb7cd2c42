"""YAML recipe -> validated Recipe: named datasets, judges and stages, references, overrides.

A stage names another stage's output as ``${stages.<name>}``; that string resolves to a
``StageRef`` (a ``str`` holding the output folder) and makes the other stage a dependency.
Every check here runs before any training, so ``align validate`` catches mistakes in seconds.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from align.errors import AlignError, suggest
from align.refs import REF_PATTERN, UNQUOTED_REF, StageRef, plain

TOP_LEVEL_KEYS = {"name", "description", "seed", "output_dir", "datasets", "judges", "stages", "tracking"}
STAGE_COMMON_KEYS = {"kind", "args"}


class DuplicateKeyError(yaml.YAMLError):
    """A mapping names the same key twice; YAML itself would keep the last value silently."""

    def __init__(self, duplicates: list[tuple[str, str, int, int]]):
        self.duplicates = duplicates  # (where, key, first line, second line), lines from 1
        super().__init__("; ".join(
            f"key {key!r} appears twice {'in ' + where if where else 'at the top level'} "
            + (f"(lines {first} and {second})" if first != second else f"(both on line {first})")
            for where, key, first, second in duplicates))


class Loader(yaml.SafeLoader):
    """A strict SafeLoader: duplicate keys anywhere are an error naming the key and both lines.

    Also: YAML 1.1 reads ``1e-3`` as a string; every recipe writes learning rates that way (resolver below).
    """

    def __init__(self, stream):
        super().__init__(stream)
        self.mapping_paths: dict[int, str] = {}
        self.duplicates: list[tuple[str, str, int, int]] = []

    def construct_document(self, node):
        self.mapping_paths = {}
        self.duplicates = []
        self.name_mappings(node, "", set())
        data = super().construct_document(node)
        if self.duplicates:
            raise DuplicateKeyError(self.duplicates)
        return data

    def name_mappings(self, node, path: str, seen: set) -> None:
        """Record each mapping's dotted path (``stages.sft.args``) for the error message."""
        if id(node) in seen:  # an alias seen before
            return
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            self.mapping_paths[id(node)] = path
            for key_node, value_node in node.value:
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                self.name_mappings(value_node, f"{path}.{key}" if path else str(key), seen)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.name_mappings(item, f"{path}[{i}]", seen)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, _ in node.value:  # before merge keys (<<) are flattened in: overriding them is fine
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        self.duplicates.append((self.mapping_paths.get(id(node), ""), str(key), first_line[key], line))
                    else:
                        first_line[key] = line
                except TypeError:  # an unhashable key: SafeLoader reports it below
                    continue
        return super().construct_mapping(node, deep=deep)


Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |\.[0-9_]+(?:[eE][-+][0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


@dataclass
class Stage:
    name: str
    kind: str
    spec: dict  # resolved: references replaced by StageRef
    out_dir: Path
    deps: list[str] = field(default_factory=list)
    dataset_keys: tuple[str, ...] = ()  # its kind's keys that name datasets (the run state fingerprints them)
    judges: list[str] = field(default_factory=list)  # the recipe judges it uses


@dataclass
class Recipe:
    name: str
    seed: int
    output_dir: Path
    datasets: dict[str, dict]
    judges: dict[str, dict]
    stages: dict[str, Stage]
    source: Path | None = None
    raw: dict = field(default_factory=dict)
    variant: str | None = None  # e.g. "seed-1" for one run of a seed sweep
    tracking: dict = field(default_factory=dict)  # ``tracking:`` (align.tracking): trackers every stage logs to

    def stage_names(self) -> list[str]:
        return list(self.stages)

    def dataset_spec(self, stage: Stage, key: str) -> tuple[str, dict]:
        """The dataset ``stage.spec[key]`` names, as (name, spec the data layer takes): a recipe dataset by
        name, another stage's output (``${stages.X}``), or an inline spec (named by its key)."""
        value = stage.spec[key]
        if isinstance(value, StageRef):
            return value.stage, {"stage_dir": str(value)}
        if isinstance(value, str):
            return value, plain(self.datasets[value])
        return key, plain(value)


def apply_override(raw: dict, assignment: str) -> None:
    """``--set a.b.c=value``: value parsed as YAML; the named stage/dataset/judge must exist."""
    if "=" not in assignment:
        raise AlignError(f"--set {assignment!r}: expected dotted.key=value, e.g. --set stages.sft.args.learning_rate=1e-3")
    key, value_text = assignment.split("=", 1)
    parts = key.strip().split(".")
    try:
        value = yaml.load(value_text, Loader=Loader)
    except yaml.YAMLError as e:
        raise AlignError(f"--set {key}: cannot parse {value_text!r} as a YAML value: {e}") from None
    node = raw
    for depth, part in enumerate(parts[:-1]):
        if not isinstance(node, dict):
            raise AlignError(f"--set {key}: {'.'.join(parts[:depth])} is not a mapping.")
        if part not in node:
            if depth <= 1:  # a typo in a top-level section or a stage/dataset/judge name
                where = ".".join(parts[:depth]) or "the recipe"
                raise AlignError(f"--set {key}: {where} has no {part!r}.{suggest(part, node)}")
            node[part] = {}
        node = node[part]
    if not isinstance(node, dict):
        raise AlignError(f"--set {key}: {'.'.join(parts[:-1])} is not a mapping.")
    node[parts[-1]] = value


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        raise AlignError(f"recipe {path} does not exist.")
    # `{model: ${stages.sft}}` is not valid YAML flow syntax unless quoted; quote references for the user.
    text = UNQUOTED_REF.sub(r'"\1"', path.read_text())
    try:
        raw = yaml.load(text, Loader=Loader)
    except DuplicateKeyError as e:
        raise AlignError(f"recipe {path}: {e}; YAML would silently keep only the last value. Remove one of "
                         f"{'them' if len(e.duplicates) == 1 else 'each pair'}.") from None
    except yaml.YAMLError as e:
        raise AlignError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise AlignError(f"recipe {path}: expected a mapping with name, output_dir and stages at the top level.")
    return raw


def load_recipes(path: str | Path, overrides: list[str] = (), *, output_dir: str | None = None) -> list[Recipe]:
    """Read a recipe (following ``extends:``), apply ``--set`` overrides, expand ``sweep:`` and validate: one
    Recipe per run (several only for a seed sweep). Nothing is trained or written."""
    import os
    import sys

    from align.recipe.compose import expand, resolve_extends

    raw = resolve_extends(read_yaml(path), Path(path).resolve(), read_yaml)
    # `module:function` references (judges, dataset map) may name a file beside the recipe or in the
    # working directory, whichever way align was launched (console script, python -m, accelerate launch).
    for folder in (os.getcwd(), str(Path(path).resolve().parent)):
        if folder not in sys.path:
            sys.path.insert(0, folder)
    for assignment in overrides:
        apply_override(raw, assignment)
    if output_dir is not None:
        raw["output_dir"] = output_dir
    check_top_level(raw, TOP_LEVEL_KEYS | {"sweep"})  # before sweeps expand: a misspelt key is named as such
    recipes = []
    for variant, expanded in expand(raw):
        recipe = build_recipe(expanded)
        recipe.source, recipe.variant = Path(path), variant
        recipes.append(recipe)
    return recipes


def load_recipe(path: str | Path, overrides: list[str] = (), *, output_dir: str | None = None) -> Recipe:
    """``load_recipes`` for a recipe that is one run (no seed sweep)."""
    recipes = load_recipes(path, overrides, output_dir=output_dir)
    if len(recipes) > 1:
        raise AlignError(f"{path}: sweeps seeds, so it is {len(recipes)} runs; load it with load_recipes.")
    return recipes[0]


def build_recipe(raw: dict) -> Recipe:
    from align.stages import stage_kind

    raw = copy.deepcopy(raw)
    check_top_level(raw, TOP_LEVEL_KEYS)
    check_numbers(raw, "")
    for key in ("name", "stages"):
        if key not in raw:
            raise AlignError(f"recipe: missing required key {key!r}.")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise AlignError(f"seed: expected an integer, got {seed!r}.")
    output_dir = Path(raw.get("output_dir") or Path("runs") / str(raw["name"]))
    datasets = section(raw, "datasets")
    judges = section(raw, "judges")
    stages_raw = section(raw, "stages")
    if not stages_raw:
        raise AlignError("stages: the recipe has no stages.")
    for name, spec in datasets.items():
        if not isinstance(spec, dict):
            raise AlignError(f"datasets.{name}: expected a mapping like {{builtin: reviews, split: sft}} or {{path: data.jsonl}}, got {spec!r}.")
        check_dataset_spec(spec, f"datasets.{name}")
    from align.eval.judge_factory import judge_kind

    for name, spec in judges.items():
        judge_kind(spec, f"judges.{name}")

    stages: dict[str, Stage] = {}
    for name, spec in stages_raw.items():
        where = f"stages.{name}"
        if not isinstance(spec, dict) or "kind" not in spec:
            raise AlignError(f"{where}: expected a mapping with a 'kind' (one of the stage kinds), got {spec!r}.")
        kind = stage_kind(spec["kind"], where=f"{where}.kind")
        allowed = STAGE_COMMON_KEYS | set(kind.keys)
        for key in spec:
            if key not in allowed:
                raise AlignError(f"{where}.{key}: a {spec['kind']} stage has no key {key!r}.{suggest(key, allowed)} "
                                 f"Valid keys: {', '.join(sorted(allowed))}.")
        for key in kind.required:
            if key not in spec:
                raise AlignError(f"{where}: a {spec['kind']} stage needs {key!r} ({kind.keys[key]}).")
        deps: list[str] = []
        resolved = resolve_refs(spec, where, stages, output_dir, deps)
        for key in kind.dataset_keys:
            if key in resolved:
                deps += dataset_deps(resolved[key], f"{where}.{key}", datasets, stages, output_dir)
        for key in kind.judge_keys:
            if key in resolved:
                deps += judge_deps(resolved[key], f"{where}.{key}", judges, stages, output_dir)
        check_args(kind, resolved.get("args"), where)
        stages[name] = Stage(name, spec["kind"], resolved, output_dir / name, sorted(set(deps)), kind.dataset_keys,
                             kind.judge_names(resolved))
    datasets = {n: resolve_refs(s, f"datasets.{n}", stages, output_dir, []) for n, s in datasets.items()}
    judges = {n: resolve_refs(s, f"judges.{n}", stages, output_dir, []) for n, s in judges.items()}
    from align.tracking import check as check_tracking

    return Recipe(str(raw["name"]), seed, output_dir, datasets, judges, stages, raw=raw,
                  tracking=check_tracking(raw.get("tracking")))


def check_top_level(raw: dict, allowed: set) -> None:
    for key in raw:
        if key not in allowed:
            raise AlignError(f"recipe: unknown top-level key {key!r}.{suggest(key, allowed)} "
                             f"Valid keys: {', '.join(sorted(allowed))}.")


INT64 = 2**63 - 1


def check_numbers(value: Any, where: str) -> None:
    """NaN, infinities and integers beyond 64 bits are never a setting: name them before a library trips on them
    (a NaN learning rate trains silently to NaN; a huge max_steps overflows inside torch)."""
    if isinstance(value, dict):
        for key, item in value.items():
            check_numbers(item, f"{where}.{key}" if where else str(key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            check_numbers(item, f"{where}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise AlignError(f"{where}: {value} is not a usable number; give a finite value.")
    elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > INT64:
        raise AlignError(f"{where}: {value} is out of range (integers must fit in 64 bits, at most {INT64}).")


def section(raw: dict, key: str) -> dict:
    value = raw.get(key) or {}
    if not isinstance(value, dict):
        raise AlignError(f"{key}: expected a mapping of names to specs, got {type(value).__name__}.")
    return value


def resolve_refs(value: Any, where: str, stages: dict[str, Stage], output_dir: Path, deps: list[str]) -> Any:
    """Replace ``${stages.X}`` with X's output folder; X must be defined earlier in the file."""
    if isinstance(value, dict):
        return {k: resolve_refs(v, f"{where}.{k}", stages, output_dir, deps) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, f"{where}[{i}]", stages, output_dir, deps) for i, v in enumerate(value)]
    if isinstance(value, str) and "${" in value:
        match = REF_PATTERN.match(value.strip())
        if not match:
            raise AlignError(f"{where}: cannot read reference {value!r}; write ${{stages.<name>}} as the whole value.")
        target = match.group(1)
        if target not in stages:
            raise AlignError(f"{where}: {value} refers to a stage that is not defined before this one."
                             f"{suggest(target, stages)} Stages run in file order, so a stage can only use earlier ones.")
        deps.append(target)
        return StageRef(str(output_dir / target), target)
    return value


def dataset_deps(value, where, datasets, stages, output_dir) -> list[str]:
    """A dataset value is a recipe dataset name, a ${stages.X} reference or an inline spec."""
    deps: list[str] = []
    if isinstance(value, StageRef):
        deps.append(value.stage)
    elif isinstance(value, str):
        if value not in datasets:
            raise AlignError(f"{where}: no dataset named {value!r} in the recipe's datasets.{suggest(value, datasets)}"
                             f" Defined: {', '.join(datasets) or 'none'}.")
        resolve_refs(datasets[value], f"datasets.{value}", stages, output_dir, deps)
    elif isinstance(value, dict):
        check_dataset_spec(value, where)
    else:
        raise AlignError(f"{where}: expected a dataset name, a ${{stages.X}} reference or a dataset spec, got {value!r}.")
    return deps


def judge_deps(value, where, judges, stages, output_dir) -> list[str]:
    deps: list[str] = []
    for name in value if isinstance(value, list) else [value]:
        if not isinstance(name, str) or name not in judges:
            raise AlignError(f"{where}: no judge named {name!r} in the recipe's judges.{suggest(name, judges)}"
                             f" Defined: {', '.join(judges) or 'none'}.")
        resolve_refs(judges[name], f"judges.{name}", stages, output_dir, deps)
    return deps


def check_dataset_spec(spec: dict, where: str) -> None:
    from align.data.loading import check_spec

    check_spec(spec, where)


def check_args(kind, args, where: str) -> None:
    """Every ``args:`` key must be a field of the stage's library config class (types: ``align validate``)."""
    from align.fields import check_fields

    if args is None:
        return
    if kind.config_class is None:
        if not isinstance(args, dict):
            raise AlignError(f"{where}.args: expected a mapping of {kind.name} config fields, got {args!r}.")
        raise AlignError(f"{where}.args: a {kind.name} stage takes no args.")
    check_fields(args, kind.config_class(), f"{where}.args", f"{kind.name} config")
