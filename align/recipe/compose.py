"""Recipe composition: ``extends:`` another recipe, and ``sweep:`` values of any field.

``extends: quickstart.yaml`` (relative to this file) starts from that recipe: mappings merge key by key,
a value replaces, ``null`` removes (``stages: {grpo: null}``), new stages are appended in file order.

``sweep:`` maps a dotted recipe path to the values to try::

    sweep:
      stages.ppo.args.kl_coef: [0.02, 0.05, 0.2]
      stages.dpo.args.beta: [0.05, 0.1, 0.3]
      seed: [0, 1, 2]

A swept stage becomes one stage per value (``ppo-kl_coef-0.02`` ...; several paths of one stage: their
product). Everything upstream is untouched, so it is trained once and shared. A stage whose own key names a
swept stage (``model: ${stages.ppo}``) is swept with it; a mapping inside a stage that names one
(``policies: {ppo: ${stages.ppo}}``) lists every variant instead, so one evaluate stage compares them all.
``seed`` changes every stage, so each seed is a whole run in ``<output_dir>/seed-<n>``.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path

from align.errors import AlignError

REF = "${{stages.{}}}"


def merge(base, override):
    """``override`` on top of ``base``: mappings merge recursively, ``None`` deletes, anything else replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def resolve_extends(raw: dict, path: Path, read_yaml, seen: tuple = ()) -> dict:
    """Follow ``extends:`` chains (relative to each file), merging each child over its base."""
    if "extends" not in raw:
        return raw
    parent = raw.pop("extends")
    if not isinstance(parent, str) or not parent.strip():
        raise AlignError(f"{path}: extends: expected the path of another recipe, got {parent!r}.")
    base_path = (path.parent / parent).resolve()
    if base_path in seen:
        raise AlignError(f"{path}: extends: {parent} extends this recipe again (a cycle).")
    if not base_path.is_file():
        raise AlignError(f"{path}: extends: {parent} does not exist (looked for {base_path}).")
    base = resolve_extends(read_yaml(base_path), base_path, read_yaml, (*seen, base_path))
    return merge(base, raw)


def label(value) -> str:
    return str(value).replace("/", "_").replace(" ", "")


def set_path(spec: dict, keys: list[str], value, where: str) -> None:
    node = spec
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise AlignError(f"sweep.{where}: {key} is not a mapping in the recipe.")
    node[keys[-1]] = value


def stage_axes(sweep: dict, stages: dict) -> dict[str, list[tuple[list[str], list]]]:
    """``{stage: [(path within the stage, values), ...]}`` from the ``stages.*`` sweep keys."""
    axes: dict[str, list] = {}
    for key, values in sweep.items():
        parts = str(key).split(".")
        if parts[0] != "stages" or len(parts) < 3 or parts[1] not in stages:
            raise AlignError(f"sweep.{key}: expected seed or stages.<stage>.<field path>, e.g. "
                             f"stages.ppo.args.kl_coef, naming one of the stages ({', '.join(stages)}).")
        if not isinstance(values, list) or not values:
            raise AlignError(f"sweep.{key}: expected a non-empty list of values, got {values!r}.")
        axes.setdefault(parts[1], []).append((parts[2:], values))
    return axes


def referenced(value, names: set) -> set:
    """Which of ``names`` a spec refers to as ``${stages.X}``."""
    if isinstance(value, dict):
        return set().union(*(referenced(v, names) for v in value.values())) if value else set()
    if isinstance(value, list):
        return set().union(*(referenced(v, names) for v in value)) if value else set()
    return {n for n in names if isinstance(value, str) and value.strip() == REF.format(n)}


