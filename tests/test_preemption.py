"""Preemption: SIGTERM to a real ``align run`` saves a checkpoint at the next step boundary and exits 75;
the same command again resumes from it and ends on the uninterrupted run's numbers (Trainer stage and PPO)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.checkpoints import MANIFEST
from align.preemption import EXIT_PREEMPTED
from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import MARKER, read_marker

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"
MICRO_PPO = REPO / "tests" / "recipes" / "micro_ppo.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
PRETRAIN = ["stages.pretrain.args.max_steps=10", "stages.pretrain.args.save_steps=3",
            "stages.pretrain.args.eval_steps=10"]


def align_run(recipe: Path, out: Path, sets: list[str], only: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "align", "run", str(recipe), "--output-dir", str(out), "--only", only,
               *[arg for s in sets for arg in ("--set", s)]]
    return subprocess.Popen(command, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def sigterm_after(process: subprocess.Popen, ready: Path, timeout: float = 240) -> str:
    """SIGTERM once ``ready`` exists (a periodic checkpoint finished: training is under way); the process's output."""
    deadline = time.time() + timeout
    while not ready.exists():
        assert process.poll() is None, process.communicate()[0]
        assert time.time() < deadline, "the stage never saved its first checkpoint"
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    return process.communicate(timeout=timeout)[0]


def preempted_checkpoint(output: str, stage_dir: Path, stage: str, every: int, last: int) -> int:
    """The step the signal stopped at, after checking what the preempted run left and said."""
    assert "SIGTERM received: saving a checkpoint at the next step boundary" in output, output
    line = next((l for l in output.splitlines() if l.startswith("align: preempted (SIGTERM) in stage ")), None)
    assert line is not None, output
    step = int(line.split(" at step ")[1].split(":")[0])
    assert every < step < last, line  # stopped at a step boundary after the periodic checkpoint, before the end
    assert f"checkpoint-{step} saved in {stage_dir}; run the same command again to resume (" in line
    assert "Traceback" not in output
    assert (stage_dir / f"checkpoint-{step}" / MANIFEST).exists() and not (stage_dir / MARKER).exists()
    return step


def test_sigterm_in_a_trainer_stage_saves_exits_75_and_the_rerun_matches_the_uninterrupted_run(tmp_path, caplog):
    full = run_recipe(load_recipe(MICRO, PRETRAIN, output_dir=str(tmp_path / "full")), only=["tokenizer", "pretrain"],
                      echo=lambda *_: None)["pretrain"]

    out = tmp_path / "cut"
    process = align_run(MICRO, out, PRETRAIN, "tokenizer,pretrain")
    output = sigterm_after(process, out / "pretrain" / "checkpoint-3" / MANIFEST)
    assert process.returncode == EXIT_PREEMPTED, output
    step = preempted_checkpoint(output, out / "pretrain", "pretrain", 3, 10)

    lines: list[str] = []
    caplog.set_level(logging.INFO, logger="align")
    resumed = run_recipe(load_recipe(MICRO, PRETRAIN, output_dir=str(out)), only=["tokenizer", "pretrain"],
                         echo=lines.append)["pretrain"]
    assert any("pretrain (pretrain): resuming" in line for line in lines), lines
    assert any(f"resuming pretrain from {out / 'pretrain' / f'checkpoint-{step}'}" in m for m in caplog.messages)
    state = json.loads((out / "pretrain" / "trainer_state.json").read_text())
    assert state["global_step"] == 10
    assert resumed["eval_loss"] == pytest.approx(full["eval_loss"], rel=1e-4)


@pytest.fixture(scope="module")
def upstream(tmp_path_factory) -> Path:
    """tokenizer -> pretrain -> sft of micro_ppo, finished."""
    out = tmp_path_factory.mktemp("ppo_upstream") / "run"
    run_recipe(load_recipe(MICRO_PPO, output_dir=str(out)), only=["tokenizer", "pretrain", "sft"], echo=lambda *_: None)
    return out


def test_sigterm_in_ppo_saves_between_iterations_and_the_rerun_matches_the_uninterrupted_run(upstream, tmp_path):
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    shutil.copytree(upstream, full_dir)
    shutil.copytree(upstream, cut_dir)
    full = run_recipe(load_recipe(MICRO_PPO, output_dir=str(full_dir)), only=["ppo"], echo=lambda *_: None)["ppo"]

    process = align_run(MICRO_PPO, cut_dir, [], "ppo")
    output = sigterm_after(process, cut_dir / "ppo" / "checkpoint-2" / MANIFEST)
    assert process.returncode == EXIT_PREEMPTED, output
    preempted_checkpoint(output, cut_dir / "ppo", "ppo", 2, 6)

    resumed = run_recipe(load_recipe(MICRO_PPO, output_dir=str(cut_dir)), only=["ppo"], echo=lambda *_: None)["ppo"]
    for key in ("iterations", "score_first", "score_last", "kl_last", "eval_score_last", "eval_kl_last"):
        assert resumed[key] == pytest.approx(full[key], rel=1e-4, abs=1e-6), key
    history = lambda d: [{k: v for k, v in h.items() if not k.startswith("time/")}  # noqa: E731
                         for h in json.loads((d / "ppo" / "trainer_state.json").read_text())["log_history"]]
    assert len(history(cut_dir)) == len(history(full_dir))
    for a, b in zip(history(cut_dir), history(full_dir)):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert read_marker(cut_dir / "ppo") is not None
