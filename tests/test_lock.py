"""A run owns its stage folders: two runs on one output folder build each stage once (align.lock)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from align import cli
from align.lock import StageLocks
from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import read_marker

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"
SMALL = ["stages.pretrain.args.max_steps=4", "stages.pretrain.args.save_steps=2", "stages.pretrain.args.eval_steps=4",
         "stages.sft.args.max_steps=2"]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}


def align_run(out: Path, *extra: str) -> subprocess.Popen:
    sets = [arg for s in SMALL for arg in ("--set", s)]
    return subprocess.Popen([sys.executable, "-m", "align", "run", str(MICRO), "--output-dir", str(out), *sets, *extra],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_two_concurrent_runs_on_one_folder_build_each_stage_once_and_match_a_single_run(tmp_path):
    single = tmp_path / "single"
    run_recipe(load_recipe(MICRO, SMALL, output_dir=str(single)), echo=lambda *_: None)

    out = tmp_path / "shared"
    first = align_run(out)
    time.sleep(1.0)
    second = align_run(out)
    logs = [p.communicate(timeout=300)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], "\n".join(logs)
    both = "\n".join(logs)
    for stage in ("tokenizer", "pretrain", "sft"):
        built = [line for line in both.splitlines() if f"{stage} ({stage}): running" in line
                 or f"{stage} ({stage}): resuming" in line]
        assert len(built) == 1, both  # one build; the other run waited, then found it done
        assert both.count(f"{stage} ({stage}): done, skipping") == 1, both
    for stage in ("pretrain", "sft"):
        state = json.loads((out / stage / "trainer_state.json").read_text())
        assert state["global_step"] == state["max_steps"]
        assert read_marker(out / stage)["metrics"]["train_loss"] == pytest.approx(
            read_marker(single / stage)["metrics"]["train_loss"], rel=1e-5)
    assert read_marker(out / "pretrain")["metrics"]["eval_loss"] == pytest.approx(
        read_marker(single / "pretrain")["metrics"]["eval_loss"], rel=1e-5)
    assert sorted(p.name for p in (out / "pretrain").glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    assert not list((out / ".locks").glob("*.holder.json"))  # both runs released their locks


HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from align.lock import StageLocks
    locks = StageLocks()
    locks.hold(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(600)
""")


def holding(stage_dir: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(stage_dir)], env=ENV, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_no_wait_names_the_holder_and_exits_2(tmp_path, capsys):
    out = tmp_path / "run"
    holder = holding(out / "tokenizer")
    try:
        sets = [arg for s in SMALL for arg in ("--set", s)]
        code = cli.main(["run", str(MICRO), "--output-dir", str(out), *sets, "--no-wait"])
    finally:
        holder.kill()
        holder.wait()
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"stage tokenizer in {out} is being built by another run (pid {holder.pid} on " in err, err
    assert not (out / "tokenizer").exists()


def test_a_lock_left_by_a_killed_run_is_taken_over_and_said_so(tmp_path):
    stage = tmp_path / "run" / "pretrain"
    holder = holding(stage)
    lines: list[str] = []
    locks = StageLocks(echo=lines.append, wait=False)
    with pytest.raises(Exception, match="being built by another run"):
        locks.hold(stage)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    with locks:
        locks.hold(stage)
        assert any(f"took over the lock on pretrain left by pid {holder.pid} on " in line and "no longer running" in line
                   for line in lines), lines
        holder_file = json.loads((stage.parent / ".locks" / "pretrain.holder.json").read_text())
        assert holder_file["pid"] == os.getpid()
    assert not (stage.parent / ".locks" / "pretrain.holder.json").exists()


def read_only_mount(folder: Path) -> bool:
    folder.mkdir(parents=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.parametrize("case", ["under a file", "read-only file system"])
def test_an_unwritable_output_dir_is_an_error_naming_it_before_anything_runs(tmp_path, capsys, case):
    if case == "under a file":
        (tmp_path / "file").write_text("not a folder")
        out, why = tmp_path / "file" / "run", "Not a directory"
    else:
        if not read_only_mount(tmp_path / "ro"):
            pytest.skip("cannot mount a read-only tmpfs here (needs root)")
        out, why = tmp_path / "ro", "the file system is read-only"
    try:
        code = cli.main(["run", str(MICRO), "--output-dir", str(out), "--only", "tokenizer"])
    finally:
        if case != "under a file":
            subprocess.run(["umount", "-l", str(out)], capture_output=True)
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"align: error: output_dir {out}: align cannot write there " \
           f"({why}; " in err and "bytes free" in err, err
