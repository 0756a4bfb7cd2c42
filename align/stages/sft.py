"""sft stage: TRL's SFTTrainer on conversations, LoRA by default, QLoRA on request.

The output folder is a PEFT adapter (plus tokenizer) on top of the input model; ``merge: true``
also writes ``merged/``, a plain model that needs no peft to load.
"""

from __future__ import annotations

from align.errors import AlignError
from align.models import load_causal_lm, load_tokenizer, resolve_model_path

REQUIRED = ("model", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
KEYS = {
    "model": "the model to fine-tune: ${stages.pretrain}, a model folder or a hub id",
    "dataset": "conversations (messages) or prompt-completion pairs",
    "eval_dataset": "held-out data in the same format (optional)",
    "lora": "peft LoraConfig fields (default r=16, lora_alpha=32, all-linear); false for full fine-tuning",
    "quantization": "4bit or 8bit: load the base with bitsandbytes (QLoRA); needs lora",
    "merge": "also save the adapter merged into the base under merged/, which later stages load (default true)",
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


def quantization_config(kind, where: str):
    """bitsandbytes 4-bit (nf4) or 8-bit loading, with a clear error where it cannot run."""
    if kind in (None, False):
        return None
    if kind not in ("4bit", "8bit"):
        raise AlignError(f"{where}: expected 4bit or 8bit, got {kind!r}.")
    try:
        import bitsandbytes  # noqa: F401
        import torch
        from transformers import BitsAndBytesConfig
    except ImportError as e:
        raise AlignError(f"{where}: {kind} needs bitsandbytes, which does not import here ({e}). "
                         f"Install it (pip install bitsandbytes) or remove quantization.") from None
    if kind == "4bit":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16 if torch.cuda.is_available() else torch.float32)
    return BitsAndBytesConfig(load_in_8bit=True)


def load_for_training(ctx, key: str = "model"):
    """The model named by ``spec[key]`` (an adapter is merged into its base), quantised if asked."""
    from peft import prepare_model_for_kbit_training

    quant = quantization_config(ctx.spec.get("quantization"), ctx.where("quantization"))
    if quant is not None and ctx.spec.get("lora") is False:
        raise AlignError(f"{ctx.where('quantization')}: a quantised base cannot be fully fine-tuned; keep lora on.")
    path = resolve_model_path(ctx.spec[key], field=ctx.where(key))
    model = load_causal_lm(path, field=ctx.where(key), **({"quantization_config": quant} if quant else {}))
    if quant is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    return model, load_tokenizer(path, field=ctx.where(key))


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
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint())
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime")}
    if evals is not None:
        metrics.update(trainer.evaluate())
    ctx.save(trainer, tokenizer)
    if ctx.is_main_process:
        if ctx.spec.get("merge", True) and hasattr(trainer.model, "merge_and_unload"):
            trainer.model.merge_and_unload().save_pretrained(ctx.out_dir / "merged")
            tokenizer.save_pretrained(ctx.out_dir / "merged")
    return metrics
