"""One rule, one place: align's modules import in one direction (no cycles, imports inside functions
included), the stage kinds declare their contract, and ``align validate`` prints the very plan that
``align run`` executes."""

import ast
import json
from pathlib import Path

import pytest

from align.stages import STAGE_KINDS, stage_kind

ALIGN = Path(__file__).resolve().parents[1] / "align"
MICRO = Path(__file__).resolve().parent / "recipes" / "micro.yaml"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ALIGN.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module -> the align modules it imports, read from the source: every ``import`` statement anywhere in the
    file (inside functions too; not under ``if TYPE_CHECKING:``, which never runs), and the modules a file that
    calls ``importlib.import_module`` names as strings (the stage registry). ``from a.b import c`` is an edge to ``a.b.c`` when that is a module, else to
    ``a.b``; a package's ``__init__`` runs first at import time, but is not counted as imported by its modules."""
    files = {module_name(p): p for p in ALIGN.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        tree = ast.parse(path.read_text(), str(path))
        by_name = any(isinstance(n, ast.Attribute) and n.attr == "import_module" for n in ast.walk(tree))
        skipped = {id(n) for block in ast.walk(tree) if isinstance(block, ast.If) and "TYPE_CHECKING" in ast.unparse(block.test)
                   for statement in block.body for n in ast.walk(statement)}  # never runs
        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            targets = []
            if by_name and isinstance(node, ast.Constant) and node.value in files:
                targets = [node.value]  # importlib.import_module(<a name it spells>), e.g. the stage registry
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join([*package.split(".")[:len(package.split(".")) - node.level + 1], *filter(None, [base])])
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in files else base for alias in node.names]
            for target in targets:
                while target and target not in files:  # `import align.eval.judges.x` style: the module part
                    target = target.rpartition(".")[0]
                if target and target != name:
                    edges.add(target)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_sees_imports_inside_functions():
    graph = import_graph()
    assert "align.stages.context" in graph["align.runner"]  # top level
    assert "align.data.loading" in graph["align.state"]  # inside dataset_fingerprint
    assert "align.stages.evaluate" in graph["align.stages"]  # the stage registry, imported by name
    assert "align.recipe" not in graph["align.state"]  # only under TYPE_CHECKING
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_align_modules():
    assert cycles(import_graph()) == []


def test_orchestrator_is_imported_by_the_cli_and_the_package_only():
    """Readers of run state import ``align.state``; only the entry points import the runner."""
    graph = import_graph()
    assert {m for m, edges in graph.items() if "align.runner" in edges} <= {"align", "align.cli"}
    assert "align.validate" not in graph["align.runner"] and "align.runner" not in graph["align.validate"]


def stage_kind_comparisons(path: Path) -> list[str]:
    """``x == "<stage kind>"`` (or ``in (...)``) anywhere in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            for operand in [node.left, *node.comparators]:
                values = operand.elts if isinstance(operand, (ast.Tuple, ast.List, ast.Set)) else [operand]
                found += [f"{path.name}:{node.lineno}" for v in values
                          if isinstance(v, ast.Constant) and v.value in STAGE_KINDS]
    return found


@pytest.mark.parametrize("module", ["validate.py", "runner.py", "state.py", "recipe/__init__.py", "stages/__init__.py",
                                    "stages/context.py", "stages/training.py", "fields.py", "cli.py"])
def test_no_stage_kind_branch_outside_the_stage_files(module):
    assert stage_kind_comparisons(ALIGN / module) == []


@pytest.mark.parametrize("kind", list(STAGE_KINDS))
def test_each_stage_kind_declares_a_consistent_contract(kind):
    contract = stage_kind(kind)
    keys = set(contract.keys)
    assert set(contract.required) <= keys
    assert set(contract.dataset_keys) <= keys and set(contract.judge_keys) <= keys
    assert set(contract.expected) <= set(contract.dataset_keys)
    assert set(contract.types) <= keys and all(isinstance(t, type) for t in contract.types.values())
    assert (contract.generation_defaults is None) == ("generation" not in keys)
    assert contract.check({}, f"stages.{kind}") is not None  # its own check runs on any spec without loading


def test_unknown_stage_kind_names_the_field():
    from align.errors import AlignError

    with pytest.raises(AlignError, match=r"stages\.x\.kind: unknown stage kind 'sftt'\. Did you mean 'sft'\?"):
        stage_kind("sftt", where="stages.x.kind")


# ---------------------------------------------------------------- the plan validate prints is the one run executes

@pytest.fixture
def fake_stages(monkeypatch):
    """Every stage kind's run replaced by one that records its name and trains nothing."""
    from align.stages import StageKind

    ran: list[str] = []

    def run(self, ctx):
        ran.append(ctx.name)
        (ctx.out_dir / "config.json").write_text("{}")
        (ctx.out_dir / "tokenizer_config.json").write_text("{}")
        return {"fake": 1}

    monkeypatch.setattr(StageKind, "run", run)
    return ran


