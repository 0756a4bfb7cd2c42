"""reward stage: TRL's RewardTrainer on preference pairs, from the SFT model or any checkpoint.

A slice of the pairs is held out; ``metrics.json`` reports held-out pairwise accuracy (share of
pairs where chosen outscores rejected) and the mean reward margin.
"""

from __future__ import annotations

import math
from functools import partial

from align.errors import AlignError
from align.models import fp32_adapters_without_autocast, load_sequence_classifier, merge_lora
from align.stages.training import MODEL_KEYS, conversation_template, load_for_training, lora_config, with_template_kwargs
from align.stages import training

REQUIRED = ("model", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
CARD_TAGS = ("trl", "reward-model")  # model card tags beside align and the kind
KEYS = {
    "model": "initial weights: ${stages.sft} (LoRA merged), a model folder or a hub id",
    "dataset": "preference pairs (prompt/chosen/rejected or implicit chosen/rejected)",
    "eval_dataset": "held-out pairs (default: eval_fraction of dataset)",
    "eval_fraction": "share of pairs held out when no eval_dataset is given (default 0.1)",
    "lora": "LoraConfig fields to train a LoRA reward model, score head trained in full (default: full fine-tuning)",
    "quantization": "4bit or 8bit: load the backbone with bitsandbytes and train LoRA on it (QLoRA); needs lora; "
                    "the saved reward model is merged into the full-precision backbone",
    **MODEL_KEYS,
}
TYPES = {"eval_fraction": float}
# align's defaults for its own micro models; a real checkpoint gets RewardConfig's own (see training.filled_defaults)
ARG_DEFAULTS = dict(learning_rate=1e-3, lr_scheduler_type="cosine", warmup_steps=0.05, num_train_epochs=1,
                    per_device_train_batch_size=16, per_device_eval_batch_size=32, max_length=256)
CLASSIFIER = True  # a sequence classifier: LoRA only when `lora:` is given
PREFERENCE_FORMATS = ("preference", "implicit_preference")
EXPECTED = {"dataset": PREFERENCE_FORMATS, "eval_dataset": PREFERENCE_FORMATS}  # format per dataset key


# what align validate says of its model: the context check, and the scalar head a reward/value model may need
model_findings = partial(training.model_findings, classifier_keys=("model",))

def config_class():
    from trl import RewardConfig

    return RewardConfig


def held_out_pairs(pairs, fraction: float, seed: int, *, where: str):
    """(train, held out): ``fraction`` of the pairs, at least one, held out to measure accuracy, and at least one
    left to train on; otherwise an error naming the fields (datasets' own message names neither)."""
    if not 0 < fraction < 1:
        raise AlignError(f"{where}.eval_fraction: expected a share between 0 and 1 (exclusive), got {fraction}.")
    held = math.ceil(fraction * len(pairs))
    if len(pairs) - held < 1:
        raise AlignError(f"{where}.dataset: {len(pairs)} preference pair(s); holding out eval_fraction={fraction} of "
                         f"them (at least one) to measure accuracy leaves none to train on. Give the stage more pairs "
                         f"(a larger limit, or more prompts on the preferences stage that makes them), or an "
                         f"eval_dataset.")
    split = pairs.train_test_split(test_size=held, seed=seed)
    return split["train"], split["test"]


def run(ctx) -> dict:
    from trl import RewardTrainer

    model, tokenizer = load_for_training(ctx, classifier=CLASSIFIER)
    train = ctx.dataset("dataset", expected=PREFERENCE_FORMATS, tokenizer=tokenizer)
    train = conversation_template(ctx, tokenizer, train)
    if "eval_dataset" in ctx.spec:
        evals = with_template_kwargs(ctx.dataset("eval_dataset", expected=PREFERENCE_FORMATS, tokenizer=tokenizer),
                                     tokenizer)
    else:
        train, evals = held_out_pairs(train, float(ctx.spec.get("eval_fraction", 0.1)), ctx.seed,
                                      where=f"stages.{ctx.name}")
    args = ctx.config(config_class(), ARG_DEFAULTS, eval_strategy="epoch")
    peft = lora_config(ctx.spec["lora"], ctx.where("lora")) if ctx.spec.get("lora") else None
    if peft is not None:
        peft.task_type = "SEQ_CLS"
    trainer = RewardTrainer(model=model, args=args, train_dataset=train, eval_dataset=evals,
                            processing_class=tokenizer, peft_config=peft)
    fp32_adapters_without_autocast(trainer.model, args)
    if len(trainer.train_dataset) == 0:
        raise AlignError(f"stages.{ctx.name}: every training pair is longer than args.max_length={args.max_length} "
                         f"tokens and was dropped, so there is nothing to train on; raise max_length.")
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    if len(trainer.eval_dataset) == 0:
        raise AlignError(f"stages.{ctx.name}: every held-out pair is longer than args.max_length={args.max_length} "
                         f"tokens and was dropped, so accuracy cannot be measured; raise max_length.")
    held_out = trainer.evaluate()
    # TRL drops pairs longer than max_length while preparing: count what was really trained and evaluated
    kept = {"train_pairs": len(trainer.train_dataset), "eval_pairs": len(trainer.eval_dataset)}
    dropped = {"train_pairs_dropped": len(train) - kept["train_pairs"], "eval_pairs_dropped": len(evals) - kept["eval_pairs"]}
    metrics = {"train_loss": result.training_loss, "pairwise_accuracy": held_out.get("eval_accuracy"),
               "reward_margin": held_out.get("eval_margin"), **kept, **dropped,
               "dropped_because": f"longer than args.max_length={args.max_length} tokens", **held_out}
    if any(dropped.values()) and ctx.is_main_process:
        print(f"reward: {dropped['train_pairs_dropped']} training and {dropped['eval_pairs_dropped']} held-out pairs "
              f"were longer than max_length={args.max_length} tokens and dropped by TRL; raise args.max_length to keep them.")
    if peft is not None:  # save a plain model, as a reward model without LoRA is
        base = lambda: load_sequence_classifier(ctx.spec["model"], field=ctx.where("model"),  # noqa: E731
                                                model_kwargs=training.model_kwargs(ctx))[0]
        trainer.model = merge_lora(trainer.model, base)
    ctx.save(trainer, tokenizer)
    if ctx.is_main_process:
        print(f"reward: held-out pairwise accuracy {metrics['pairwise_accuracy']:.3f} on {kept['eval_pairs']} pairs, "
              f"margin {metrics['reward_margin']:.3f}")
    return metrics
