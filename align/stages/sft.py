"""sft stage: TRL's SFTTrainer on conversations, LoRA by default, QLoRA on request.

The output folder is a PEFT adapter (plus tokenizer) on top of the input model; ``merge: true``
also writes ``merged/``, a plain model that needs no peft to load.
"""

from __future__ import annotations

import logging
from functools import partial

from align.errors import AlignError
from align.models import fp32_adapters_without_autocast, load_causal_lm, merge_lora, restore_shipped_config
from align.stages.training import MODEL_KEYS, conversation_template, load_for_training, lora_config, with_template_kwargs
from align.stages.training import model_findings  # noqa: F401 -- declared: what align validate says of its model

REQUIRED = ("model", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
EXPECTED = {"dataset": ("conversational", "prompt_completion"),  # format per dataset key
            "eval_dataset": ("conversational", "prompt_completion")}
CARD_TAGS = ("trl", "sft")  # model card tags beside align and the kind
KEYS = {
    "model": "the model to fine-tune: ${stages.pretrain}, a model folder or a hub id",
    "dataset": "conversations (messages) or prompt-completion pairs",
    "eval_dataset": "held-out data in the same format (optional)",
    "lora": "peft LoraConfig fields (default r=16, lora_alpha=32, all-linear); false for full fine-tuning",
    "quantization": "4bit or 8bit: load the base with bitsandbytes and train LoRA on it (QLoRA); needs lora",
    "merge": "also save the adapter merged into the base under merged/, which later stages load (default true); "
             "after QLoRA it is merged into the full-precision base, so merged/ is a normal float model",
    **MODEL_KEYS,
    "generation_prompt": "template (default: the chat template's own) or trained: rewrite the saved template so "
                         "every later stage samples after the prompt SFT trains replies after (for templates that "
                         "open a think block to sample but strip it from trained replies, e.g. DeepSeek-R1's)",
}
TYPES = {"merge": bool}
KEPT_COLUMNS = ("tools", "chat_template_kwargs")  # per-row rendering options TRL reads
log = logging.getLogger("align")


def config_class():
    from trl import SFTConfig

    return SFTConfig


def last_turn_as_completion(ds, where: str):
    """messages -> prompt (every turn before the last) + completion (the last, an assistant turn). TRL's
    completion-only loss then trains exactly the final reply, whatever the template, with no generation markers.
    Earlier turns (tool calls and tool results included) are context only. ``tools`` and ``chat_template_kwargs``
    columns are kept: TRL renders each row with them."""
    def split(row, index):
        messages = row["messages"]
        if not messages or messages[-1]["role"] != "assistant" or len(messages) < 2:
            raise AlignError(f"{where}: row {index} does not end with an assistant turn after a prompt, so it has no "
                             f"completion to train on.")
        return {"prompt": messages[:-1], "completion": messages[-1:]}

    return ds.map(split, with_indices=True, remove_columns=[c for c in ds.column_names if c not in KEPT_COLUMNS])


def prepare_conversations(ctx, tokenizer, train, evals):
    """Make conversations trainable on the model's own template. Assistant-only loss needs {% generation %}
    markers; TRL patches the Hub templates it knows. For any other template (Llama-3.1's, a user's own) align
    trains on the last assistant turn as a completion instead, and says so; asking for assistant_only_loss
    explicitly then is an error with the choices."""
    from align.chat_templates import assistant_only_template, prepare_chat_template

    prepare_chat_template(tokenizer, ctx.spec.get("chat_template"), where=ctx.where("chat_template"),
                          context_check=ctx.spec.get("context_check"), row=train[0] if len(train) else None,
                          generation_prompt=ctx.spec.get("generation_prompt"), kwargs=ctx.spec.get("chat_template_kwargs"))
    train, evals = with_template_kwargs(train, tokenizer), with_template_kwargs(evals, tokenizer)
    user_args = ctx.spec.get("args") or {}
    if not user_args.get("assistant_only_loss", True) or assistant_only_template(tokenizer) is not None:
        return train, evals, {"assistant_only_loss": bool(user_args.get("assistant_only_loss", True))}
    if "assistant_only_loss" in user_args:
        raise AlignError(
            f"{ctx.where('args.assistant_only_loss')}: the chat template has no {{% generation %}} markers and TRL "
            f"cannot patch it, so the assistant tokens cannot be masked. Choose one: remove assistant_only_loss "
            f"(align then trains on each conversation's last assistant turn as a completion), set it to false "
            f"(loss on every token, prompts included), give prompt-completion data, or set "
            f"{ctx.where('chat_template')} to a template with markers.")
    log.info("%s: the chat template has no {%% generation %%} markers and TRL cannot patch it; training on each "
             "conversation's last assistant turn (completion-only loss) instead of every assistant turn.", ctx.where("chat_template"))
    train = last_turn_as_completion(train, ctx.where("dataset"))
    evals = last_turn_as_completion(evals, ctx.where("eval_dataset")) if evals is not None else None
    return train, evals, {"assistant_only_loss": False, "completion_only_loss": True}


def run(ctx) -> dict:
    from trl import SFTTrainer

    model, tokenizer = load_for_training(ctx)
    train = ctx.dataset("dataset", expected=EXPECTED["dataset"], tokenizer=tokenizer)
    evals = ctx.dataset("eval_dataset", expected=EXPECTED["eval_dataset"], tokenizer=tokenizer) \
        if "eval_dataset" in ctx.spec else None
    loss = {}
    if "messages" in train.column_names:
        train, evals, loss = prepare_conversations(ctx, tokenizer, train, evals)
    else:
        train = conversation_template(ctx, tokenizer, train, generation_prompt=ctx.spec.get("generation_prompt"))
        evals = with_template_kwargs(evals, tokenizer)
    args = ctx.config(
        config_class(),
        learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, num_train_epochs=1,
        per_device_train_batch_size=16, max_length=512, eval_strategy="epoch" if evals is not None else "no",
        **loss,
    )
    trainer = SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals, processing_class=tokenizer,
                         peft_config=lora_config(ctx.spec.get("lora"), ctx.where("lora")))
    fp32_adapters_without_autocast(trainer.model, args)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
               "generation_prompt": ctx.spec.get("generation_prompt") or "template"}
    if evals is not None:
        metrics.update(trainer.evaluate())
    ctx.save(trainer, tokenizer)
    if ctx.is_main_process:
        if ctx.spec.get("merge", True) and hasattr(trainer.model, "merge_and_unload"):
            base = partial(load_causal_lm, ctx.spec["model"], field=ctx.where("model"), training=True)
            merged = merge_lora(trainer.model, base)
            restore_shipped_config(merged, ctx.spec["model"])
            merged.save_pretrained(ctx.out_dir / "merged")
            tokenizer.save_pretrained(ctx.out_dir / "merged")
    return metrics
