"""Stage kinds and the contract each declares, read through one accessor, ``stage_kind``.

A stage module declares, at module level:

- ``KEYS``: the spec keys it reads, each with a description; ``REQUIRED``: those it cannot do without;
- ``DATASET_KEYS`` / ``JUDGE_KEYS``: keys naming datasets / judges; ``EXPECTED``: dataset formats per key;
- ``TYPES``: keys it converts with int()/float()/bool()/str(), and to what; ``GENERATION_DEFAULTS`` for a
  ``generation:`` mapping (a ``backend`` key there: the stage samples with ``transformers`` or ``vllm``,
  ``align.eval.sampling``); ``CLASSIFIER`` when it trains a sequence classifier (LoRA only when given);
  ``CARD_TAGS``: tags its outputs' model cards carry beside ``align`` and the kind (``align.model_cards``);
- ``config_class()``: the library config its ``args:`` fill (absent: it takes no args); ``ARG_DEFAULTS``: the
  model-size defaults align fills for its own micro models (a real checkpoint gets the config class's own);
- ``run(ctx) -> metrics``;
- optionally ``check(spec, where) -> list[str]``: its own rules, which its ``run`` enforces too;
  ``check_dataset(spec, key, ds, where, label)``: a rule on a loaded dataset; ``model_refs(spec)``: the model and
  tokenizer references it loads, when they are not simply its model/policy/reward/tokenizer keys;
  ``model_findings(spec, key, path, where) -> (problems, notes)``: what it will do with a model already on disk
  (``align validate`` shows it: the context its replies are trained and sampled in, a scalar head it must build).

The recipe, the run state, the runner and ``align validate`` read a kind only through ``StageKind``.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType

from align.errors import AlignError, suggest

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
    "export": "align.stages.export",
}
MODEL_REFS = {"model": "model", "policy": "model", "reward": "model", "tokenizer": "tokenizer"}  # key -> what it names


@dataclasses.dataclass(frozen=True)
class StageKind:
    """A stage kind's declared contract (see the module docstring), with defaults for what it leaves out."""

    name: str
    module: ModuleType

    def declared(self, attribute: str, default=None):
        return getattr(self.module, attribute, default)

    @property
    def keys(self) -> dict:
        return self.module.KEYS

    @property
    def required(self) -> tuple:
        return tuple(self.declared("REQUIRED", ()))

    @property
    def dataset_keys(self) -> tuple:
        return tuple(self.declared("DATASET_KEYS", ()))

    @property
    def judge_keys(self) -> tuple:
        return tuple(self.declared("JUDGE_KEYS", ()))

    @property
    def expected(self) -> dict:
        return self.declared("EXPECTED", {})

    @property
    def types(self) -> dict:
        return self.declared("TYPES", {})

    @property
    def generation_defaults(self) -> dict | None:
        return self.declared("GENERATION_DEFAULTS")

    def sampling_backend(self, spec: dict) -> str | None:
        """The backend this stage samples with (``generation.backend``), or None for a kind that does not sample."""
        from align.eval.sampling import backend_of

        if "backend" not in (self.generation_defaults or {}):
            return None
        args = spec.get("args")
        if isinstance(args, dict) and args.get("use_vllm") is True:  # the library's own switch (PPO, GRPO, RLOO)
            return "vllm"
        return backend_of(spec)

    @property
    def classifier(self) -> bool:
        return bool(self.declared("CLASSIFIER", False))

    @property
    def config_class(self):
        """``config_class()`` returning the library config class, or None for a stage without ``args:``."""
        return self.declared("config_class")

    @property
    def arg_defaults(self) -> dict:
        return self.declared("ARG_DEFAULTS", {})

    def defaults(self, recipe, name: str, spec: dict) -> str | None:
        """Which defaults fill the stage's unset ``args:`` (align's micro-model ones or the library config's own,
        by the model it trains), with their values; None for a stage without ``args:``."""
        from align.stages.training import defaults_summary, filled_defaults, model_origin

        if self.config_class is None:
            return None
        config_class = self.config_class()
        own, why = model_origin(recipe, spec)
        args = spec.get("args") if isinstance(spec.get("args"), dict) else {}
        return defaults_summary(name, config_class, filled_defaults(config_class, self.arg_defaults, args, own), own, why)

    def run(self, ctx) -> dict:
        return self.module.run(ctx)

    def judge_names(self, spec: dict) -> list[str]:
        names = []
        for key in self.judge_keys:
            value = spec.get(key) or []
            names += value if isinstance(value, list) else [value]
        return names

    def model_refs(self, spec: dict) -> dict[str, tuple[object, str]]:
        """Key (below the stage) -> (value, "model" or "tokenizer") for every model or tokenizer it loads."""
        own = self.declared("model_refs")
        if own is not None:
            return own(spec)
        return {key: (spec[key], what) for key, what in MODEL_REFS.items() if key in spec}

    def check(self, spec: dict, where: str) -> list[str]:
        """Every problem of a stage spec that shows without loading anything: declared key types, generation
        options, ``args:`` types, training keys (LoRA, quantization, dtype, chat template), its own rules."""
        from align.fields import field_problems, matches, option_problems
        from align.stages.training import training_problems

        problems = [f"{where}.{key}: expected {tp.__name__}, got {spec[key]!r} ({type(spec[key]).__name__}). "
                    f"{self.keys[key]}." for key, tp in self.types.items()
                    if spec.get(key) is not None and not matches(spec[key], tp)]
        if self.generation_defaults is not None and "generation" in spec:
            problems += option_problems(spec["generation"], self.generation_defaults, f"{where}.generation")
        if self.sampling_backend(spec) is not None:
            from align.eval.sampling import backend_problems

            problems += backend_problems(spec, where)
        if isinstance(spec.get("args"), dict) and self.config_class is not None:
            problems += field_problems(spec["args"], self.config_class(), f"{where}.args", unknown=False)
        problems += training_problems(spec, where, keys=self.keys, classifier=self.classifier)
        own = self.declared("check")
        if own is not None:
            problems += own(spec, where)
        return problems

    def model_findings(self, spec: dict, key: str, path: str, where: str) -> tuple[list[str], list[str]]:
        """(problems, notes) about the model ``spec[key]`` found at ``path``, by the kind's own ``model_findings``."""
        own = self.declared("model_findings")
        return own(spec, key, path, where) if own is not None else ([], [])

    def check_dataset(self, spec: dict, key: str, ds, where: str, label: str) -> None:
        """The kind's own rule on dataset ``key`` once loaded (``label`` names it in messages)."""
        own = self.declared("check_dataset")
        if own is not None:
            own(spec, key, ds, where, label)


def stage_kind(kind: str, *, where: str = "kind") -> StageKind:
    """The contract of stage kind ``kind``; an unknown kind is an AlignError naming ``where``."""
    if not isinstance(kind, str) or kind not in STAGE_KINDS:  # a mapping or list here is unhashable
        raise AlignError(f"{where}: unknown stage kind {kind!r}.{suggest(kind, STAGE_KINDS)} "
                         f"Available: {', '.join(STAGE_KINDS)}.")
    return StageKind(kind, importlib.import_module(STAGE_KINDS[kind]))
