"""Every config in recipes/accelerate/ goes through `accelerate launch`'s own parsing and checks, and
produces the per-process environment (and from it the accelerate plugins) the config promises.

What this machine (no GPU) cannot do: actually shard with FSDP, ZeRO or TP through Trainer. The
last test runs the FSDP2 config for real to show the CPU fallback and align's warning about it.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

from align.launch import launch_plan, launch_warnings

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "accelerate"
# config file -> (launcher, processes, machines, align's reading of the environment)
EXPECTED = {
    "single_process.yaml": ("simple", 1, 1, {"sharding": None, "tp_size": 1}),
    "two_processes.yaml": ("multi_gpu", 2, 1, {"sharding": None, "tp_size": 1}),
    "multi_gpu.yaml": ("multi_gpu", 8, 1, {"sharding": None, "tp_size": 1}),
    "fsdp2.yaml": ("multi_gpu", 8, 1, {"sharding": "fsdp2", "tp_size": 1}),
    "deepspeed_zero2.yaml": ("deepspeed", 8, 1, {"sharding": "zero2", "tp_size": 1}),
    "deepspeed_zero3.yaml": ("deepspeed", 8, 1, {"sharding": "zero3", "tp_size": 1}),
    "tensor_parallel.yaml": ("multi_gpu", 2, 1, {"sharding": "fsdp2", "tp_size": 2}),
    "multi_node.yaml": ("multi_gpu", 16, 2, {"sharding": None, "tp_size": 1}),
}


def resolve(config: str, *extra: str):
    """What `accelerate launch --config_file CONFIG [extra] -m align run ...` resolves, and the env each process gets."""
    args = launch_command_parser().parse_args(
        ["--config_file", str(CONFIGS / config), *extra, "-m", "align", "run", "recipes/quickstart.yaml"])
    args, defaults, _ = _validate_launch_command(args)
    if args.use_deepspeed:
        args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
        return "deepspeed", args, prepare_deepspeed_cmd_env(args)[1]
    if args.multi_gpu or args.use_fsdp:
        return "multi_gpu", args, prepare_multi_gpu_env(args)
    return "simple", args, prepare_simple_launcher_cmd_env(args)[1]


def test_every_config_file_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_config_launches_what_it_promises(config):
    launcher, processes, machines, plan = EXPECTED[config]
    used, args, env = resolve(config)
    assert used == launcher
    assert (args.num_processes, args.num_machines) == (processes, machines)
    assert launch_plan(env) == plan
    assert "recipes/accelerate" in (CONFIGS / config).read_text()  # each file says how to launch it


def test_fsdp2_config_builds_an_fsdp2_plugin(monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    _, _, env = resolve("fsdp2.yaml")
    for key, value in env.items():
        if key.startswith(("FSDP_", "ACCELERATE_USE_FSDP")):
            monkeypatch.setenv(key, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.transformer_cls_names_to_wrap == ["LlamaDecoderLayer"]
    assert plugin.reshard_after_forward is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_tensor_parallel_config_builds_a_parallelism_config(monkeypatch):
    from accelerate.parallelism_config import ParallelismConfig

    _, _, env = resolve("tensor_parallel.yaml")
    for key, value in env.items():
        if key.startswith("PARALLELISM_CONFIG_"):
            monkeypatch.setenv(key, value)
    config = ParallelismConfig()
    assert (config.tp_size, config.dp_shard_size, config.dp_replicate_size) == (2, 1, 1)
    assert config.total_size == 2  # = num_processes in the file: align runs pure tensor parallelism


def test_deepspeed_configs_set_zero_stage_and_16bit_save():
    _, _, zero2 = resolve("deepspeed_zero2.yaml")
    _, _, zero3 = resolve("deepspeed_zero3.yaml")
    assert zero2["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "2"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "true"
    assert zero3["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] == "true"


def test_multi_node_config_points_every_machine_at_the_main_one():
    _, args, _ = resolve("multi_node.yaml", "--machine_rank", "1")
    assert (args.machine_rank, args.num_machines, args.main_process_ip, args.main_process_port) == (1, 2, "10.0.0.1", 29500)


def test_warns_when_several_processes_were_asked_for_and_one_started():
    _, _, env = resolve("single_process.yaml", "--cpu", "--num_processes", "2")
    warnings = launch_warnings(1, has_gpu=False, env=env)
    assert len(warnings) == 1 and "started only this one" in warnings[0] and "--multi_gpu" in warnings[0]
    _, _, env = resolve("single_process.yaml")
    assert launch_warnings(1, has_gpu=False, env=env) == []


def test_warns_that_sharding_needs_gpus():
    _, _, env = resolve("fsdp2.yaml")
    assert any("FSDP2 sharding was requested" in w for w in launch_warnings(8, has_gpu=False, env=env))
    assert launch_warnings(8, has_gpu=True, env=env) == []


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_fsdp2_config_on_cpu_runs_as_data_parallel_and_says_so(tmp_path):
    """The real launch: two ranks start, the micro recipe trains, and align warns there is no sharding."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    proc = subprocess.run(
        ["accelerate", "launch", "--config_file", str(CONFIGS / "fsdp2.yaml"), "--num_processes", "2",
         "-m", "align", "run", str(REPO / "tests" / "recipes" / "micro.yaml"), "--output-dir", str(tmp_path),
         "--only", "tokenizer,pretrain"],
        capture_output=True, text=True, env=env, timeout=300, cwd=REPO)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "processes: 2" in output and "sharding: fsdp2" in output
    assert "FSDP2 sharding was requested, but on a machine without GPUs" in output
    assert (tmp_path / "pretrain" / "model.safetensors").exists()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("accelerate") is None and not (Path(sys.executable).parent / "accelerate").exists(),
                    reason="accelerate CLI not installed")
def test_multi_node_config_with_two_machines_on_localhost(tmp_path):
    """The multi-node config for real: two `accelerate launch` commands, machine_rank 0 and 1, one process
    each, meeting at the main machine's address; one set of artifacts on the shared filesystem."""
    import socket

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    machines = [subprocess.Popen(
        ["accelerate", "launch", "--config_file", str(CONFIGS / "multi_node.yaml"), "--num_processes", "2",
         "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
         "-m", "align", "run", str(REPO / "tests" / "recipes" / "micro.yaml"), "--output-dir", str(tmp_path),
         "--only", "tokenizer,pretrain"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO) for rank in (0, 1)]
    outputs = [machine.communicate(timeout=300)[0] for machine in machines]
    assert [m.returncode for m in machines] == [0, 0], outputs[0][-2000:] + outputs[1][-2000:]
    assert "processes: 2" in outputs[0] and "align: done: " in outputs[0]
    assert "align: done: " not in outputs[1]  # the second machine's process is not the main one
    metrics = json.loads((tmp_path / "pretrain" / "metrics.json").read_text())
    assert metrics["world_size"] == 2
