"""What every stage that trains a model shares (sft, dpo, grpo, rloo, reward, ppo): the keys they take for it,
LoRA, loading the model to train, the chat template of conversational data, and the checks of those keys."""

from __future__ import annotations

from align import models
from align.errors import AlignError

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
                                    dtype=ctx.spec.get("dtype"))


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
    merged = models.load_causal_lm(ctx.out_dir, field=ctx.where("merge"), training=True, tensor_parallel=False)
    models.restore_shipped_config(merged, ctx.out_dir)
    merged.save_pretrained(ctx.out_dir / "merged")
    tokenizer.save_pretrained(ctx.out_dir / "merged")


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
