"""What every stage that trains a model shares (sft, dpo, grpo, rloo, reward, ppo): the keys they take for it,
LoRA, loading the model to train, the chat template of conversational data, and the checks of those keys."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from align import models
from align.errors import AlignError
from align.refs import StageRef

log = logging.getLogger("align")

MODEL_KEYS = {  # spec keys shared by every stage that trains a model
    "chat_template": "a template TRL ships (llama3, qwen2_5, gemma3, phi3, ...), default (align's User:/Assistant:), "
                     "or a .jinja file; default: the model's own, align's default if it has none",
    "context_check": "warn (default), error or off: whether the token context this stage trains or samples after "
                     "differs from the one the other stages use (the chat template's generation prompt against the "
                     "rendered conversation), logged once",
    "dtype": "weights while training: float32 (default: master weights, bf16 autocast where the GPU has it), "
             "bfloat16, float16 or auto (the checkpoint's)",
    "chat_template_kwargs": "template variables for every rendering of a conversation, e.g. {enable_thinking: false} "
                            "(Qwen3); saved with the tokenizer, so later stages inherit them; a dataset's own "
                            "chat_template_kwargs override them row by row",
    "model_kwargs": "model options, named as TRL's ModelConfig: attn_implementation, trust_remote_code (default "
                    "false), revision, dtype; for every model the stage loads",
}
MERGE_KEY = ("also save the LoRA adapter merged into its full-precision base under merged/ (default false), which "
             "later stages and align export then load; nothing to merge after full fine-tuning")
DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
LORA_ALIASES = {"rank": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "targets": "target_modules",
                "target": "target_modules", "modules": "target_modules"}  # names other libraries use


def lora_enabled(spec: dict, *, classifier: bool = False) -> bool:
    """LoRA is on unless ``lora: false``; for a reward model (a ``classifier``) only when ``lora:`` is given."""
    return bool(spec.get("lora")) if classifier else spec.get("lora") is not False


def lora_config(spec, where: str, task_type: str = "CAUSAL_LM"):
    """A peft LoraConfig from the recipe's ``lora:`` (None for full fine-tuning); ``true`` takes the defaults."""
    from peft import LoraConfig

    if spec is False:
        return None
    if spec is True:
        spec = {}
    if spec is not None and not isinstance(spec, dict):
        raise AlignError(f"{where}: expected LoraConfig fields (r, lora_alpha, target_modules, ...) or false, got {spec!r}.")
    try:
        return LoraConfig(task_type=task_type, **{**DEFAULT_LORA, **(spec or {})})
    except (TypeError, ValueError) as e:
        raise AlignError(f"{where}: LoraConfig rejected the fields: {e}") from None


def load_for_training(ctx, key: str = "model", *, classifier: bool = False):
    """(model, tokenizer) named by ``spec[key]``, its base in 4/8 bit if ``quantization:`` asks (QLoRA)."""
    lora = lora_enabled(ctx.spec, classifier=classifier)
    quant = models.quantization_config(ctx.spec.get("quantization"), lora=lora, where=ctx.where("quantization"))
    return models.load_for_training(ctx.spec[key], quantization=quant, classifier=classifier, field=ctx.where(key),
                                    dtype=ctx.spec.get("dtype"), model_kwargs=model_kwargs(ctx))


def model_kwargs(ctx) -> dict:
    """The stage's checked ``model_kwargs:`` (its model options), for every model the stage loads."""
    value = ctx.spec.get("model_kwargs")
    problems = model_kwargs_problems(ctx.spec, f"stages.{ctx.name}")
    if problems:
        raise AlignError("\n".join(problems))
    return dict(value or {})