def plan_and_run(path, overrides=(), **selection):
    """The plan ``check_recipe`` (what `align validate` prints) gives, then what ``run_recipe`` does."""
    from align.recipe import load_recipe
    from align.runner import run_recipe
    from align.validate import check_recipe

    recipe = load_recipe(path, list(overrides))
    planned = check_recipe(recipe, **selection).plan
    lines: list[str] = []
    results = run_recipe(recipe, echo=lines.append, **selection)
    return planned, results, lines


def executed(planned, results, lines) -> tuple[dict, dict]:
    """(plan, run): per selected stage, cached / run and whether the run resumed an interrupted attempt."""
    said = {step.stage: (step.action, step.reason == "resume") for step in planned if step.action != "skip"}
    did = {name: ("cached" if metrics.get("cached") else "run",
                  any(line.startswith("[") and line.split("] ")[1].startswith(f"{name} ") and "resuming" in line
                      for line in lines))
           for name, metrics in results.items()}
    return said, did


def test_validate_prints_the_plan_run_executes_on_a_half_finished_run(tmp_path, fake_stages):
    """tokenizer finished, pretrain interrupted (started with the same spec, never finished), sft never started:
    then a finished run whose tokenizer changes (everything after it runs: upstream), then a --from."""
    import yaml

    from align.recipe import load_recipe
    from align.state import STARTED, spec_hash, write_marker

    raw = yaml.safe_load(MICRO.read_text())
    raw["output_dir"] = str(tmp_path / "run")
    path = tmp_path / "micro.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    recipe = load_recipe(path)
    tokenizer, pretrain = recipe.stages["tokenizer"], recipe.stages["pretrain"]
    tokenizer.out_dir.mkdir(parents=True)
    (tokenizer.out_dir / "tokenizer_config.json").write_text("{}")
    from align.state import fingerprint_parts, short_hash

    parts = fingerprint_parts(recipe, tokenizer)
    write_marker(tokenizer.out_dir, tokenizer, short_hash(parts), parts, {})
    pretrain.out_dir.mkdir(parents=True)
    (pretrain.out_dir / STARTED).write_text(json.dumps({"spec_hash": spec_hash(recipe, pretrain)}))
    (pretrain.out_dir / "checkpoint-2").mkdir()

    planned, results, lines = plan_and_run(path)
    said, did = executed(planned, results, lines)
    assert said == did == {"tokenizer": ("cached", False), "pretrain": ("run", True), "sft": ("run", False)}
    assert fake_stages == ["pretrain", "sft"]

    fake_stages.clear()
    planned, results, lines = plan_and_run(path, ["stages.tokenizer.vocab_size=500"])
    said, did = executed(planned, results, lines)
    assert [s.reason for s in planned] == ["changed", "upstream", "upstream"]
    assert said == did == {name: ("run", False) for name in ("tokenizer", "pretrain", "sft")}

    fake_stages.clear()
    planned, results, lines = plan_and_run(path, ["stages.tokenizer.vocab_size=500"], from_stage="pretrain")
    said, did = executed(planned, results, lines)
    assert [(s.action, s.reason) for s in planned] == [("skip", "cached"), ("run", "forced"), ("run", "upstream")]
    assert said == did == {"pretrain": ("run", False), "sft": ("run", False)} and fake_stages == ["pretrain", "sft"]

    fake_stages.clear()
    planned, results, lines = plan_and_run(path, ["stages.tokenizer.vocab_size=500"])
    said, did = executed(planned, results, lines)
    assert said == did == {name: ("cached", False) for name in ("tokenizer", "pretrain", "sft")} and fake_stages == []


