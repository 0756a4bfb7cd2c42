"""dpo stage: TRL's DPOTrainer from the SFT model.

With LoRA (the default) the policy is the SFT model plus a fresh adapter and the reference is the
same weights with the adapter disabled, so no second copy sits in memory.
"""

from __future__ import annotations

from align.models import fp32_adapters_without_autocast
from align.stages.training import (DEFAULT_LORA, MODEL_KEYS, conversation_template, load_for_training, lora_config,
                                   with_template_kwargs)
from align.stages import training

REQUIRED = ("model", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
EXPECTED = {"dataset": ("preference", "implicit_preference"),  # format per dataset key
            "eval_dataset": ("preference", "implicit_preference")}
CARD_TAGS = ("trl", "dpo")  # model card tags beside align and the kind
KEYS = {
    "model": "the starting policy, normally ${stages.sft}",
    "dataset": "preference pairs (prompt/chosen/rejected, standard or conversational)",
    "eval_dataset": "held-out pairs (optional)",
    "lora": f"LoraConfig fields (default {DEFAULT_LORA}); false trains all weights against a frozen copy",
    "merge": training.MERGE_KEY,
    "quantization": "4bit or 8bit: load the base with bitsandbytes and train LoRA on it (QLoRA; the reference "
                    "is the quantised base with the adapter disabled); needs lora",
    **MODEL_KEYS,
}
TYPES = {"merge": bool}


# what align validate says of its model: the context check
model_findings = training.model_findings

def config_class():
    from trl import DPOConfig

    return DPOConfig


def run(ctx) -> dict:
    from trl import DPOTrainer

    model, tokenizer = load_for_training(ctx)
    formats = EXPECTED["dataset"]
    train = ctx.dataset("dataset", expected=formats, tokenizer=tokenizer)
    train = conversation_template(ctx, tokenizer, train)
    evals = ctx.dataset("eval_dataset", expected=formats, tokenizer=tokenizer) if "eval_dataset" in ctx.spec else None
    evals = with_template_kwargs(evals, tokenizer)
    args = ctx.config(config_class(), beta=0.1, learning_rate=5e-4, lr_scheduler_type="cosine", warmup_steps=0.05,
                      num_train_epochs=1, per_device_train_batch_size=16, max_length=256,
                      # One reference pass instead of one per epoch (same loss, 14 % faster at 2 epochs). One process
                      # only: TRL caches the log-probs next to the dataset, and an in-memory dataset's cache folder is
                      # a per-process temporary folder, so the other ranks cannot read rank 0's file.
                      precompute_ref_log_probs=ctx.state.num_processes == 1,
                      eval_strategy="epoch" if evals is not None else "no")
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=train, eval_dataset=evals,
                         processing_class=tokenizer, peft_config=lora_config(ctx.spec.get("lora"), ctx.where("lora")))
    fp32_adapters_without_autocast(trainer.model, args)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime")}
    last = next((h for h in reversed(trainer.state.log_history) if "rewards/accuracies" in h), {})
    metrics.update({k: v for k, v in last.items() if k.startswith(("rewards/", "logps/"))})
    if evals is not None:
        metrics.update(trainer.evaluate())
    ctx.save(trainer, tokenizer)
    training.save_merged(ctx, tokenizer)
    return metrics
