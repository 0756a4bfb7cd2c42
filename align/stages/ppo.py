"""ppo stage: align's PPOTrainer (TRL removed its own) from the SFT model, against a reward model.

The value model starts from the reward model, as InstructGPT did; with LoRA the reference policy
is the SFT weights with the adapter disabled. Periodic evaluations on fixed prompts log
``eval/score`` and ``eval/kl``, which the report draws as the reward-vs-KL trajectory.
"""

from __future__ import annotations

from functools import partial

from align.chat_templates import prepare_chat_template
from align.errors import AlignError
from align.models import is_quantized, load_sequence_classifier, restore_shipped_config
from align.ppo.sharding import requested_sharding
from align.stages.grpo import reward_functions
from align.stages.training import DEFAULT_LORA, load_for_training, lora_config
from align.stages import training

REQUIRED = ("policy", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
EXPECTED = {"dataset": "prompt_only", "eval_dataset": "prompt_only"}  # format per dataset key
JUDGE_KEYS = ("rewards",)
CARD_TAGS = ("ppo", "rlhf")  # model card tags beside align and the kind
KEYS = {
    "policy": "the starting policy, normally ${stages.sft}",
    "reward": "a reward model: ${stages.reward} (the value model starts from it)",
    "rewards": "judge names used as reward functions, added to the reward model's score",
    "dataset": "prompt-only data (prompt column, standard or conversational)",
    "eval_dataset": "fixed prompts for the periodic evaluation (default: the first args.eval_prompts of dataset)",
    "lora": f"LoraConfig fields (default {DEFAULT_LORA}); false trains all weights against a frozen copy",
    "value_lora": "LoraConfig fields or true (the lora defaults): the critic as a LoRA adapter plus a trainable "
                  "value head; on the reward model's own weights, which then serve both (default: a full critic)",
    "merge": training.MERGE_KEY,
    "quantization": "4bit or 8bit: QLoRA policy (base in 4/8 bit, LoRA trained; reference = adapter disabled); "
                    "needs lora; the value model stays full precision and fully trained",
    "chat": "render prompts with the policy's chat template (default true); false continues them as raw text",
    "context_check": "warn (default), error or off: whether this stage samples after the context SFT trains in",
    "chat_template": "a TRL-shipped template name, default, or a .jinja file (default: the policy's own)",
    "chat_template_kwargs": "template variables for rendering prompts, e.g. {enable_thinking: false} (default: those "
                            "the model's tokenizer was saved with); a dataset's own override them row by row",
    "dtype": "policy weights while training: float32 (default, master weights), bfloat16, float16 or auto",
    "model_kwargs": training.MODEL_KEYS["model_kwargs"] + " (policy, reward and value models)",
    "generation": "backend: transformers (default) or vllm (a colocated engine given the policy's weights every "
                  "iteration; sets args.use_vllm); decoding itself is args.max_new_tokens and args.temperature",
}
TYPES = {"chat": bool, "merge": bool}
GENERATION_DEFAULTS = {"backend": "transformers"}
# align's defaults for its own micro models; a real checkpoint gets PPOConfig's own (see training.filled_defaults)
ARG_DEFAULTS = dict(logging_steps=1, save_steps=20)


def check(spec: dict, where: str) -> list[str]:
    problems = []
    if "reward" not in spec and "rewards" not in spec:
        problems.append(f"{where}: PPO needs a reward: give reward: ${{stages.reward}} and/or rewards: [judge names].")
    if isinstance(spec.get("args"), dict) and spec["args"].get("push_to_hub"):
        problems.append(f"{where}.args.push_to_hub: the ppo stage does not push while it trains (align's PPOTrainer "
                        f"has no Hub upload). Push the finished stage with its model card: `align export "
                        f"<output_dir>/<this stage> OUT --push-to-hub ID` (--merge for a plain model), or an export "
                        f"stage ({{kind: export, model: ${{stages.<this stage>}}, push_to_hub: ID}}).")
    return problems


# what align validate says of its model: the context check, and the scalar head a reward/value model may need
model_findings = partial(training.model_findings, classifier_keys=("policy",))

def config_class():
    from align.ppo import PPOConfig

    return PPOConfig


def run(ctx) -> dict:
    from align.ppo import PPOTrainer

    try:  # before any model is loaded: DeepSpeed and FSDP1 are refused with the setting named
        requested_sharding()
    except ValueError as e:
        raise AlignError(f"stages.{ctx.name}: {e}") from None
    for problem in check(ctx.spec, f"stages.{ctx.name}"):
        raise AlignError(problem)
    from align.eval.sampling import require_backend

    ctx.options("generation", GENERATION_DEFAULTS)
    vllm = {"use_vllm": True} if require_backend(ctx.spec, f"stages.{ctx.name}") == "vllm" else {}
    model, tokenizer = load_for_training(ctx, "policy")
    chat = bool(ctx.spec.get("chat", True))
    if chat:
        prepare_chat_template(tokenizer, ctx.spec.get("chat_template"), where=ctx.where("chat_template"),
                              context_check=ctx.spec.get("context_check"), kwargs=ctx.spec.get("chat_template_kwargs"))
    train = ctx.dataset("dataset", expected=EXPECTED["dataset"], tokenizer=tokenizer)
    evals = ctx.dataset("eval_dataset", expected=EXPECTED["eval_dataset"], tokenizer=tokenizer) if "eval_dataset" in ctx.spec else None
    # the reward model keeps its own tokenizer and template: it may be of another family than the policy
    options = training.model_kwargs(ctx)
    reward_model, reward_tokenizer = load_sequence_classifier(ctx.spec["reward"], field=ctx.where("reward"),
                                                              model_kwargs=options) \
        if "reward" in ctx.spec else (None, None)
    args = ctx.config(config_class(), ARG_DEFAULTS, **vllm)
    value_model = None  # a 4/8-bit policy cannot seed the value model: take the full-precision weights instead
    if is_quantized(model) and (reward_model is None or args.value_model_init == "policy"):
        value_model = load_sequence_classifier(ctx.spec["policy"], field=ctx.where("policy"), model_kwargs=options)[0]
    try:
        trainer = PPOTrainer(model=model, reward_model=reward_model, value_model=value_model,
                             reward_funcs=reward_functions(ctx) if "rewards" in ctx.spec else None,
                             processing_class=tokenizer, reward_processing_class=reward_tokenizer, chat=chat,
                             args=args, train_dataset=train, eval_dataset=evals,
                             peft_config=lora_config(ctx.spec.get("lora"), ctx.where("lora")),
                             value_peft_config=lora_config(ctx.spec["value_lora"], ctx.where("value_lora"), task_type="SEQ_CLS")
                             if ctx.spec.get("value_lora") else None)
    except ValueError as e:  # the colocated engine's limits (one process), named by the recipe field
        if "use_vllm" not in str(e):
            raise
        raise AlignError(f"{ctx.where('generation.backend')}: {e}") from None
    trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    history = trainer.state.log_history
    train_logs = [h for h in history if "objective/scores" in h]
    eval_logs = [h for h in history if "eval/score" in h]
    metrics = {
        "iterations": trainer.state.global_step,
        "score_first": train_logs[0]["objective/scores"] if train_logs else None,
        "score_last": train_logs[-1]["objective/scores"] if train_logs else None,
        "kl_last": train_logs[-1]["objective/kl"] if train_logs else None,
        "eval_score_last": eval_logs[-1]["eval/score"] if eval_logs else None,
        "eval_kl_last": eval_logs[-1]["eval/kl"] if eval_logs else None,
    }
    restore_shipped_config(trainer.policy, ctx.spec["policy"])
    trainer.save_model(str(ctx.out_dir))  # on every process: sharded weights are gathered first
    if ctx.is_main_process:
        tokenizer.save_pretrained(ctx.out_dir)
        trainer.save_state()
        ctx.mark_model(ctx.out_dir)
    training.save_merged(ctx, tokenizer)
    return metrics
