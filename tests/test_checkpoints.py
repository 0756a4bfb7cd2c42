"""Checkpoints are complete or absent: a checkpoint cut short (truncated file, full disk, a save killed
before its manifest) is set aside on resume and the run ends as an uninterrupted one would."""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import transformers

from align import cli
from align.checkpoints import MANIFEST, disk_error, last_complete, problem
from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import MARKER, read_marker

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"
STEPS = ["stages.pretrain.args.max_steps=8", "stages.pretrain.args.save_steps=3", "stages.pretrain.args.eval_steps=8"]
ONLY = ["tokenizer", "pretrain"]
# a checkpoint's files (align writes the manifest last); every one is truncated in turn
FILES = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json",
         "training_args.bin", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "chat_template.jinja", MANIFEST]


def run(out: Path, echo=None) -> dict:
    return run_recipe(load_recipe(MICRO, STEPS, output_dir=str(out)), only=ONLY, echo=echo or (lambda *_: None))


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> dict:
    return run(tmp_path_factory.mktemp("full") / "run")["pretrain"]


@pytest.fixture(scope="module")
def cut(tmp_path_factory) -> Path:
    """A pretrain stage killed at step 7: checkpoint-3 and checkpoint-6 on disk, no marker."""
    out = tmp_path_factory.mktemp("cut") / "run"
    original, calls = transformers.Trainer.training_step, {"n": 0}

    def dies_at_step_7(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    transformers.Trainer.training_step = dies_at_step_7
    try:
        with pytest.raises(KeyboardInterrupt):
            run(out)
    finally:
        transformers.Trainer.training_step = original
    assert sorted(p.name for p in (out / "pretrain").glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6"]
    assert read_marker(out / "pretrain") is None
    return out


def copy_of(cut: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(cut, out)
    return out


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def resumes_as_uninterrupted(out: Path, full: dict, echo_lines: list[str], cut_at: str = "checkpoint-6") -> None:
    """``echo_lines``: the run's lines and the align logger's records (caplog.messages)."""
    stage = out / "pretrain"
    assert (stage / f"incomplete-{cut_at}").is_dir()  # set aside, not deleted
    assert any(f"{cut_at} in {stage} is incomplete (" in line and f"set aside as incomplete-{cut_at}" in line
               for line in echo_lines), echo_lines
    state = json.loads((stage / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert len(steps) == len(set(steps))
    assert read_marker(stage)["metrics"]["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-4)


def test_every_file_of_a_checkpoint_truncated_in_turn_makes_it_incomplete(cut, tmp_path):
    source = cut / "pretrain" / "checkpoint-6"
    assert sorted(p.name for p in source.iterdir()) == sorted(FILES)
    assert problem(source) is None
    for name in FILES:
        stage = tmp_path / name / "pretrain"
        shutil.copytree(cut / "pretrain", stage)
        truncate(stage / "checkpoint-6" / name)
        assert problem(stage / "checkpoint-6") is not None, name
        lines: list[str] = []
        assert last_complete(stage, echo=lines.append) == str(stage / "checkpoint-3"), name
        assert (stage / "incomplete-checkpoint-6").is_dir() and len(lines) == 1


def test_a_save_killed_before_its_manifest_is_judged_by_loading_every_file(cut, tmp_path):
    stage = tmp_path / "pretrain"
    shutil.copytree(cut / "pretrain", stage)
    (stage / "checkpoint-6" / MANIFEST).unlink()
    assert problem(stage / "checkpoint-6") is None  # an older align's checkpoint: every file loads
    for name in ("optimizer.pt", "model.safetensors", "rng_state.pth"):
        shutil.copy(cut / "pretrain" / "checkpoint-6" / name, stage / "checkpoint-6" / name)
        truncate(stage / "checkpoint-6" / name)
        assert "does not load" in problem(stage / "checkpoint-6"), name
        shutil.copy(cut / "pretrain" / "checkpoint-6" / name, stage / "checkpoint-6" / name)
    (stage / "checkpoint-6" / "trainer_state.json").unlink()  # the FileNotFoundError
    assert problem(stage / "checkpoint-6") == "trainer_state.json is missing"


@pytest.mark.parametrize("name", ["optimizer.pt"])  # every file: test_each_truncated_file_end_to_end (-m exhaustive)
def test_a_truncated_checkpoint_is_set_aside_and_the_run_ends_as_an_uninterrupted_one(cut, full, tmp_path, caplog,
                                                                                         name):
    out = copy_of(cut, tmp_path)
    truncate(out / "pretrain" / "checkpoint-6" / name)
    run(out)
    resumes_as_uninterrupted(out, full, caplog.messages)


@pytest.mark.exhaustive
@pytest.mark.parametrize("name", FILES)
def test_each_truncated_file_end_to_end(cut, full, tmp_path, caplog, name):
    test_a_truncated_checkpoint_is_set_aside_and_the_run_ends_as_an_uninterrupted_one(cut, full, tmp_path, caplog, name)


def tmpfs(folder: Path, size: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_a_full_disk_is_an_error_saying_so_and_the_rerun_after_freeing_space_matches(cut, full, tmp_path, capsys,
                                                                                      caplog, monkeypatch):
    """On a small tmpfs where the test can mount one (root), else a torch.save that fails with ENOSPC halfway."""
    checkpoint = sum(p.stat().st_size for p in (cut / "pretrain" / "checkpoint-3").rglob("*") if p.is_file())
    rest = sum(p.stat().st_size for p in cut.rglob("*") if p.is_file() and "checkpoint-" not in str(p))
    out = tmp_path / "disk"
    mounted = tmpfs(out, int(rest + 1.5 * checkpoint + 256 * 1024))  # room for checkpoint-3, not checkpoint-6
    if not mounted:
        original = torch.save

        def half_then_enospc(obj, f, *args, **kwargs):
            if "checkpoint-6" in str(f) and str(f).endswith("optimizer.pt"):
                Path(f).write_bytes(b"\0" * 1000)
                raise OSError(errno.ENOSPC, "No space left on device", str(f))
            return original(obj, f, *args, **kwargs)

        monkeypatch.setattr(torch, "save", half_then_enospc)
    try:
        sets = [arg for s in STEPS for arg in ("--set", s)]
        code = cli.main(["run", str(MICRO), "--output-dir", str(out / "run"), *sets, "--only", ",".join(ONLY)])
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, err
        assert "align: error: the disk is full while writing " in err and " bytes free there)" in err, err
        stage = out / "run" / "pretrain"
        assert (stage / "checkpoint-3" / MANIFEST).exists() and not (stage / MARKER).exists()
        assert (stage / "checkpoint-6").is_dir() and not (stage / "checkpoint-6" / MANIFEST).exists()
        if mounted:  # space freed
            subprocess.run(["mount", "-o", "remount,size=256m", str(out)], check=True)
        else:
            monkeypatch.undo()
        run(out / "run")
        resumes_as_uninterrupted(out / "run", full, caplog.messages)
    finally:
        if mounted:  # lazily, so a failure above is what the test reports
            subprocess.run(["umount", "-l", str(out)], capture_output=True)


def test_disk_errors_are_recognised_through_their_causes(tmp_path):
    full_disk = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "x"))
    assert "the disk is full while writing" in str(disk_error(full_disk, tmp_path))
    wrapped = RuntimeError("save failed")
    wrapped.__cause__ = OSError(errno.EROFS, "Read-only file system")
    assert "read-only" in str(disk_error(wrapped, tmp_path))
    assert "the disk is full" in str(disk_error(
        Exception('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on '
                  'device" })'), tmp_path))
    assert disk_error(RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 123 vs 45"),
                      tmp_path) is None  # plenty of space here: not a full disk
    assert disk_error(ValueError("bad value"), tmp_path) is None
