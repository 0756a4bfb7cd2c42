"""Every third-party module align imports is a declared dependency: a module-level import in ``dependencies``
(it is needed to import align at all), one inside a function in ``dependencies`` or an optional extra."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def distribution(requirement: str) -> str:
    return normalise(re.split(r"[\s\[<>=~!;,]", requirement, maxsplit=1)[0])


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def imports() -> dict[str, dict[str, bool]]:
    """top-level module -> {file: whether some import of it there is at module level}."""
    found: dict[str, dict[str, bool]] = {}
    for path in sorted((ROOT / "align").rglob("*.py")):
        tree = ast.parse(path.read_text())
        module_level = {id(node) for node in tree.body}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in ("align", "__future__"):
                    continue
                where = found.setdefault(top, {})
                rel = str(path.relative_to(ROOT))
                where[rel] = where.get(rel, False) or id(node) in module_level
    return found


def distributions_of(module: str) -> set[str]:
    return {normalise(d) for d in importlib.metadata.packages_distributions().get(module, [module])}


def test_every_imported_module_is_declared():
    core = {distribution(r) for r in PROJECT["dependencies"]}
    extras = {distribution(r) for reqs in PROJECT["optional-dependencies"].values() for r in reqs}
    problems = []
    for module, files in imports().items():
        dists = distributions_of(module)
        eager = sorted(f for f, top in files.items() if top)
        if eager and not dists & core:
            problems.append(f"{module} ({', '.join(dists)}) is imported at module level in {', '.join(eager)} "
                            f"but is not in [project] dependencies")
        elif not dists & (core | extras):
            problems.append(f"{module} ({', '.join(dists)}) is imported in {', '.join(sorted(files))} but declared "
                            f"nowhere")
    assert problems == []


def test_nothing_is_declared_that_align_never_imports():
    imported = set().union(*(distributions_of(m) for m in imports()))
    unused = [r for r in PROJECT["dependencies"] if distribution(r) not in imported]
    assert unused == []


def test_bitsandbytes_is_an_extra_and_qlora_says_how_to_get_it(monkeypatch):
    from align.errors import AlignError
    from align.models import quantization_config

    assert "bitsandbytes" not in {distribution(r) for r in PROJECT["dependencies"]}
    assert "bitsandbytes" in {distribution(r) for r in PROJECT["optional-dependencies"]["qlora"]}
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # what an environment without the extra gives
    with pytest.raises(AlignError, match=r"stages\.sft\.quantization: 4bit needs bitsandbytes.*"
                                         r"pip install 'align\[qlora\]'"):
        quantization_config("4bit", lora=True, where="stages.sft.quantization")


def test_torch_floor_has_the_public_fully_shard():
    floor = next(r for r in PROJECT["dependencies"] if distribution(r) == "torch")
    assert re.search(r">=\s*2\.(\d+)", floor) and int(re.search(r">=\s*2\.(\d+)", floor)[1]) >= 6
    source = (ROOT / "align" / "ppo" / "sharding.py").read_text()
    assert "from torch.distributed.fsdp import" in source  # the public path, added in torch 2.6
