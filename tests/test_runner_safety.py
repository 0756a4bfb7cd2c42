"""Finished work is never destroyed by a failed attempt: a stage that re-runs builds its new result
beside the old one and swaps it in only once it has finished."""

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import transformers

import align.stages.sft as sft_stage
from align import cli
from align.recipe import load_recipe
from align.runner import run_recipe
from align.state import MARKER, read_marker, recover_stage_dir

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"
SMALL = ["stages.pretrain.args.max_steps=4", "stages.pretrain.args.save_steps=2", "stages.pretrain.args.eval_steps=4",
         "stages.sft.args.max_steps=1"]


def run(out: Path, overrides=(), **kwargs) -> list[str]:
    lines: list[str] = []
    run_recipe(load_recipe(MICRO, [*SMALL, *overrides], output_dir=str(out)), echo=lines.append, **kwargs)
    return lines


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    run(out)
    return out


@pytest.fixture
def run_dir(finished, tmp_path) -> Path:
    """A private copy of the finished micro run (a run folder can be moved: references are by stage name)."""
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def test_a_copied_run_is_still_finished(run_dir):
    before = snapshot(run_dir)
    assert all(" done, skipping " in line for line in run(run_dir)[1:])
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("assignment, field", [
    ("stages.sft.args.learning_rate=fast", "stages.sft.args.learning_rate"),  # caught before anything runs
    ("stages.sft.args.lr_scheduler_type=bogus", "stages.sft.args.lr_scheduler_type"),  # rejected by SFTConfig itself
])
def test_bad_set_on_a_finished_run_exits_2_and_touches_nothing(run_dir, capsys, assignment, field):
    before = snapshot(run_dir)
    sets = [arg for s in [*SMALL, assignment] for arg in ("--set", s)]
    code = cli.main(["run", str(MICRO), "--output-dir", str(run_dir), *sets])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("align: error:")]
    assert code == 2 and "Traceback" not in err
    assert len(errors) == 1 and errors[0].startswith(f"align: error: {field}: "), err
    assert snapshot(run_dir) == before  # every finished folder and marker byte-identical, no attempt left behind


def test_a_crash_in_a_rerun_keeps_the_previous_result_and_a_later_run_swaps_in_the_new_one(run_dir, monkeypatch):
    before = snapshot(run_dir)
    old_marker = read_marker(run_dir / "sft")
    seen = {}

    def crashes(ctx):
        seen.update(out_dir=ctx.out_dir, model=ctx.spec["model"])
        (ctx.out_dir / "partial.txt").write_text("half-written")
        raise RuntimeError("the stage broke")

    monkeypatch.setattr(sft_stage, "run", crashes)
    with pytest.raises(RuntimeError, match="the stage broke"):
        run(run_dir, ["stages.sft.lora.r=2"])
    assert seen["out_dir"] == run_dir / ".attempts" / "sft"  # the attempt writes beside the finished result
    assert seen["model"] == str(run_dir / "pretrain")  # references still name final folders
    assert snapshot(run_dir) == before

    monkeypatch.undo()
    lines = run(run_dir, ["stages.sft.lora.r=2"])
    assert any(line.startswith("[3/3] sft (sft): re-runs: spec changed") for line in lines), lines
    marker = read_marker(run_dir / "sft")
    assert marker["spec_hash"] != old_marker["spec_hash"] and marker["fingerprint"] != old_marker["fingerprint"]
    assert json.loads((run_dir / "sft" / "adapter_config.json").read_text())["r"] == 2
    assert not (run_dir / "sft" / "partial.txt").exists()
    assert sorted(p.name for p in run_dir.iterdir()) == [".locks", "pretrain", "sft", "tokenizer"]  # no attempt or old
    assert sorted(p.name for p in (run_dir / ".locks").iterdir()) == ["pretrain.lock", "sft.lock", "tokenizer.lock"]
    after = snapshot(run_dir)
    assert {k: v for k, v in after.items() if not k.startswith("sft/")} == \
           {k: v for k, v in before.items() if not k.startswith("sft/")}


def test_an_interrupted_attempt_keeps_the_old_result_and_resumes(run_dir, monkeypatch):
    before = snapshot(run_dir)
    old_marker = read_marker(run_dir / "pretrain")
    longer = ["stages.pretrain.args.max_steps=8"]
    original = transformers.Trainer.training_step
    calls = {"n": 0}

    def counted(self, *args, **kwargs):
        calls["n"] += 1
        if calls.get("die_at") == calls["n"]:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(transformers.Trainer, "training_step", counted)
    calls["die_at"] = 5
    with pytest.raises(KeyboardInterrupt):
        run(run_dir, longer, only=["tokenizer", "pretrain"])
    attempt = run_dir / ".attempts" / "pretrain"
    assert (attempt / "checkpoint-4").is_dir() and read_marker(attempt) is None
    assert {k: v for k, v in snapshot(run_dir).items() if not k.startswith(".attempts/")} == before

    calls.update(n=0, die_at=None)
    lines = run(run_dir, longer, only=["tokenizer", "pretrain"])
    assert any("pretrain (pretrain): re-runs: spec changed" in line and "resuming the interrupted attempt" in line
               for line in lines), lines
    assert calls["n"] == 4  # steps 5..8 only
    state = json.loads((run_dir / "pretrain" / "trainer_state.json").read_text())
    assert state["global_step"] == 8
    steps = [h["step"] for h in state["log_history"] if "loss" in h]
    assert len(steps) == len(set(steps))
    assert not (run_dir / ".attempts").exists()
    assert read_marker(run_dir / "pretrain")["spec_hash"] != old_marker["spec_hash"]


def test_a_swap_cut_short_is_completed_on_the_next_run(tmp_path):
    stage = tmp_path / "dpo"
    attempt, old = tmp_path / ".attempts" / "dpo", tmp_path / ".attempts" / "dpo.old"
    for folder, name in ((old, "old"), (attempt, "new")):  # killed between the two renames
        folder.mkdir(parents=True)
        (folder / MARKER).write_text(json.dumps({"spec_hash": name}))
    recover_stage_dir(stage)
    assert read_marker(stage)["spec_hash"] == "new" and not (tmp_path / ".attempts").exists()

    old.mkdir(parents=True)  # killed before the attempt finished, after the old result was moved away (by hand)
    (old / MARKER).write_text(json.dumps({"spec_hash": "old"}))
    shutil.rmtree(stage)
    attempt.mkdir()
    recover_stage_dir(stage)
    assert read_marker(stage)["spec_hash"] == "old" and attempt.exists() and not old.exists()
