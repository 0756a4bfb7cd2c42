"""Recipe values against the fields of a library dataclass (``args:`` -> SFTConfig, ``lora:`` -> LoraConfig).

One owner for "is this YAML value of the field's type": recipe loading refuses unknown keys with it, and
``align validate`` / ``align run`` collect wrong types with it, each once per command.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing

from align.errors import AlignError, suggest


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


def unknown_fields(values: dict, cls, where: str, *, aliases: dict | None = None) -> list[str]:
    """One problem per key of ``values`` that is not a field of ``cls``, with the closest field (or a known alias)."""
    valid = {f.name for f in dataclasses.fields(cls)}
    return [f"{where}.{key}: not a field of {cls.__name__}."
            + (f" Did you mean {aliases[key]!r}?" if key in (aliases or {}) else suggest(key, valid))
            for key in values if key not in valid]


def field_problems(values: dict, cls, where: str, *, unknown: bool, aliases: dict | None = None) -> list[str]:
    """Each value of ``values`` against ``cls``'s field annotation; with ``unknown`` also keys it lacks."""
    hints = type_hints(cls)
    valid = {f.name for f in dataclasses.fields(cls)}
    problems = unknown_fields(values, cls, where, aliases=aliases) if unknown else []
    for key, value in values.items():
        tp = hints.get(key) if key in valid else None
        if tp is not None and not matches(value, tp):
            problems.append(f"{where}.{key}: expected {describe_type(tp)} ({cls.__name__}.{key}), got {value!r} "
                            f"({type(value).__name__}).")
    return problems


def check_fields(values, cls, where: str, what: str) -> None:
    """``values`` must be a mapping whose keys are all fields of ``cls``; the first stranger is an AlignError."""
    if not isinstance(values, dict):
        raise AlignError(f"{where}: expected a mapping of {what} fields, got {values!r}.")
    problems = unknown_fields(values, cls, where)
    if problems:
        raise AlignError(problems[0])


def option_problems(values, defaults: dict, where: str) -> list[str]:
    """A mapping of options (e.g. ``generation:``) against their defaults: unknown keys, values of another type."""
    if not isinstance(values, dict):
        return [f"{where}: expected a mapping with keys among {sorted(defaults)}, got {values!r}."]
    problems = []
    for key, value in values.items():
        if key not in defaults:
            problems.append(f"{where}.{key}: unknown key.{suggest(key, defaults)} Valid: {', '.join(sorted(defaults))}.")
        elif not matches(value, type(defaults[key])):
            problems.append(f"{where}.{key}: expected {type(defaults[key]).__name__} (default {defaults[key]!r}), "
                            f"got {value!r} ({type(value).__name__}).")
    return problems
