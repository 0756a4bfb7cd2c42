"""``module:function`` references in a recipe (judges, dataset ``map:``): imported one way, errors naming the field."""

from __future__ import annotations

import importlib

from align.errors import AlignError


def import_function(target, where: str):
    """The callable ``target`` names (``module:function``, or dotted as TRL's docs write it:
    ``trl.rewards.accuracy_reward``); an AlignError naming ``where`` if it is malformed, missing or fails to import."""
    text = str(target)
    module_name, _, attribute = text.partition(":") if ":" in text else text.rpartition(".")
    if not isinstance(target, str) or not module_name.strip() or not attribute.strip():
        raise AlignError(f"{where}: expected 'module:function', e.g. 'align.data.builtin:gold_judge' or "
                         f"'trl.rewards.accuracy_reward'; got {target!r}.")
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or an error raised while the module runs
        raise AlignError(f"{where}: cannot import module {module_name!r} ({type(e).__name__}: {e}). Check the name and "
                         f"that it is installed or importable from the working directory.") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise AlignError(f"{where}: module {module_name!r} has no function {attribute!r}"
                         f"{' (it is not callable)' if function is not None else ''}.")
    return function


def accepted_keywords(function, keywords: dict) -> dict:
    """The ``keywords`` ``function`` can take: all of them if it has ``**kwargs``, else those it names. TRL passes
    every dataset column to a reward function; align's older ``(prompts, completions)`` functions take none."""
    import inspect

    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # a builtin or C callable: positional arguments only
        return {}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return dict(keywords)
    return {k: v for k, v in keywords.items() if k in parameters}


def columns_of(rows: list[dict], skip=("prompt",)) -> dict[str, list]:
    """Row dicts -> ``{column: [value per row]}`` without ``skip``: the keywords TRL gives a reward function."""
    names = [k for k in (rows[0] if rows else {}) if k not in skip]
    return {k: [row.get(k) for row in rows] for k in names}
