"""benchmarks/gpu_check.sh, the GPU acceptance check, as far as a CPU takes it: its dry run (everything up to the first
CUDA call), the audit that tells a model off the GPU, and the slimmed bitsandbytes wheel it carries."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_dry_run_builds_and_validates_every_check_on_the_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "ALIGN_GPU_CHECK_DRY_RUN": "1", "OUT": ""}
    proc = subprocess.run(["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "dry run, nothing installed" in proc.stdout
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    checks = report["checks"]
    assert report["dry_run"] and list(checks) == ["environment", "quickstart", "bf16_autocast", "qlora", "hub_replica",
                                                  "ppo_vllm", "generation_speed"]
    assert {name: checks[name]["status"] for name in ("environment", "quickstart", "hub_replica", "qlora")} == \
        dict.fromkeys(("environment", "quickstart", "hub_replica", "qlora"), "pass")
    assert "fail" not in {c["status"] for c in checks.values()}
    assert checks["environment"]["versions"]["transformers"] and not checks["environment"]["cuda_available"]
    assert [(r["device"], r["tokens"]) for r in report["forwards"]] == [("cpu", 4)]  # the audit saw the one forward
    assert "| quickstart | pass |" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_the_audit_reports_a_model_that_is_not_on_the_gpu(tiny_model_dir):
    gpu_check = script("gpu_check")
    from align.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir)
    audit = gpu_check.Audit().install()
    try:
        audit.echo("[2/5] sft (sft): running -> runs/x/sft")
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3]]))
            model.generate(input_ids=torch.tensor([[1, 2]]), max_new_tokens=3, min_new_tokens=3, do_sample=False)
    finally:
        audit.remove()
    rows = audit.table()
    assert [(r["stage"], r["model"], r["device"], r["forwards"]) for r in rows] == [("sft", "LlamaForCausalLM", "cpu", 4)]
    assert rows[0]["tokens"] == 3 + 2 + 1 + 1  # the prompt, then one token per decoding step (KV cache)
    assert gpu_check.off_device(audit, "", "cuda") == rows and gpu_check.off_device(audit, "", "cpu") == []
    assert rows[0]["autocast"] is None and rows[0]["dtype"] == "float32" and not rows[0]["training"]


def test_the_audit_sees_autocast_that_wraps_the_forward_itself(tiny_model_dir):
    """accelerate's mixed precision wraps ``model.forward`` in autocast: on only inside the model's forward."""
    gpu_check = script("gpu_check")
    from align.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir).train()
    model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
    audit = gpu_check.Audit().install()
    try:
        model(input_ids=torch.tensor([[1, 2, 3]]))
        with torch.no_grad():
            load_causal_lm(tiny_model_dir)(input_ids=torch.tensor([[1, 2]]))  # then one without
    finally:
        audit.remove()
    assert [(r["autocast"], r["training"], r["tokens"]) for r in audit.table()] == [("bfloat16", True, 3), (None, False, 2)]


def test_slim_bitsandbytes_keeps_one_cuda_build_and_a_valid_record(tmp_path):
    gpu_wheels = script("gpu_wheels")
    wheel = tmp_path / "bitsandbytes-0.50.2-py3-none-manylinux_2_24_x86_64.whl"
    files = {f"bitsandbytes/libbitsandbytes_{k}.so": k.encode() * 100 for k in ("cpu", "cuda128", "cuda130", "rocm72")}
    files["bitsandbytes/__init__.py"] = b"x = 1\n"
    with zipfile.ZipFile(wheel, "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
        z.writestr("bitsandbytes-0.50.2.dist-info/RECORD", "".join(f"{n},,\n" for n in files))
    gpu_wheels.slim_bitsandbytes(wheel, ["130"])
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        record = z.read("bitsandbytes-0.50.2.dist-info/RECORD").decode()
    kept = {"bitsandbytes/__init__.py", "bitsandbytes/libbitsandbytes_cpu.so", "bitsandbytes/libbitsandbytes_cuda130.so"}
    assert names == kept | {"bitsandbytes-0.50.2.dist-info/RECORD"}
    assert {line.split(",")[0] for line in record.splitlines()} == names
    assert "cuda128" not in record and all("sha256=" in line for line in record.splitlines() if "RECORD" not in line)
