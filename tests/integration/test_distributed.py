"""`accelerate launch --multi_gpu --num_processes 2` on a CPU-only machine: two gloo ranks, one set of artifacts."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_two_processes_train_together_and_write_once(tmp_path):
    """Through the example launcher script and its accelerate config file."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "launch_two_processes.sh"), str(REPO / "tests" / "recipes" / "micro.yaml"),
         "--output-dir", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "processes: 2 (DistributedType.MULTI_CPU)" in output
    assert output.count("[2/3] pretrain (pretrain): running") == 1  # only the main process reports
    metrics = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["tokens_seen"] == 40 * 8 * 2 * 64  # both ranks consumed their own batches
    assert (tmp_path / "sft" / "adapter_model.safetensors").exists()
    assert not list(tmp_path.glob("**/*.tmp"))
