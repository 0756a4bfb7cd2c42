"""grpo stage: TRL's GRPOTrainer on prompt-only data, rewarded by the recipe's judges.

Judges (a reward model, the gold function, any ``module:function``) become TRL reward functions.
TRL's GRPO defaults to no KL term (``beta: 0``); for align's own models align sets ``beta: 0.05`` so the policy is
held near the SFT model like PPO's KL penalty, which the RLHF-vs-DPO comparison needs; a real checkpoint gets TRL's.
"""

from __future__ import annotations

from align.errors import AlignError
from align.models import fp32_adapters_without_autocast
from align.stages import training
from align.stages.training import DEFAULT_LORA, MODEL_KEYS, conversation_template, load_for_training, lora_config

REQUIRED = ("model", "dataset", "rewards")
DATASET_KEYS = ("dataset",)
EXPECTED = {"dataset": "prompt_only"}  # format per dataset key
JUDGE_KEYS = ("rewards",)
CARD_TAGS = ("trl", "grpo")  # model card tags beside align and the kind
KEYS = {
    "model": "the starting policy, normally ${stages.sft}",
    "dataset": "prompt-only data (prompt column, standard or conversational)",
    "rewards": "judge names from the recipe's judges (reward model, function); summed, weighted by args.reward_weights",
    "lora": f"LoraConfig fields (default {DEFAULT_LORA}); false for full fine-tuning",
    "merge": training.MERGE_KEY,
    "quantization": "4bit or 8bit: load the base with bitsandbytes and train LoRA on it (QLoRA); needs lora",
    **MODEL_KEYS,
    "generation": "backend: transformers (default) or vllm (TRL's use_vllm with vllm_mode colocate: an engine in "
                  "this process given the policy's weights every step); decoding itself is TRL's args "
                  "(temperature, max_completion_length ...)",
}
# align's defaults for its own micro models (beta 0.05 holds the policy near the SFT model, as PPO's KL penalty
# does); a real checkpoint gets GRPOConfig's / RLOOConfig's own (see training.filled_defaults)
ARG_DEFAULTS = dict(learning_rate=5e-4, lr_scheduler_type="constant", per_device_train_batch_size=8, num_generations=4,
                    max_completion_length=48, temperature=1.0, beta=0.05, max_steps=20)
TYPES = {"merge": bool}
GENERATION_DEFAULTS = {"backend": "transformers"}
# TRL's colocated vLLM (when generation.backend is vllm): no engine subprocess, a share of the GPU for the engine
VLLM_ARGS = {"use_vllm": True, "vllm_mode": "colocate", "vllm_gpu_memory_utilization": 0.3}


def config_class():
    from trl import GRPOConfig

    return GRPOConfig


def completion_text(completion) -> str:
    """TRL passes conversational completions as message lists; judges take the text."""
    return completion if isinstance(completion, str) else completion[-1]["content"]


def reward_functions(ctx) -> list:
    """The stage's judges as reward functions with TRL's signature. TRL passes every dataset column (a ground-truth
    answer ...) and ``trainer_state`` / ``log_extra`` / ``log_metric`` as keywords; they reach the judge, and a
    function judge hands each to its function if it takes it."""
    from align.eval.judge_factory import build_judge

    funcs = []
    for name in ctx.stage.judges:
        judge = build_judge(name, ctx.recipe.judges[name])

        def reward(prompts, completions, completion_ids=None, _judge=judge, **columns):
            return _judge.score(prompts, [completion_text(c) for c in completions], completion_ids=completion_ids,
                                **columns)

        reward.__name__ = name  # TRL logs rewards/<name>/mean
        funcs.append(reward)
    return funcs


def sampling_kwargs(ctx, tokenizer, train) -> dict | None:
    """GRPO and RLOO render every prompt with one ``args.chat_template_kwargs`` (no per-row column): the stage's and
    the dataset's, which must then be the same for every row."""
    from align.chat_templates import KWARGS_KEY, template_kwargs

    kwargs = template_kwargs(tokenizer)
    if KWARGS_KEY in train.column_names:
        rows = {repr(sorted((k, v) for k, v in (r or {}).items() if v is not None)) for r in train[KWARGS_KEY]}
        if len(rows) > 1:
            raise AlignError(f"{ctx.where('dataset')}: rows have different chat_template_kwargs, but "
                             f"{ctx.stage.kind} renders every prompt with one setting (args.chat_template_kwargs).")
        kwargs = {**kwargs, **{k: v for k, v in (train[0][KWARGS_KEY] or {}).items() if v is not None}}
    return kwargs or None


def run_online(ctx, trainer_class, config, **defaults) -> dict:
    """Shared by grpo and rloo: same inputs, same judges-as-rewards, different TRL trainer."""
    from align.eval.generation import neutral_generation_config, note_ignored_settings
    from align.eval.sampling import require_backend

    ctx.options("generation", GENERATION_DEFAULTS)
    import contextlib

    engine_env = contextlib.nullcontext()
    if require_backend(ctx.spec, f"stages.{ctx.name}") == "vllm" or (ctx.spec.get("args") or {}).get("use_vllm"):
        from align.eval.sampling import launcher_env, prepare_colocated_engine

        prepare_colocated_engine()  # on a CPU, TRL's load_weights needs vLLM's linear weights left unpacked
        engine_env = launcher_env()  # TRL sets RANK/LOCAL_RANK/... for its engine: restored once it has started
        defaults = {**VLLM_ARGS, **defaults}
    model, tokenizer = load_for_training(ctx)
    # TRL sets temperature/top_p/top_k/min_p/repetition_penalty; anything else the checkpoint ships (typical_p,
    # suppress_tokens, no_repeat_ngram_size ...) would still apply while sampling: only the recipe's settings count
    if ctx.is_main_process:
        note_ignored_settings(model, ctx.name)
    shipped, model.generation_config = model.generation_config, neutral_generation_config(model)
    train = ctx.dataset("dataset", expected=EXPECTED["dataset"], tokenizer=tokenizer)
    train = conversation_template(ctx, tokenizer, train)
    args = ctx.config(config, ARG_DEFAULTS, logging_steps=1,
                      chat_template_kwargs=sampling_kwargs(ctx, tokenizer, train), **defaults)
    if args.beta == 0:
        print(f"{ctx.name}: beta is 0, so nothing keeps the policy near the SFT model (no KL term).")
    try:
        with engine_env:
            trainer = trainer_class(model=model, reward_funcs=reward_functions(ctx), args=args, train_dataset=train,
                                    processing_class=tokenizer,
                                    peft_config=lora_config(ctx.spec.get("lora"), ctx.where("lora")))
    except ValueError as e:  # batch/generation sizes that do not divide, mostly
        raise AlignError(f"{ctx.where('args')}: {trainer_class.__name__} rejected the settings: {e}") from None
    fp32_adapters_without_autocast(trainer.model, args)
    result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    logs = [h for h in trainer.state.log_history if "reward" in h]
    metrics = {"train_loss": result.training_loss, "train_runtime_s": result.metrics.get("train_runtime"),
               "reward_first": logs[0]["reward"] if logs else None, "reward_last": logs[-1]["reward"] if logs else None,
               "kl_last": logs[-1].get("kl") if logs else None}
    model.generation_config = shipped  # saved as the checkpoint had it
    ctx.save(trainer, tokenizer)
    training.save_merged(ctx, tokenizer)
    return metrics


def run(ctx) -> dict:
    from trl import GRPOTrainer

    return run_online(ctx, GRPOTrainer, config_class())
