"""The whole chain under `accelerate launch` with two processes (two gloo ranks on a CPU-only machine).

The two-process run halves every per-device batch so its global batches equal the one-process
run's (`micro_full_run`); it must then give the same results: the same artifacts written once, the
same pretraining losses, the same SFT model, the same preference pairs, and evaluation numbers
within noise where training samples (PPO, GRPO).
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HALF_BATCHES = {  # one-process values in tests/recipes/micro_full.yaml, halved
    "stages.pretrain.args.per_device_train_batch_size": 4,
    "stages.sft.args.per_device_train_batch_size": 4,
    "stages.reward.args.per_device_train_batch_size": 4,
    "stages.dpo.args.per_device_train_batch_size": 4,
    "stages.ppo.args.rollout_batch_size": 4,
    "stages.grpo.args.per_device_train_batch_size": 2,
    "stages.rloo.args.per_device_train_batch_size": 2,
}


def artifact_names(run_dir: Path) -> set[str]:
    """Relative paths of what a run wrote, without per-rank RNG states and datasets' cache files."""
    return {str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
            if p.is_file() and not p.name.startswith(("rng_state", "cache-"))}


def metrics(run_dir: Path, stage: str) -> dict:
    return json.loads((run_dir / stage / "metrics.json").read_text())


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    if shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists():
        pytest.skip("accelerate CLI not installed")
    out = tmp_path_factory.mktemp("micro_full_2proc")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    overrides = [arg for key, value in HALF_BATCHES.items() for arg in ("--set", f"{key}={value}")]
    proc = subprocess.run(  # through the example launcher script and its accelerate config file
        ["bash", str(REPO / "examples" / "launch_two_processes.sh"), str(REPO / "tests" / "recipes" / "micro_full.yaml"),
         "--output-dir", str(out), *overrides], capture_output=True, text=True, env=env, timeout=600, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    return out, output


@pytest.mark.slow
def test_two_processes_start_and_report_once(two_process_run):
    out, output = two_process_run
    assert "processes: 2 (DistributedType.MULTI_CPU)" in output
    assert output.count("[2/11] pretrain (pretrain): running") == 1  # only the main process reports
    assert output.count("align: done: ") == 1
    pretrain = metrics(out, "pretrain")
    assert pretrain["world_size"] == 2
    assert pretrain["tokens_seen"] == 40 * 4 * 2 * 64  # both ranks consumed their own batches


@pytest.mark.slow
def test_two_processes_write_the_same_artifacts_once(two_process_run, micro_full_run):
    out, _ = two_process_run
    one, _ = micro_full_run
    assert artifact_names(out) == artifact_names(one)
    assert sorted(p.name for p in (out / "ppo" / "checkpoint-4").glob("rng_state*")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not list(out.glob("**/*.tmp"))
    assert not list((out / "preferences" / "dataset").glob("cache-*"))  # later stages did not write into it


@pytest.mark.slow
def test_two_processes_match_one_process(two_process_run, micro_full_run):
    two, _ = two_process_run
    one, _ = micro_full_run
    # Deterministic stages: same global batches, same numbers up to float reduction order.
    assert metrics(two, "pretrain")["train_loss"] == pytest.approx(metrics(one, "pretrain")["train_loss"], rel=1e-3)
    assert metrics(two, "pretrain")["eval_loss"] == pytest.approx(metrics(one, "pretrain")["eval_loss"], rel=1e-2)
    eval_one, eval_two = metrics(one, "eval")["policies"], metrics(two, "eval")["policies"]
    assert eval_two["sft"]["perplexity"] == pytest.approx(eval_one["sft"]["perplexity"], rel=1e-3)  # the same SFT model
    # Sampling is seeded per generation batch, not per process: the same pairs, the same SFT samples.
    pairs_one = (one / "preferences" / "pairs.jsonl").read_text().splitlines()
    pairs_two = (two / "preferences" / "pairs.jsonl").read_text().splitlines()
    assert len(pairs_two) == pytest.approx(len(pairs_one), abs=1)
    assert len(set(pairs_one) & set(pairs_two)) >= 0.8 * len(pairs_one)
    assert eval_two["sft"]["scores"]["gold"] == pytest.approx(eval_one["sft"]["scores"]["gold"], abs=0.05)
    # Trained from the same data with the same global batches; the RL stages sample, so only within noise.
    for name in ("ppo", "dpo", "grpo"):
        assert eval_two[name]["perplexity"] == pytest.approx(eval_one[name]["perplexity"], rel=0.02), name
        assert eval_two[name]["scores"]["gold"] == pytest.approx(eval_one[name]["scores"]["gold"], abs=0.25), name
    assert metrics(two, "reward")["pairwise_accuracy"] is not None
