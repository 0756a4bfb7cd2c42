"""What ``accelerate launch`` asked for, read back from the environment it gives each process.

accelerate fails quietly in two ways on machines without GPUs, and a user comparing runs must
know: ``--cpu --num_processes N`` (or a ``MULTI_CPU`` config without mpirun) starts ONE process,
and an FSDP or DeepSpeed config trains as plain data parallel with the whole model on every rank.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from align.errors import AlignError

MPI_WORLD_SIZE_KEYS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "MV2_COMM_WORLD_SIZE", "WORLD_SIZE")
TP_SIZE_VARIABLE = "PARALLELISM_CONFIG_TP_SIZE"


def tensor_parallel_size(env: Mapping[str, str] = os.environ) -> int:
    """The tensor-parallel size the launch asked for; 1 when it asked for none.

    ``accelerate launch`` with a config file whose ``parallelism_config`` section sets
    ``parallelism_config_tp_size: N`` exports ``PARALLELISM_CONFIG_TP_SIZE=N`` to every process (and
    accelerate's ``ParallelismConfig`` reads that same variable); under ``torchrun``, export it yourself.
    """
    value = env.get(TP_SIZE_VARIABLE, "").strip()
    if not value:
        return 1
    if not value.isdigit() or int(value) < 1:
        raise AlignError(f"{TP_SIZE_VARIABLE}={value!r}: the tensor-parallel size must be a positive integer.")
    return int(value)


def launch_plan(env: Mapping[str, str] = os.environ) -> dict:
    """The parallelism the launcher configured: sharding (fsdp1/fsdp2/zero<stage>) and tensor-parallel size."""
    sharding = None
    if env.get("ACCELERATE_USE_FSDP", "").lower() == "true":
        sharding = f"fsdp{env.get('FSDP_VERSION', '1')}"
    elif env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        sharding = f"zero{env.get('ACCELERATE_DEEPSPEED_ZERO_STAGE', '?')}"
    return {"sharding": sharding, "tp_size": tensor_parallel_size(env)}


def launch_warnings(num_processes: int, has_gpu: bool, env: Mapping[str, str] = os.environ) -> list[str]:
    """Ways the processes that started differ from what the launch command asked for."""
    warnings = []
    # accelerate's simple launcher sets MASTER_ADDR only when more than one process was requested,
    # and, unlike torchrun, no WORLD_SIZE: so this process is all there is.
    if (num_processes == 1 and "ACCELERATE_USE_CPU" in env and "MASTER_ADDR" in env
            and not any(key in env for key in MPI_WORLD_SIZE_KEYS)):
        warnings.append(
            "accelerate launch was asked for several processes but started only this one (with --cpu, or a "
            "MULTI_CPU config without mpirun, it runs a single process). For N ranks on a machine without GPUs use "
            "`accelerate launch --multi_gpu --num_processes N` or --config_file recipes/accelerate/two_processes.yaml.")
    plan = launch_plan(env)
    if plan["tp_size"] > 1 and not has_gpu:
        warnings.append(
            f"tensor parallelism ({plan['tp_size']}-way) on a machine without GPUs: align shards the policies of the "
            f"sampling stages (preferences, evaluate); training stages need GPUs and stop with an error.")
    elif plan["sharding"] and not has_gpu:
        sharding = plan["sharding"]
        warnings.append(
            f"{sharding.upper()} sharding was requested, but on a machine without GPUs accelerate and Trainer fall back "
            f"to plain data parallelism: every process holds the whole model and optimizer (the ppo stage is the "
            f"exception: it shards policy and critic with FSDP2 itself). Shard on GPUs.")
    return warnings
