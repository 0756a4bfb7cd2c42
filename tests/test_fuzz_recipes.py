"""Recipes fuzzed: hypothesis mutates the test recipes (keys deleted, renamed, retyped; ``${stages.X}`` broken;
``extends``/``sweep`` nested wrongly; unicode, huge numbers, NaN, empty strings injected). ``align validate``
and ``align run --only tokenizer`` must end with exit 0 or 2, never a traceback; exit 2 prints errors naming
a field; a mutation that certainly breaks the recipe must give exit 2 naming the field it broke.

The default run tries ``CI_EXAMPLES`` recipes (seconds); ``-m exhaustive`` tries ``MANY_EXAMPLES``.
"""

from __future__ import annotations

import copy
import math
import os
import re
import shutil
import traceback
from pathlib import Path

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from align import cli  # noqa: E402
from align.recipe import read_yaml  # noqa: E402
from align.stages import STAGE_KINDS, stage_kind as kind_contract  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "tests" / "recipes"
BASES = ["micro.yaml", "micro_sweep.yaml", "micro_full.yaml", "micro_ppo.yaml"]
CI_EXAMPLES, MANY_EXAMPLES = 80, int(os.environ.get("FUZZ_EXAMPLES", 3000))
RUN_EVERY = 4  # `align run --only tokenizer` on every 4th recipe (it may train the tokenizer: 0.1-0.5 s)
TRIED: dict[str, int] = {}

WEIRD = ["", " ", "ü∂ßñ", "🙂" * 3, "\u202e\u200b", "名前", "a" * 300, "${", "}{", "\\", "null", "~", "-1"]
NUMBERS = [10**30, -10**30, 1e308, -1e308, math.inf, -math.inf, math.nan, 0, -1, 2**63]
MISSING_STAGE = "no_such_stage_ü"


def raw_of(name: str) -> dict:
    return read_yaml(RECIPES / name)