def model_kwargs_problems(spec: dict, where: str) -> list[str]:
    """``model_kwargs:`` against the options align passes on, and against the stage's own ``dtype``;
    ``args.model_init_kwargs`` is TRL's place for them, which TRL ignores for the model align loads."""
    problems = models.model_kwargs_problems(spec.get("model_kwargs"), f"{where}.model_kwargs")
    given = spec.get("model_kwargs") if isinstance(spec.get("model_kwargs"), dict) else {}
    if spec.get("dtype") is not None and given.get("dtype") not in (None, spec["dtype"]):
        problems.append(f"{where}.model_kwargs.dtype: {given['dtype']!r} contradicts {where}.dtype "
                        f"({spec['dtype']!r}); give one of them.")
    if isinstance(spec.get("args"), dict) and spec["args"].get("model_init_kwargs") is not None:
        problems.append(f"{where}.args.model_init_kwargs: align loads the model itself, so TRL would ignore these; "
                        f"put them in {where}.model_kwargs ({', '.join(models.MODEL_KWARGS)}).")
    return problems


# --------------------------------------------------------------------------- whose defaults: align's model or a real one

ALIGN_MODEL_MARKER = "align_model.json"  # in a model folder whose weights align built from scratch (and descendants)


def marked_align_model(path) -> str | None:
    """The marker's ``origin`` if the model folder ``path`` (a stage folder, its ``merged/``, or an adapter's base)
    descends from a model align pretrained from scratch; None for any other checkpoint or a hub id."""
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        return None
    found = models.model_folder(folder)
    for candidate in dict.fromkeys(c for c in (folder, found) if c is not None):
        marker = candidate / ALIGN_MODEL_MARKER
        if marker.is_file():
            try:
                return str(json.loads(marker.read_text()).get("origin", "align"))
            except (OSError, ValueError):
                return "align"
    if found is not None and models.is_adapter(found):
        try:
            base = json.loads((found / "adapter_config.json").read_text()).get("base_model_name_or_path")
        except (OSError, ValueError):
            return None
        return marked_align_model(base) if base and str(base) != str(folder) else None
    return None


def model_origin(recipe, spec: dict, seen: tuple = ()) -> tuple[bool, str]:
    """(whether the model a stage trains is align's own, from-scratch model; why), following ``${stages.X}``
    through the recipe: a model built from a preset is align's, so is anything trained from it; a hub id or a
    folder without align's marker is a real checkpoint."""
    key = next((k for k in ("model", "policy") if k in spec), None)
    value = spec.get(key) if key else None
    if value is None or isinstance(value, dict):
        return True, "built from scratch by align (model preset)"
    if isinstance(value, StageRef) and value.stage in recipe.stages and value.stage not in seen:
        own, why = model_origin(recipe, recipe.stages[value.stage].spec, (*seen, value.stage))
        return own, f"via stages.{value.stage}, {why}"
    origin = marked_align_model(value)
    if origin is not None:
        return True, f"{value} holds {ALIGN_MODEL_MARKER} ({origin})"
    return False, f"{value} is a checkpoint align did not pretrain"


def mark_align_model(folder, why: str) -> None:
    """Say in a saved model folder that its weights descend from align's own pretraining (see ``model_origin``)."""
    folder = Path(folder)
    if folder.is_dir():
        (folder / ALIGN_MODEL_MARKER).write_text(json.dumps({"origin": why}) + "\n")


# Settings align makes for every model, and why; every other unset field is a model-size choice (below).
RUN_SETTINGS = ("output_dir", "seed", "report_to", "bf16", "fp16", "use_cpu", "dataloader_num_workers",
                "save_total_limit")
MICRO_DEFAULTS = {  # for align's own micro models, in every training stage
    "activation_checkpointing": False,  # recomputation costs more than it saves on a tiny model
    "logging_steps": 10,
    "save_steps": 100,
}
ALIASES = {"activation_checkpointing": "gradient_checkpointing"}  # transformers 5's name -> its deprecated alias


