"""Stage kinds. Each module has KEYS (spec keys it reads, with a description), optionally
REQUIRED, DATASET_KEYS, JUDGE_KEYS, ``config_class()`` (the library config its ``args:`` fill)
and ``run(ctx) -> metrics``."""

from __future__ import annotations

import importlib

from align.errors import AlignError

STAGE_KINDS = {
    "tokenizer": "align.stages.tokenizer",
    "pretrain": "align.stages.pretrain",
    "sft": "align.stages.sft",
    "preferences": "align.stages.preferences",
    "reward": "align.stages.reward",
    "dpo": "align.stages.dpo",
    "grpo": "align.stages.grpo",
    "rloo": "align.stages.rloo",
    "evaluate": "align.stages.evaluate",
    "report": "align.stages.report",
    "ppo": "align.stages.ppo",
}


def stage_module(kind: str, *, where: str = "kind"):
    if not isinstance(kind, str) or kind not in STAGE_KINDS:  # a mapping or list here is unhashable
        from align.recipe import suggest

        raise AlignError(f"{where}: unknown stage kind {kind!r}.{suggest(kind, STAGE_KINDS)} "
                         f"Available: {', '.join(STAGE_KINDS)}.")
    return importlib.import_module(STAGE_KINDS[kind])