def nodes(value, prefix=()):
    """Every (path, value) below the root: mapping keys and list indices."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        yield (*prefix, key), item
        yield from nodes(item, (*prefix, key))


def get(raw, path):
    for key in path:
        raw = raw[key]
    return raw


def field_key(path) -> bool:
    """A key whose name is fixed by align or a library (not a user's name for a stage, dataset or judge)."""
    if len(path) == 1:
        return True
    if path[0] in ("stages", "datasets", "judges"):
        return len(path) == 3 or (len(path) == 4 and path[2] == "args")
    return False


def dotted(path) -> str:
    """As align names a field: stages.eval.judges[0]; a swept value by the field it sweeps."""
    if path[0] == "sweep" and len(path) > 1:
        return str(path[1])
    text = ""
    for p in path:
        text += f"[{p}]" if isinstance(p, int) else f".{p}" if text else str(p)
    return text


def other_type(value, draw):
    if isinstance(value, bool):
        return draw(st.sampled_from(["yes please", [1], {"a": 1}, 3.5]))
    if isinstance(value, (int, float)):
        return draw(st.sampled_from(["many", [value], {"value": value}, "1e-3x"]))
    if isinstance(value, str):
        return draw(st.sampled_from([7, -2.5, [value], {"value": value}, True]))
    if isinstance(value, list):
        return draw(st.sampled_from([{"a": value}, "a, b", 3]))
    if isinstance(value, dict):
        return draw(st.sampled_from([[value], "mapping", 42, True]))
    return draw(st.sampled_from(["text", 1, [1]]))


def numeric_arg(path, value) -> bool:
    return len(path) == 4 and path[0] == "stages" and path[2] == "args" and isinstance(value, (int, float)) \
        and not isinstance(value, bool)


@st.composite
def mutated(draw):
    """(base name, mutated raw recipe, what was done, the text the error must name or None when either is fine)."""
    base = draw(st.sampled_from(BASES))
    raw = raw_of(base)
    all_nodes = list(nodes(raw))
    kind = draw(st.sampled_from(["delete", "rename", "retype", "break_ref", "nest", "inject", "number"]))
    must = None
    if kind == "delete":
        path, _ = draw(st.sampled_from(all_nodes))
        parent = get(raw, path[:-1])
        del parent[path[-1]]
        if len(path) == 3 and path[0] == "stages" and isinstance(get(raw, path[:2]), dict):
            stage_kind = raw_of(base)["stages"][path[1]].get("kind")  # None in a stage that only overrides a base's
            if stage_kind in STAGE_KINDS and (path[2] == "kind" or path[2] in kind_contract(stage_kind).required):
                must = dotted(path[:2])
    elif kind == "rename":
        keyed = [(p, v) for p, v in all_nodes if isinstance(p[-1], str)]
        path, value = draw(st.sampled_from(keyed))
        new = path[-1] + draw(st.sampled_from(["_x", "ü", "🙂", "2", "-"]))
        parent = get(raw, path[:-1])
        parent[new] = parent.pop(path[-1])
        if field_key(path) and path[0] != "sweep":
            must = new
    elif kind == "retype":
        path, value = draw(st.sampled_from(all_nodes))
        get(raw, path[:-1])[path[-1]] = replacement = other_type(value, draw)
        if path == ("seed",) or (len(path) == 3 and path[0] == "stages" and path[2] == "kind"):
            must = dotted(path)
        elif numeric_arg(path, value) and not isinstance(replacement, (int, float)):
            must = dotted(path)
    elif kind == "break_ref":
        refs = [(p, v) for p, v in all_nodes if isinstance(v, str) and v.startswith("${stages.")]
        path, value = draw(st.sampled_from(refs))
        broken = draw(st.sampled_from([f"${{stages.{MISSING_STAGE}}}", "${stages.}", value[:-1], value.replace(
            "stages.", "stage."), value + "x", f"${{stages.{path[1] if path[0] == 'stages' else 'x'}}}"]))
        get(raw, path[:-1])[path[-1]] = broken
        if path[0] == "stages" and broken == f"${{stages.{path[1]}}}":
            must = dotted(path)  # a stage referring to itself
        elif broken != value:
            must = dotted(path) if path[0] != "sweep" else None
    elif kind == "nest":
        stage = draw(st.sampled_from(sorted(raw["stages"])))
        how = draw(st.sampled_from(["extends in a stage", "sweep in a stage", "extends not a path", "extends missing",
                                    "extends itself", "sweep a list", "sweep values not a list", "sweep empty list",
                                    "sweep unknown stage", "sweep inside sweep", "sweep seeds not ints"]))
        if how == "extends in a stage":
            raw["stages"][stage]["extends"], must = "micro.yaml", f"stages.{stage}.extends"
        elif how == "sweep in a stage":
            raw["stages"][stage]["sweep"], must = {"args.learning_rate": [0.1, 0.2]}, f"stages.{stage}.sweep"
        elif how == "extends not a path":
            raw["extends"], must = draw(st.sampled_from([5, ["micro.yaml"], {"path": "micro.yaml"}, True])), "extends"
        elif how == "extends missing":
            raw["extends"], must = "no_such_recipe.yaml", "no_such_recipe.yaml"
        elif how == "extends itself":
            raw["extends"], must = "fuzzed.yaml", "extends"
        elif how == "sweep a list":
            raw["sweep"], must = [{"seed": [0, 1]}], "sweep"
        elif how == "sweep values not a list":
            raw["sweep"], must = {f"stages.{stage}.args.seed": 3}, "sweep"
        elif how == "sweep empty list":
            raw["sweep"], must = {"seed": []}, "sweep"
        elif how == "sweep unknown stage":
            raw["sweep"], must = {f"stages.{MISSING_STAGE}.args.seed": [1, 2]}, "sweep"
        elif how == "sweep inside sweep":
            raw["sweep"], must = {"sweep": {"seed": [0, 1]}}, "sweep"
        else:
            raw["sweep"], must = {"seed": [0, "one", math.nan]}, "sweep.seed"
        kind = f"nest: {how}"
    elif kind == "number":  # a number where a number belongs: NaN, infinities and beyond 64 bits are refused
        numbers = [(p, v) for p, v in all_nodes if isinstance(v, (int, float)) and not isinstance(v, bool)]
        path, value = draw(st.sampled_from(numbers))
        new = draw(st.sampled_from(NUMBERS))
        get(raw, path[:-1])[path[-1]] = new
        if (isinstance(new, float) and not math.isfinite(new)) or (isinstance(new, int) and abs(new) >= 2**63):
            must = dotted(path)
        kind = f"number {new!r} at {dotted(path)}"
    else:  # inject
        leaves = [(p, v) for p, v in all_nodes if not isinstance(v, (dict, list))]
        path, value = draw(st.sampled_from(leaves))
        new = draw(st.sampled_from(WEIRD + NUMBERS))
        get(raw, path[:-1])[path[-1]] = new
        if numeric_arg(path, value) and isinstance(new, str):
            must = dotted(path)
        elif (isinstance(new, float) and not math.isfinite(new)) or (isinstance(new, int) and abs(new) >= 2**63):
            must = dotted(path)
        elif len(path) == 3 and path[0] == "stages" and path[2] == "kind" and new not in STAGE_KINDS:
            must = dotted(path)
        elif path == ("seed",) and not isinstance(new, int):
            must = "seed"
        kind = f"inject {new!r}"[:60]
    return base, raw, kind, must


def write(tmp: Path, raw: dict) -> Path:
    for name in BASES:  # extends: micro.yaml resolves beside the fuzzed recipe
        if not (tmp / name).exists():
            shutil.copy(RECIPES / name, tmp / name)
    path = tmp / "fuzzed.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False, allow_unicode=True))
    return path


def check(recipe: Path, out: Path, case, capsys, run: bool) -> None:
    base, raw, kind, must = case
    for command in (["validate"], ["run", "--only", "tokenizer"]) if run else (["validate"],):
        shutil.rmtree(out, ignore_errors=True)
        try:
            code = cli.main([command[0], str(recipe), "--output-dir", str(out), *command[1:]])
        except SystemExit as e:  # argparse
            code = e.code
        except BaseException as e:  # a traceback: the fuzzer found a bug
            frames = traceback.extract_tb(e.__traceback__)[-3:]
            raise AssertionError(f"{command[0]} raised {type(e).__name__}: {e} after '{kind}' on {base} at "
                                 f"{[f'{Path(f.filename).name}:{f.lineno}' for f in frames]}\n"
                                 f"{yaml.safe_dump(raw, allow_unicode=True)}") from e
        err = capsys.readouterr().err
        where = f"align {command[0]} after '{kind}' on {base} (must name {must!r}): exit {code}\n{err}"
        assert code in (0, 2), where
        assert "Traceback" not in err, where
        if code == 2:
            errors = [line for line in err.splitlines() if line.startswith("align: error: ")]
            assert errors, where
            if must is not None:
                assert names(must, err), where
        elif must is not None and (command[0] == "validate" or must.startswith(("extends", "sweep", "seed"))
                                   or must in ("no_such_recipe.yaml",) or ".tokenizer" in must):
            raise AssertionError(f"exit 0 with a broken recipe: {where}")


def names(must: str, err: str) -> bool:
    """``must`` appears in the errors; a swept stage may be named by its variant (stages.dpo-beta-0.1.args.x)."""
    if must in err:
        return True
    parts = must.split(".")
    if parts[0] != "stages" or len(parts) < 2:
        return False
    pattern = re.escape(f"stages.{parts[1]}") + r"-\S+?" + re.escape("".join(f".{p}" for p in parts[2:]))
    return re.search(pattern, err) is not None


def fuzz(tmp_path_factory, capsys, examples: int, label: str):
    tmp = tmp_path_factory.mktemp(f"fuzz_{label}")
    TRIED[label] = 0

    found: list[str] = []  # FUZZ_COLLECT=1: list every failure instead of stopping at the first (development)

    @settings(max_examples=examples, deadline=None, derandomize=label == "ci", database=None,
              suppress_health_check=list(HealthCheck))
    @given(mutated())
    def one(case):
        TRIED[label] += 1
        recipe = write(tmp, case[1])
        try:
            check(recipe, tmp / "out", case, capsys, run=TRIED[label] % RUN_EVERY == 0)
        except AssertionError as e:
            if not os.environ.get("FUZZ_COLLECT"):
                raise
            found.append(str(e)[:700])

    one()
    with capsys.disabled():
        print(f"\nfuzz ({label}): {TRIED[label]} generated recipes tried, {len(found)} failures")
        for failure in found:
            print("FUZZ FAILURE:", failure, "\n")
    assert not found


def test_fuzzed_recipes_end_in_exit_0_or_2_naming_the_field(tmp_path_factory, capsys):
    fuzz(tmp_path_factory, capsys, CI_EXAMPLES, "ci")


@pytest.mark.exhaustive
def test_thousands_of_fuzzed_recipes(tmp_path_factory, capsys):
    fuzz(tmp_path_factory, capsys, MANY_EXAMPLES, "many")


def test_the_bases_are_valid(tmp_path, capsys):
    for name in BASES:
        recipe = write(tmp_path, raw_of(name))
        check(recipe, tmp_path / "out", (name, raw_of(name), "none", None), capsys, run=False)
        assert cli.main(["validate", str(recipe), "--output-dir", str(tmp_path / "out")]) == 0
        capsys.readouterr()


def test_copying_does_not_mutate_the_base():
    raw = raw_of("micro.yaml")
    assert copy.deepcopy(raw) == raw_of("micro.yaml")
