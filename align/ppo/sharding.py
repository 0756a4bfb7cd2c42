"""PPO's policy and critic sharded with PyTorch FSDP2 (``fully_shard``), on GPUs and on CPU (gloo).

Why align shards PPO itself instead of through ``accelerator.prepare``: accelerate turns an FSDP
config into plain data parallelism when there is no GPU, so its sharded path can never be tested
on a CPU machine; ``fully_shard`` runs on CPU with gloo. One code path, the tested one, runs on
both. accelerate still launches the processes, reduces metrics and provides ``autocast``.

- Each decoder layer (the model's ``_no_split_modules``) of the policy and of the critic is a
  shard unit; the rest (embeddings, final norm, heads) is the root unit.
- Rollouts gather the whole policy and critic once (``gathered``) and sample from full weights,
  as TRL's online trainers do: no per-token all-gather, and no collective inside ``generate``, so
  ranks may stop at different lengths. The optimisation epochs run sharded.
- The reference and reward models are frozen and are not sharded: every process keeps a full
  copy (with a LoRA policy the reference is the policy's own base weights).
- DeepSpeed is refused: its engine would step once per micro-batch unless the loop goes through
  its own accumulation, and ZeRO-3 generation needs its parameter gathering; FSDP2 covers the
  same ground (reshard_after_forward true ~ ZeRO-3, false ~ ZeRO-2).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

import torch
from torch import nn


def requested_sharding(env: Mapping[str, str] = os.environ) -> dict | None:
    """The FSDP2 settings ``accelerate launch`` exported, None when it asked for no sharding.

    Raises ``ValueError`` for what PPO does not support (DeepSpeed, FSDP1), naming the setting.
    """
    if env.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        stage = env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?")
        raise ValueError(
            f"PPO does not run under DeepSpeed (the accelerate config asks for ZeRO stage {stage}, e.g. "
            f"recipes/accelerate/deepspeed_zero{stage}.yaml): launch the ppo stage with "
            f"recipes/accelerate/fsdp2.yaml instead, which shards the policy and the critic (fsdp_reshard_after_forward: "
            f"true is ZeRO-3-like, false ZeRO-2-like). SFT, reward, DPO and GRPO run under DeepSpeed.")
    if env.get("ACCELERATE_USE_FSDP", "").lower() != "true":
        return None
    if env.get("FSDP_VERSION", "1") != "2":
        raise ValueError("PPO shards with FSDP2 only: set fsdp_version: 2 in the accelerate config "
                         "(recipes/accelerate/fsdp2.yaml), FSDP1 is not supported.")
    return {
        "reshard_after_forward": env.get("FSDP_RESHARD_AFTER_FORWARD", "true").lower() == "true",
        "cpu_offload": env.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true",
    }


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers model (``_no_split_modules``), peft-wrapped or not."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(base, "_no_split_modules", None) or [])
    units = [m for m in base.modules() if type(m).__name__ in names]
    if not units:
        raise ValueError(f"{type(base).__name__} lists no decoder layer class in _no_split_modules: cannot shard it")
    return units


def shard(model: nn.Module, parts: list[nn.Module], device: torch.device, reshard_after_forward: bool = True,
          cpu_offload: bool = False) -> nn.Module:
    """``fully_shard`` every decoder layer of ``parts`` and then ``model`` (the root), over all processes."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options = {"mesh": mesh, "reshard_after_forward": reshard_after_forward,
               "offload_policy": CPUOffloadPolicy() if cpu_offload else OffloadPolicy()}
    for part in parts:
        for unit in shard_units(part):
            fully_shard(unit, **options)
    fully_shard(model, **options)
    return model


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gathered(model: nn.Module, reshard_after_forward: bool = True):
    """Every FSDP unit of ``model`` unsharded (full weights on each process) inside the block, resharded after.

    Forwards inside the block do no collective, so each process may call its submodules (``generate``,
    the reference forward through ``disable_adapter``) as often as it needs.
    """
    from torch.distributed.fsdp import FSDPModule

    units = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for unit in units:
        unit.set_reshard_after_forward(False, recurse=False)  # keep the weights gathered between forwards
        unit.unshard()
    try:
        yield model
    finally:
        for unit in units:
            unit.reshard()
            # back to training: layers as configured, the root kept gathered for backward (FSDP2's own default)
            unit.set_reshard_after_forward(reshard_after_forward and unit is not model, recurse=False)
