"""pretrain stage: a Llama-style causal LM from random init on packed blocks of text.

Documents are tokenised, joined with EOS and cut into fixed blocks (no padding, every token
trains). Without an ``eval_dataset``, the last ``eval_fraction`` of the text (by character position,
as nanoGPT splits its text) is held out before tokenisation, so a tokenizer stage given the same
``eval_fraction`` on the same dataset never sees it either (see ``holdout_split``). Reports held-out
loss, perplexity and bits per byte, which compares models across tokenizers.
"""

from __future__ import annotations

import math

from align.errors import AlignError, suggest
from align.models import build_model, count_parameters, load_causal_lm, load_tokenizer

REQUIRED = ("tokenizer", "dataset")
DATASET_KEYS = ("dataset", "eval_dataset")
EXPECTED = {"dataset": "language_modeling", "eval_dataset": "language_modeling"}  # format per dataset key
CARD_TAGS = ("pretraining",)  # model card tags beside align and the kind
KEYS = {
    "tokenizer": "${stages.tokenizer}, a tokenizer folder or a hub id",
    "model": "{preset: llama-tiny} plus any LlamaConfig field, or an existing model to continue pretraining",
    "dataset": "text to train on (language-modelling format: a text column)",
    "eval_dataset": "held-out text (default: the last eval_fraction of the dataset's text)",
    "block_size": "tokens per training sequence (default 256)",
    "eval_fraction": "share of the text, at its end, held out when no eval_dataset is given (default 0.05); "
                     "give the tokenizer stage the same eval_fraction so that it never sees the held-out text",
}
TYPES = {"block_size": int, "eval_fraction": float}
CHINCHILLA_TOKENS_PER_PARAMETER = 20


