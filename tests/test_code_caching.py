"""Caching follows code: a stage's fingerprint includes the source files of the user modules it calls
(judge functions, dataset ``map:`` functions) and align's version; modules beside the recipe or in the
working directory import in every launch mode."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import align
from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import read_marker

FIXTURES = Path(__file__).resolve().parent / "fixtures_runner"
MODULES = ("cc_judge_long", "cc_judge_short", "cc_map_beside", "cc_map_cwd")
CWD_MAP = ('"""A dataset `map:` function in the working directory."""\n\n\n'
           'def whisper(row):\n    return {"text": row["text"].lower()}\n')


@pytest.fixture
def recipes(tmp_path, monkeypatch) -> Path:
    """The fixture recipes and their modules copied to a fresh folder; sys.path and sys.modules restored after."""
    folder = tmp_path / "recipes"
    shutil.copytree(FIXTURES, folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(sys, "path", list(sys.path))  # load_recipe puts the recipe's folder and the cwd on it
    yield folder
    for name in MODULES:
        sys.modules.pop(name, None)


def run(recipe: Path, out: Path) -> dict[str, str]:
    """Run; each stage's log lines (joined)."""
    lines: dict[str, str] = {}

    def echo(line: str) -> None:
        if line.startswith("["):
            stage = line.split("] ", 1)[1].split(" ", 1)[0]
            lines[stage] = f"{lines[stage]}\n{line}" if stage in lines else line
    run_recipe(load_recipe(recipe, output_dir=str(out)), echo=echo)
    return lines


def edit(path: Path, old: str, new: str) -> None:
    path.write_text(path.read_text().replace(old, new))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))  # a later mtime, as a real edit has


def fingerprints(out: Path, stages) -> dict[str, str]:
    return {s: read_marker(out / s)["fingerprint"] for s in stages}


def test_editing_a_judge_reruns_exactly_the_stages_that_use_it(recipes, tmp_path):
    recipe, out = recipes / "judged.yaml", tmp_path / "run"
    stages = ["tokenizer", "pretrain", "prefs_long", "prefs_short", "reward"]
    run(recipe, out)  # the judges are modules beside the recipe, not on sys.path before load_recipe
    before, metrics = fingerprints(out, stages), read_marker(out / "prefs_long")["metrics"]
    assert all(": done, skipping" in line for line in run(recipe, out).values())

    edit(recipes / "cc_judge_long.py", "SCALE = 1.0", "SCALE = 2.5  # edited")
    lines = run(recipe, out)
    for stage in ("tokenizer", "pretrain", "prefs_short"):
        assert ": done, skipping" in lines[stage], lines[stage]
    assert ": re-runs: code changed: cc_judge_long (judge long) -> " in lines["prefs_long"], lines["prefs_long"]
    assert ": re-runs: input prefs_long changed -> " in lines["reward"], lines["reward"]
    after = fingerprints(out, stages)
    assert [s for s in stages if after[s] != before[s]] == ["prefs_long", "reward"]
    # the re-run used the edited function (same samples, scores x2.5)
    rescored = read_marker(out / "prefs_long")["metrics"]["mean_chosen_score"]
    assert rescored == pytest.approx(2.5 * metrics["mean_chosen_score"])

    edit(recipe, 'long:  {function: "cc_judge_long:score"}',
         'long:  {function: "cc_judge_long:score", tie_tolerance: 0}')
    lines = run(recipe, out)
    assert ": re-runs: judge long changed -> " in lines["prefs_long"] and ": done, skipping" in lines["prefs_short"]


def test_map_modules_beside_the_recipe_and_in_the_cwd_import_and_are_fingerprinted(recipes, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    (work / "cc_map_cwd.py").write_text(CWD_MAP)
    monkeypatch.chdir(work)
    recipe, out = recipes / "mapped.yaml", tmp_path / "run"
    lines = run(recipe, out)
    assert all(": running -> " in line and ": finished in " in line for line in lines.values())
    vocab = (out / "tok_beside" / "tokenizer.json").read_text()
    assert any(w.isupper() and len(w) > 3 for w in vocab.split('"'))

    edit(recipes / "cc_map_beside.py", ".upper()", ".upper().strip()")
    lines = run(recipe, out)
    assert "re-runs: code changed: cc_map_beside (dataset beside map)" in lines["tok_beside"], lines["tok_beside"]
    assert ": done, skipping" in lines["tok_cwd"]

    align_version = align.__version__
    monkeypatch.setattr(align.version, "__version__", "99.0")  # its one owner; the run state reads it there
    lines = run(recipe, out)
    assert all(f"re-runs: code changed: align {align_version} -> 99.0" in line for line in lines.values()), lines


@pytest.mark.parametrize("launcher", ["console script", "python -m"])
def test_modules_import_in_every_launch_mode(recipes, tmp_path, launcher):
    work = tmp_path / "work"
    work.mkdir()
    (work / "cc_map_cwd.py").write_text(CWD_MAP)
    script = Path(sys.executable).parent / "align"
    if launcher == "console script" and not script.exists():
        pytest.skip("the align console script is not installed next to python")
    command = [str(script)] if launcher == "console script" else [sys.executable, "-m", "align"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([*command, "run", str(recipes / "mapped.yaml"), "--output-dir", str(tmp_path / "run")],
                          cwd=work, env={**env, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tok_beside (tokenizer): finished" in proc.stdout and "tok_cwd (tokenizer): finished" in proc.stdout
