"""``module:function`` references in a recipe (judges, dataset ``map:``): imported one way, errors naming the field."""

from __future__ import annotations

import importlib

from align.errors import AlignError


def import_function(target, where: str):
    """The callable ``target`` names; an AlignError naming ``where`` if it is malformed, missing or fails to import."""
    module_name, _, attribute = str(target).partition(":")
    if not isinstance(target, str) or not module_name.strip() or not attribute.strip():
        raise AlignError(f"{where}: expected 'module:function', e.g. 'align.data.builtin:gold_judge'; got {target!r}.")
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
