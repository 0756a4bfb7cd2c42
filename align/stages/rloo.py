"""rloo stage: TRL's RLOOTrainer (REINFORCE with leave-one-out baselines), same inputs as grpo."""

from __future__ import annotations

from align.stages.grpo import (ARG_DEFAULTS, DATASET_KEYS, EXPECTED, GENERATION_DEFAULTS, JUDGE_KEYS, KEYS,  # noqa: F401
                               REQUIRED, TYPES, run_online)


CARD_TAGS = ("trl", "rloo")  # model card tags beside align and the kind


def config_class():
    from trl import RLOOConfig

    return RLOOConfig


def run(ctx) -> dict:
    from trl import RLOOTrainer

    return run_online(ctx, RLOOTrainer, config_class())