def fan_out_mappings(value, variants: dict[str, list[str]]):
    """Inside a stage spec, ``{key: ${stages.X}}`` with X swept becomes one entry per variant of X."""
    if isinstance(value, list):
        return [fan_out_mappings(v, variants) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, item in value.items():
        swept = next((x for x in variants if isinstance(item, str) and item.strip() == REF.format(x)), None)
        if swept is None:
            out[key] = fan_out_mappings(item, variants)
            continue
        for variant in variants[swept]:
            out[variant if key == swept else f"{key}{variant[len(swept):]}"] = REF.format(variant)
    return out


def expand_stages(raw: dict, sweep: dict) -> dict:
    """One recipe whose swept stages (and the stages built on them) are replaced by their variants."""
    stages = raw.get("stages") or {}
    if not isinstance(stages, dict):
        raise AlignError(f"stages: expected a mapping of names to specs, got {type(stages).__name__}.")
    axes = stage_axes(sweep, stages)
    variants: dict[str, list[str]] = {}  # a swept stage -> its variants' names
    expanded: dict = {}
    for name, spec in stages.items():
        if not isinstance(spec, dict):
            expanded[name] = spec
            continue
        copies = [(name, copy.deepcopy(spec))]
        if name in axes:
            copies = []
            for combo in itertools.product(*(values for _, values in axes[name])):
                variant = copy.deepcopy(spec)
                for (keys, _), value in zip(axes[name], combo):
                    set_path(variant, keys, value, f"stages.{name}.{'.'.join(keys)}")
                suffix = "-".join(f"{keys[-1]}-{label(value)}" for (keys, _), value in zip(axes[name], combo))
                copies.append((f"{name}-{suffix}", variant))
        # own keys that name a swept stage: this stage is swept with it, one copy per variant
        for upstream in sorted(set().union(*(referenced(spec[k], set(variants)) for k in spec if not isinstance(spec[k], dict)))
                               if spec else set()):
            copies = [(f"{stage_name}{variant[len(upstream):]}", replace_ref(s, upstream, variant))
                      for stage_name, s in copies for variant in variants[upstream]]
        copies = [(n, {k: fan_out_mappings(v, variants) if isinstance(v, dict) else v for k, v in s.items()})
                  for n, s in copies]
        if len(copies) > 1 or copies[0][0] != name:
            variants[name] = [n for n, _ in copies]
        expanded.update(copies)
    for section in ("judges", "datasets"):
        for key, spec in (raw.get(section) or {}).items():
            hit = referenced(spec, set(variants))
            if hit:
                raise AlignError(f"{section}.{key}: refers to {', '.join(sorted(hit))}, which the sweep turns into "
                                 f"several stages; sweep it in separate runs, or refer to a stage that is not swept.")
    return {**raw, "stages": expanded}


def replace_ref(value, old: str, new: str):
    if isinstance(value, dict):
        return {k: replace_ref(v, old, new) for k, v in value.items()}
    if isinstance(value, list):
        return [replace_ref(v, old, new) for v in value]
    if isinstance(value, str) and value.strip() == REF.format(old):
        return REF.format(new)
    return value


def expand(raw: dict) -> list[tuple[str | None, dict]]:
    """The runs a recipe stands for: ``[(None, raw)]`` without a seed sweep, else ``[("seed-0", raw0), ...]``,
    each with its stage sweeps expanded."""
    sweep = raw.pop("sweep", None)
    if sweep is None:
        return [(None, raw)]
    if not isinstance(sweep, dict) or not sweep:
        raise AlignError(f"sweep: expected a mapping of recipe paths to lists of values, got {sweep!r}.")
    sweep = dict(sweep)
    seeds = sweep.pop("seed", None)
    raw = expand_stages(raw, sweep) if sweep else raw
    if seeds is None:
        return [(None, raw)]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise AlignError(f"sweep.seed: expected a list of integers, got {seeds!r}.")
    output_dir = Path(raw.get("output_dir") or Path("runs") / str(raw.get("name")))
    return [(f"seed-{s}", {**copy.deepcopy(raw), "seed": s, "output_dir": str(output_dir / f"seed-{s}")}) for s in seeds]