# ---------------------------------------------------------------- one definition per rule, whoever asks

def test_the_judge_kind_rule_is_the_same_for_the_recipe_and_the_factory():
    from align.errors import AlignError
    from align.eval.judge_factory import build_judge, judge_problems
    from align.recipe import build_recipe

    spec = {"funcion": "m:f"}
    raw = {"name": "r", "judges": {"j": spec}, "stages": {"t": {"kind": "tokenizer", "dataset": {"builtin": "reviews"}}}}
    with pytest.raises(AlignError) as from_recipe:
        build_recipe(raw)
    with pytest.raises(AlignError) as from_factory:
        build_judge("j", spec)
    assert str(from_recipe.value) == str(from_factory.value) == judge_problems(spec, "judges.j")[0]
    assert str(from_recipe.value).startswith("judges.j: expected exactly one of function, reward_model, llm, openai")


def test_options_are_checked_by_one_rule_at_validate_and_at_run():
    from types import SimpleNamespace

    from align.errors import AlignError
    from align.fields import option_problems
    from align.recipe import load_recipe
    from align.stages.context import StageContext

    recipe = load_recipe(MICRO)
    stage = recipe.stages["sft"]
    stage.spec["generation"] = {"temprature": 1.0, "max_new_tokens": "many"}
    defaults = {"temperature": 1.0, "max_new_tokens": 64}
    problems = option_problems(stage.spec["generation"], defaults, "stages.sft.generation")
    assert problems == ["stages.sft.generation.temprature: unknown key. Did you mean 'temperature'? Valid: "
                        "max_new_tokens, temperature.",
                        "stages.sft.generation.max_new_tokens: expected int (default 64), got 'many' (str)."]
    with pytest.raises(AlignError) as raised:
        StageContext(recipe, stage, SimpleNamespace()).options("generation", defaults)
    assert str(raised.value) == "\n".join(problems)


def test_a_stage_reads_its_datasets_the_way_the_recipe_resolves_them():
    from align.recipe import load_recipe

    recipe = load_recipe(MICRO)
    assert recipe.dataset_spec(recipe.stages["sft"], "dataset") == ("chat", {"builtin": "reviews", "split": "sft",
                                                                              "size": 64})
    assert recipe.stages["pretrain"].dataset_keys == ("dataset", "eval_dataset") and recipe.stages["sft"].judges == []


def test_run_recipe_runs_the_stages_own_checks_once(tmp_path, fake_stages):
    """Called directly, ``run_recipe`` runs every selected stage's checks before touching a folder; ``align run``
    has run them (with the rest of ``align validate``'s) and says so with ``checked=True``."""
    from align.errors import AlignError
    from align.recipe import load_recipe
    from align.runner import run_recipe

    recipe = load_recipe(MICRO, ["stages.sft.args.learning_rate=fast"], output_dir=str(tmp_path / "run"))
    with pytest.raises(AlignError, match=r"stages\.sft\.args\.learning_rate: expected float \(SFTConfig"):
        run_recipe(recipe, echo=lambda line: None)
    assert not (tmp_path / "run").exists() and fake_stages == []
    run_recipe(recipe, echo=lambda line: None, checked=True)
    assert fake_stages == ["tokenizer", "pretrain", "sft"]