def library_defaults(config_class) -> dict:
    """Field -> default of a library config dataclass, as the class declares it."""
    values = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            values[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return values


def filled_defaults(config_class, micro: dict, user: dict, own_model: bool) -> dict[str, tuple[object, str]]:
    """Each model-size field the recipe's ``args:`` leave unset -> (value, where it comes from): align's micro-model
    default for align's own model, the library config's own default for a real checkpoint."""
    library = library_defaults(config_class)
    filled = {}
    for key, value in {**MICRO_DEFAULTS, **micro}.items():
        alias = ALIASES.get(key)
        if key in user or alias in user:  # either name set by the recipe: its value, whichever name it used
            continue
        if key not in library:  # a config without the new name (before transformers 5): the old one
            if alias not in library:
                continue
            key = alias
        shipped = library[key] if library[key] is not None or alias not in library else library[alias]
        filled[key] = (value, "align's micro-model default") if own_model else \
            (shipped, f"{config_class.__name__} default")
    return filled


def defaults_summary(name: str, config_class, filled: dict, own_model: bool, why: str) -> str:
    """One line for the log and ``align validate``: which defaults applied to which model, and their values."""
    which = "align's micro-model defaults" if own_model else f"{config_class.__name__}'s own defaults"
    values = ", ".join(f"{k}={v!r}" for k, (v, _) in filled.items()) or "none (args sets them all)"
    model = "align's own micro model" if own_model else "a real checkpoint"
    return (f"stages.{name}.args: the model is {model} ({why}), so unset args take {which}: {values}; "
            f"for every model align sets {', '.join(RUN_SETTINGS)} (save_total_limit=2, precision by device)")


def conversation_template(ctx, tokenizer, ds, *, generation_prompt=None):
    """Conversational data is rendered with the recipe's ``chat_template:``, the model's own, or align's default,
    and the stage's ``chat_template_kwargs``; the context check runs on its first conversation. Returns ``ds`` as the
    trainer must get it (``with_template_kwargs``)."""
    from trl.data_utils import is_conversational

    from align.chat_templates import prepare_chat_template

    if len(ds) and is_conversational(ds[0]):
        prepare_chat_template(tokenizer, ctx.spec.get("chat_template"), where=ctx.where("chat_template"),
                              context_check=ctx.spec.get("context_check"), row=ds[0],
                              generation_prompt=generation_prompt, kwargs=ctx.spec.get("chat_template_kwargs"))
        return with_template_kwargs(ds, tokenizer)
    return ds


def with_template_kwargs(ds, tokenizer):
    """``ds`` with the tokenizer's ``chat_template_kwargs`` in its per-row ``chat_template_kwargs`` column, under each
    row's own: TRL's SFT, DPO and reward trainers render a row with exactly that column (they call the template
    themselves, so the tokenizer's defaults would not reach them otherwise)."""
    from align.chat_templates import KWARGS_KEY, template_kwargs

    kwargs = template_kwargs(tokenizer)
    if ds is None or not kwargs:
        return ds
    if KWARGS_KEY not in ds.column_names:
        return ds.add_column(KWARGS_KEY, [kwargs] * len(ds))
    return ds.map(lambda row: {KWARGS_KEY: {**kwargs, **{k: v for k, v in (row[KWARGS_KEY] or {}).items()
                                                          if v is not None}}})


def save_merged(ctx, tokenizer) -> None:
    """``merge: true``: ``<stage>/merged/``, the saved adapter merged into its base reloaded in full precision (after
    QLoRA too: never a 4/8-bit model), with the config the base shipped. Main process only, after the stage saved."""
    import logging

    if not ctx.spec.get("merge") or not ctx.is_main_process:
        return
    if not models.is_adapter(ctx.out_dir):
        logging.getLogger("align").info("%s: merge: the stage trained every weight, so its folder already is a plain "
                                        "model; nothing to merge", ctx.where("merge"))
        return
    merged = models.load_causal_lm(ctx.out_dir, field=ctx.where("merge"), training=True, tensor_parallel=False,
                                   model_kwargs=model_kwargs(ctx))
    models.restore_shipped_config(merged, ctx.out_dir)
    merged.save_pretrained(ctx.out_dir / "merged")
    tokenizer.save_pretrained(ctx.out_dir / "merged")
    ctx.mark_model(ctx.out_dir / "merged")


def model_findings(spec: dict, key: str, path: str, where: str, *, classifier_keys=()) -> tuple[list[str], list[str]]:
    """For ``align validate``: whether the model named by ``key`` (already on disk at ``path``) trains replies after the
    context it is sampled after, and, for a key a reward or value model is built from, the scalar head a family
    without a sequence-classification class gets. (problems, notes)"""
    from align.chat_templates import context_findings
    from align.models import scalar_head_note

    problems, notes = [], []
    if key in ("model", "policy"):
        problems, notes = context_findings(path, spec, where)
    if key in classifier_keys:
        try:
            note = scalar_head_note(path)
        except Exception:  # noqa: BLE001 -- a config transformers cannot read: the stage's loading reports it
            note = None
        notes += [f"{where}.{key}: {note}"] if note else []
    return problems, notes


def training_problems(spec: dict, where: str, *, keys, classifier: bool) -> list[str]:
    """The training keys a stage takes (``lora``, ``value_lora``, ``quantization``, ``dtype``, ``chat_template``,
    ``chat_template_kwargs``, ``context_check``, ``generation_prompt``),
    checked as loading them would check them, without loading a model."""
    from align.fields import field_problems

    problems, checks = [], []
    for key in ("lora", "value_lora"):
        value = spec.get(key) if key in keys else None
        if value is None or value is False or (key == "value_lora" and value is True):
            continue
        if not isinstance(value, dict):
            problems.append(f"{where}.{key}: expected LoraConfig fields (r, lora_alpha, target_modules, ...) or false, "
                            f"got {value!r}.")
            continue
        from peft import LoraConfig

        fields = field_problems(value, LoraConfig, f"{where}.{key}", unknown=True, aliases=LORA_ALIASES)
        problems += fields
        if not fields:  # the fields are right: LoraConfig's own checks of their values
            checks.append((f"{where}.{key}", lambda value=value, key=key: lora_config(value, f"{where}.{key}")))
    if "quantization" in keys and spec.get("quantization") not in (None, False):
        checks.append((f"{where}.quantization", lambda: models.quantization_config(
            spec["quantization"], lora=lora_enabled(spec, classifier=classifier), where=f"{where}.quantization")))
    if "dtype" in keys and spec.get("dtype") is not None:
        checks.append((f"{where}.dtype", lambda: models.resolve_dtype(spec["dtype"], training=True,
                                                                      field=f"{where}.dtype")))
    if "chat_template" in keys and spec.get("chat_template") not in (None, "default"):
        from align.chat_templates import resolve_chat_template

        checks.append((f"{where}.chat_template", lambda: resolve_chat_template(spec["chat_template"],
                                                                               where=f"{where}.chat_template")))
    if "model_kwargs" in keys:
        problems += model_kwargs_problems(spec, where)
    if "context_check" in keys and spec.get("context_check") is not None:
        from align.chat_templates import CONTEXT_CHECK

        if spec["context_check"] not in CONTEXT_CHECK:
            problems.append(f"{where}.context_check: expected one of {', '.join(CONTEXT_CHECK)}; "
                            f"got {spec['context_check']!r}.")
    if "chat_template_kwargs" in keys and spec.get("chat_template_kwargs") is not None:
        from align.chat_templates import kwargs_problem

        problem = kwargs_problem(spec["chat_template_kwargs"], f"{where}.chat_template_kwargs")
        problems += [problem] if problem else []
    if "generation_prompt" in keys and spec.get("generation_prompt") is not None:
        from align.chat_templates import GENERATION_PROMPTS

        if spec["generation_prompt"] not in GENERATION_PROMPTS:
            problems.append(f"{where}.generation_prompt: expected one of {', '.join(GENERATION_PROMPTS)}; "
                            f"got {spec['generation_prompt']!r}.")
    for label, check in checks:
        try:
            check()
        except AlignError as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 -- a library refusing a value
            problems.append(f"{label}: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
    return problems
