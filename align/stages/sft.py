"""sft stage: TRL's SFTTrainer on conversations, LoRA by default, QLoRA on request.

The output folder is a PEFT adapter (plus tokenizer) on top of the input model; ``merge: true``
also writes ``merged/``, a plain model that needs no peft to load.
"""

from __future__ import annotations

from functools import partial

from align import models
from align.errors import AlignError
from align.models import fp32_adapters_without_autocast, load_causal_lm, merge_lora, quantization_config

REQUIRED = ("model", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
KEYS = {
    "model": "the model to fine-tune: ${stages.pretrain}, a model folder or a hub id",
    "dataset": "conversations (messages) or prompt-completion pairs",
    "eval_dataset": "held-out data in the same format (optional)",
    "lora": "peft LoraConfig fields (default r=16, lora_alpha=32, all-linear); false for full fine-tuning",
    "quantization": "4bit or 8bit: load the base with bitsandbytes and train LoRA on it (QLoRA); needs lora",
    "merge": "also save the adapter merged into the base under merged/, which later stages load (default true); "
             "after QLoRA it is merged into the full-precision base, so merged/ is a normal float model",
}
DEFAULT_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}


def config_class():
    from trl import SFTConfig

    return SFTConfig


def lora_config(spec, where: str):
    """A peft LoraConfig from the recipe's ``lora:`` (None for full fine-tuning)."""
    from peft import LoraConfig

    if spec is False:
        return None
    if spec is not None and not isinstance(spec, dict):
        raise AlignError(f"{where}: expected LoraConfig fields (r, lora_alpha, target_modules, ...) or false, got {spec!r}.")
    try:
        return LoraConfig(task_type="CAUSAL_LM", **{**DEFAULT_LORA, **(spec or {})})
    except (TypeError, ValueError) as e:
        raise AlignError(f"{where}: LoraConfig rejected the fields: {e}") from None


def load_for_training(ctx, key: str = "model", *, classifier: bool = False):
    """(model, tokenizer) named by ``spec[key]``, its base in 4/8 bit if ``quantization:`` asks (QLoRA).
    LoRA is on unless ``lora: false``; for a reward model (``classifier``) only when ``lora:`` is given."""
    lora = bool(ctx.spec.get("lora")) if classifier else ctx.spec.get("lora") is not False
    quant = quantization_config(ctx.spec.get("quantization"), lora=lora, where=ctx.where("quantization"))
    return models.load_for_training(ctx.spec[key], quantization=quant, classifier=classifier, field=ctx.where(key))


def run(ctx) -> dict:
    from trl import SFTTrainer

    model, tokenizer = load_for_training(ctx)
    train = ctx.dataset("dataset", expected=("conversational", "prompt_completion"), tokenizer=tokenizer)
    evals = ctx.dataset("eval_dataset", expected=("conversational", "prompt_completion"), tokenizer=tokenizer) \
        if "eval_dataset" in ctx.spec else None
    conversational = "messages" in train.column_names
    args = ctx.config(
        config_class(),
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, num_train_epochs=1,
        per_device_train_batch_size=16, max_length=512, assistant_only_loss=conversational,
        eval_strategy="epoch" if evals is not None else "no",
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
                         peft_config=lora_config(ctx.spec.get("lora"), ctx.where("lora")))
    fp32_adapters_without_autocast(trainer.model, args)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime")}
    if evals is not None:
        metrics.update(trainer.evaluate())
    ctx.save(trainer, tokenizer)
    if ctx.is_main_process:
        if ctx.spec.get("merge", True) and hasattr(trainer.model, "merge_and_unload"):
            base = partial(load_causal_lm, ctx.spec["model"], field=ctx.where("model"))
            merge_lora(trainer.model, base).save_pretrained(ctx.out_dir / "merged")
            tokenizer.save_pretrained(ctx.out_dir / "merged")
    return metrics