class StubTokenizer:
    """What ``llama_config`` reads from a tokenizer, for checking a preset before the tokenizer exists."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 4096


def check(spec: dict, where: str) -> list[str]:
    """``model: {preset: ..., <LlamaConfig fields>}``: known fields, and a config LlamaConfig accepts."""
    import inspect

    from transformers import LlamaConfig

    from align.models import llama_config

    model, where = spec.get("model"), f"{where}.model"
    if not isinstance(model, dict):
        return []
    valid = set(inspect.signature(LlamaConfig.__init__).parameters) - {"self", "kwargs"} | {"preset"}
    problems = [f"{where}.{key}: not a LlamaConfig field.{suggest(key, valid)}" for key in model if key not in valid]
    if not problems:  # the vocabulary comes from the tokenizer stage; any size shows bad shapes
        try:
            llama_config(model, StubTokenizer(), field=where)
        except AlignError as e:
            problems.append(str(e))
        except Exception as e:  # noqa: BLE001 -- LlamaConfig refusing a value
            problems.append(f"{where}: {type(e).__name__}: {' '.join(str(e).split())[:400]}")
    return problems


def model_refs(spec: dict) -> dict:
    """The tokenizer, and the model when it is one to continue pretraining (a preset is built, not loaded)."""
    refs = {"tokenizer": (spec["tokenizer"], "tokenizer")} if "tokenizer" in spec else {}
    if "model" in spec and not isinstance(spec["model"], dict) and spec["model"] is not None:
        refs["model"] = (spec["model"], "model")
    return refs


def config_class():
    from transformers import TrainingArguments

    return TrainingArguments


def pack(ds, tokenizer, block_size: int):
    """Tokenise every document as BOS + text + EOS, concatenate and cut into ``block_size`` blocks.

    BOS opens each document as the chat template opens each conversation, so perplexity (which
    predicts a text's first token from BOS) and SFT see the same convention as pretraining.
    """
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    eos = tokenizer.eos_token_id

    def tokenize_and_chunk(batch):
        stream = []
        for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            stream.extend(bos + ids + [eos])
        n = len(stream) // block_size * block_size
        return {"input_ids": [stream[i:i + block_size] for i in range(0, n, block_size)]}

    return ds.map(tokenize_and_chunk, batched=True, batch_size=2000, remove_columns=ds.column_names,
                  desc="packing")


def holdout_split(texts, fraction: float, *, where: str = "eval_fraction") -> tuple[list[str], list[str]]:
    """``texts`` cut at ``1 - fraction`` of their characters, counted across the documents in order:
    (the text before the cut, the text after it). The document the cut falls in is cut in two, so
    one document (a novel, tiny Shakespeare) splits as nanoGPT splits it: ``text[:int(n * 0.9)]``.
    The tokenizer and pretrain stages both cut here, so they agree on what is held out."""
    if not 0 <= fraction < 1:
        raise AlignError(f"{where}: expected a share of the text in [0, 1), got {fraction!r}.")
    texts = list(texts)
    cut = int(sum(map(len, texts)) * (1 - fraction))
    head, tail, seen = [], [], 0
    for text in texts:
        if seen + len(text) <= cut:
            head.append(text)
        elif seen >= cut:
            tail.append(text)
        else:
            head.append(text[:cut - seen])
            tail.append(text[cut - seen:])
        seen += len(text)
    return head, tail


def bytes_in_blocks(blocks, tokenizer) -> int:
    """UTF-8 bytes of the tokens the model predicts (all but the first of each block)."""
    special = set(tokenizer.all_special_ids)
    return sum(len(tokenizer.decode([t for t in ids[1:] if t not in special]).encode("utf-8"))
               for ids in blocks["input_ids"])


def run(ctx) -> dict:
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, Trainer

    tokenizer = load_tokenizer(ctx.spec["tokenizer"], field=ctx.where("tokenizer"))
    block_size = int(ctx.spec.get("block_size", 256))
    train_ds = ctx.dataset("dataset", expected=EXPECTED["dataset"], tokenizer=tokenizer)
    if "eval_dataset" in ctx.spec:
        eval_ds = ctx.dataset("eval_dataset", expected=EXPECTED["eval_dataset"], tokenizer=tokenizer)
    else:
        head, tail = holdout_split(train_ds["text"], float(ctx.spec.get("eval_fraction", 0.05)),
                                   where=ctx.where("eval_fraction"))
        train_ds, eval_ds = Dataset.from_dict({"text": head}), Dataset.from_dict({"text": tail})
    train_blocks, eval_blocks = pack(train_ds, tokenizer, block_size), pack(eval_ds, tokenizer, block_size)
    if len(eval_blocks) == 0:
        field = "eval_dataset" if "eval_dataset" in ctx.spec else "eval_fraction"
        raise AlignError(f"{ctx.where(field)}: the held-out text is shorter than one block of {block_size} "
                         f"tokens; hold out more text or lower block_size.")
    model_spec = ctx.spec.get("model") or {"preset": "llama-tiny"}
    problems = check({"model": model_spec}, f"stages.{ctx.name}")
    if problems:
        raise AlignError("\n".join(problems))
    if isinstance(model_spec, str):
        model = load_causal_lm(model_spec, field=ctx.where("model"), training=True)  # float32 master weights
    else:
        model = build_model(model_spec, tokenizer, seed=ctx.seed, field=ctx.where("model"))
    n_params = count_parameters(model)

    args = ctx.config(
        config_class(),
        learning_rate=3e-3, lr_scheduler_type="cosine", warmup_steps=0.05, weight_decay=0.1, adam_beta2=0.95,
        max_grad_norm=1.0, per_device_train_batch_size=16, per_device_eval_batch_size=32, num_train_epochs=1,
        eval_strategy="steps", eval_steps=100,
    )
    trainer = Trainer(model=model, args=args, train_dataset=train_blocks, eval_dataset=eval_blocks,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)
    world = args.world_size
    if ctx.is_main_process:
        print(f"pretrain: {n_params:,} parameters, {len(train_blocks):,} blocks of {block_size} tokens, "
              f"{len(eval_blocks):,} held out, world size {world}")
    train_result = trainer.train(resume_from_checkpoint=ctx.resume_checkpoint(trainer))
    eval_metrics = trainer.evaluate()
    tokens_seen = trainer.state.global_step * args.per_device_train_batch_size * args.gradient_accumulation_steps * world * block_size
    predicted_tokens = len(eval_blocks) * (block_size - 1)
    eval_loss = eval_metrics["eval_loss"]
    metrics = {
        "parameters": n_params,
        "train_loss": train_result.training_loss,
        "eval_loss": eval_loss,
        "perplexity": math.exp(eval_loss),
        "bits_per_byte": eval_loss * predicted_tokens / (math.log(2) * bytes_in_blocks(eval_blocks, tokenizer)),
        "steps": trainer.state.global_step,
        "tokens_seen": tokens_seen,
        "train_tokens": len(train_blocks) * block_size,
        "tokens_per_parameter": tokens_seen / n_params,
        "chinchilla_tokens_per_parameter": CHINCHILLA_TOKENS_PER_PARAMETER,
        "world_size": world,
        "train_runtime_s": train_result.metrics.get("train_runtime"),
        "tokens_per_second": tokens_seen / max(train_result.metrics.get("train_runtime", 1e-9), 1e-9),
    }
    ctx.save(trainer, tokenizer)
    if ctx.is_main_process:
        print(f"pretrain: held-out loss {eval_loss:.3f}, perplexity {metrics['perplexity']:.1f}, "
              f"{metrics['bits_per_byte']:.3f} bits/byte; {tokens_seen:,} tokens = "
              f"{metrics['tokens_per_parameter']:.1f} per parameter (Chinchilla ~{CHINCHILLA_TOKENS_PER_PARAMETER})")
    return metrics
