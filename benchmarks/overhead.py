"""What align's stages cost over the bare library call they wrap, and PPO against TRL's GRPO and RLOO.

    python benchmarks/overhead.py [--repeats 3] [--rows 256] [--stages sft reward dpo pretrain | --stages] [--no-rl]

For sft, reward, dpo and pretrain: the align stage (``run_recipe`` with a one-stage recipe) and the bare
library call written out by hand (load model and tokenizer, ``datasets.load_dataset("json")``, the config with
the values align's stage would choose, the trainer, ``train``, ``save_model``; for pretrain, transformers'
``Trainer`` on a from-scratch llama-tiny, with the text packed into 128-token blocks by a ``map`` and a final
``evaluate`` on held-out text) on the identical model, data, config and seed, interleaved, ``--repeats`` times
each. Prints the median wall time of each, their ratio (target <= 1.05) and both final training losses (equal
when the two did the same computation).

For PPO: seconds per PPO iteration (``align.ppo.PPOTrainer``, 16 prompts -> 16 completions) against seconds per
step of TRL's GRPO and RLOO at the same number of completions (4 prompts x 4 generations) and completion length,
on the same model. PPO also trains a critic and runs a reference and a value forward, so the target is <= 2x GRPO.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMMON = dict(seed=0, report_to="none", logging_steps=10, save_steps=100, save_total_limit=2,
              gradient_checkpointing=False, bf16=False, fp16=False, use_cpu=True, dataloader_num_workers=0,
              lr_scheduler_type="cosine", warmup_steps=0.05, num_train_epochs=1, per_device_train_batch_size=16)
LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear")
STAGE_ARGS = {  # what align's stage defaults are for these stages (see align/stages/*.py)
    "sft": dict(learning_rate=1e-3, max_length=512, assistant_only_loss=True),
    "reward": dict(learning_rate=1e-3, max_length=256, per_device_eval_batch_size=32, eval_strategy="epoch"),
    "dpo": dict(beta=0.1, learning_rate=5e-4, max_length=256),
    "pretrain": dict(learning_rate=3e-3, weight_decay=0.1, adam_beta2=0.95, max_grad_norm=1.0,
                     per_device_eval_batch_size=32, eval_strategy="steps", eval_steps=100),
}
PRETRAIN_DOCS, HELDOUT_DOCS, BLOCK = 1800, 200, 128  # ~75k tokens of the builtin corpus: one epoch of ~37 steps


def setup(root: Path, rows: int) -> tuple[Path, Path, Path, tuple[Path, Path]]:
    """A llama-tiny with align's tokenizer (random init is enough to time a step), and the data as JSON lines."""
    from align.data import load_dataset
    from align.models import build_model
    from align.stages.tokenizer import train_bpe

    corpus = load_dataset({"builtin": "reviews", "split": "pretrain", "size": 2000}, name="corpus")["text"]
    tokenizer = train_bpe(corpus, vocab_size=2048)
    base = root / "base"
    build_model({"preset": "llama-tiny"}, tokenizer, seed=0).save_pretrained(base)
    tokenizer.save_pretrained(base)
    chat = load_dataset({"builtin": "reviews", "split": "sft", "limit": rows + 1}, name="chat")
    with open(root / "chat.jsonl", "w") as f:
        for row in chat.select(range(rows)):
            f.write(json.dumps(row) + "\n")
    with open(root / "pairs.jsonl", "w") as f:
        for i in range(rows):
            m = chat[i]["messages"]
            f.write(json.dumps({"prompt": m[:-1], "chosen": m[-1:],
                                "rejected": [{"role": "assistant", "content": chat[i + 1]["messages"][-1]["content"]}]}) + "\n")
    text = (root / "text.jsonl", root / "heldout.jsonl")
    for path, docs in zip(text, (corpus[:PRETRAIN_DOCS], corpus[PRETRAIN_DOCS:PRETRAIN_DOCS + HELDOUT_DOCS])):
        path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs))
    return base, root / "chat.jsonl", root / "pairs.jsonl", text


def with_align(kind: str, base: Path, data: Path, out: Path) -> float:
    from align.recipe import build_recipe
    from align.runner import run_recipe

    datasets = {"data": {"path": str(data)}}
    spec = {"kind": kind, "model": str(base), "dataset": "data", "args": {}}
    if kind == "pretrain":  # from scratch: the same llama-tiny config the base folder holds, align's tokenizer
        datasets = {"data": {"path": str(data[0])}, "heldout": {"path": str(data[1])}}
        spec = {"kind": kind, "tokenizer": str(base), "model": {"preset": "llama-tiny"}, "dataset": "data",
                "eval_dataset": "heldout", "block_size": BLOCK, "args": {}}
    if kind == "sft":
        spec["merge"] = False  # the bare call does not merge either
    if kind == "reward":
        spec["eval_fraction"] = 0.1
    recipe = build_recipe({"name": "overhead", "seed": 0, "output_dir": str(out), "datasets": datasets,
                           "stages": {kind: spec}})
    metrics = run_recipe(recipe, echo=lambda *_: None)[kind]
    return metrics["train_loss"]


def bare(kind: str, base: Path, data: Path, out: Path) -> float:
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, set_seed

    set_seed(0)
    tokenizer = AutoTokenizer.from_pretrained(base)
    args = dict(COMMON, output_dir=str(out), **STAGE_ARGS[kind])
    if kind == "pretrain":
        return bare_pretrain(base, tokenizer, data, args)
    ds = datasets.load_dataset("json", data_files=str(data), split="train")
    if kind == "sft":
        from trl import SFTConfig, SFTTrainer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        trainer = SFTTrainer(model=model, args=SFTConfig(**args), train_dataset=ds, processing_class=tokenizer,
                             peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
    elif kind == "reward":
        from trl import RewardConfig, RewardTrainer

        lm = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        lm.config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(lm.config, dtype=torch.float32)
        model.base_model.load_state_dict(lm.base_model.state_dict())
        model.config.pad_token_id = tokenizer.pad_token_id
        split = ds.train_test_split(test_size=0.1, seed=0)
        trainer = RewardTrainer(model=model, args=RewardConfig(**args), train_dataset=split["train"],
                                eval_dataset=split["test"], processing_class=tokenizer)
    else:
        from trl import DPOConfig, DPOTrainer

        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        trainer = DPOTrainer(model=model, ref_model=None, args=DPOConfig(**args), train_dataset=ds,
                             processing_class=tokenizer, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA))
    result = trainer.train()
    trainer.save_model(str(out))
    trainer.save_state()
    tokenizer.save_pretrained(out)
    return result.training_loss


def bare_pretrain(base: Path, tokenizer, data: tuple[Path, Path], args: dict) -> float:
    """transformers' Trainer on a from-scratch Llama: BOS + text + EOS per document, concatenated, cut into blocks."""
    import datasets
    import torch
    from transformers import AutoConfig, DataCollatorForLanguageModeling, LlamaForCausalLM, Trainer, TrainingArguments

    def blocks(batch):
        stream = []
        for ids in tokenizer(batch["text"], add_special_tokens=False)["input_ids"]:
            stream += [tokenizer.bos_token_id, *ids, tokenizer.eos_token_id]
        return {"input_ids": [stream[i:i + BLOCK] for i in range(0, len(stream) // BLOCK * BLOCK, BLOCK)]}

    train, heldout = (datasets.load_dataset("json", data_files=str(path), split="train") for path in data)
    train, heldout = (ds.map(blocks, batched=True, batch_size=2000, remove_columns=ds.column_names) for ds in (train, heldout))
    torch.manual_seed(0)
    model = LlamaForCausalLM(AutoConfig.from_pretrained(base))  # llama-tiny, as align.models.build_model makes it
    trainer = Trainer(model=model, args=TrainingArguments(**args), train_dataset=train, eval_dataset=heldout,
                      data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False), processing_class=tokenizer)
    result = trainer.train()
    trainer.evaluate()
    trainer.save_model(args["output_dir"])
    trainer.save_state()
    tokenizer.save_pretrained(args["output_dir"])
    return result.training_loss


def timed(fn, *args) -> tuple[float, float]:
    start = time.perf_counter()
    loss = fn(*args)
    return time.perf_counter() - start, loss


def ledger(root: Path, base: Path, chat: Path, pairs: Path, text: tuple[Path, Path], repeats: int,
           stages=("sft", "reward", "dpo", "pretrain")) -> list[dict]:
    rows = []
    data_for = {"sft": chat, "reward": pairs, "dpo": pairs, "pretrain": text}
    for kind, data in ((k, data_for[k]) for k in stages):
        runs = {"align": [], "bare": []}
        for fn in (with_align, bare):  # warm-up: imports and first-call costs are not what is measured
            fn(kind, base, data, root / f"{kind}_warmup_{fn.__name__}")
        for r in range(repeats):  # interleaved, so drift in machine speed hits both alike
            for who, fn in (("align", with_align), ("bare", bare)) if r % 2 == 0 else (("bare", bare), ("align", with_align)):
                runs[who].append(timed(fn, kind, base, data, root / f"{kind}_{who}_{r}"))
        a, b = (statistics.median(t for t, _ in runs[w]) for w in ("align", "bare"))
        rows.append({"stage": kind, "align_s": a, "bare_s": b, "ratio": a / b,
                     "align_loss": runs["align"][-1][1], "bare_loss": runs["bare"][-1][1]})
    return rows


def rl_steps(root: Path, base: Path, steps: int = 4, completions: int = 16, length: int = 32) -> dict:
    """Seconds per PPO iteration vs per GRPO / RLOO step at equal completions and completion length."""
    import datasets
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.data import load_dataset
    from align.ppo import PPOConfig, PPOTrainer
    from align.testing import length_judge

    tokenizer = AutoTokenizer.from_pretrained(base)
    prompts = datasets.Dataset.from_dict({"prompt": load_dataset({"builtin": "reviews", "split": "prompts",
                                                                  "limit": 64}, name="p")["prompt"]})
    lora = LoraConfig(task_type="CAUSAL_LM", **LORA)
    model = lambda: AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)  # noqa: E731
    reward = lambda prompts, completions, **_: length_judge(prompts, [c if isinstance(c, str) else c[-1]["content"]  # noqa: E731
                                                                      for c in completions])
    ppo = PPOTrainer(model(), reward_funcs=[reward], processing_class=tokenizer, train_dataset=prompts, peft_config=lora,
                     args=PPOConfig(output_dir=str(root / "ppo"), max_steps=steps, rollout_batch_size=completions,
                                    max_new_tokens=length, num_mini_batches=2, ppo_epochs=2, learning_rate=1e-3,
                                    eval_steps=0, save_steps=1000, use_cpu=True, report_to="none", disable_tqdm=True))
    ppo.train()
    iterations = [h for h in ppo.state.log_history if "time/generation" in h][1:]  # the first warms up
    out = {"ppo_s": statistics.fmean(h["time/generation"] + h["time/scoring"] + h["time/optimization"] for h in iterations)}
    from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

    for name, trainer_class, config_class in (("grpo", GRPOTrainer, GRPOConfig), ("rloo", RLOOTrainer, RLOOConfig)):
        args = config_class(output_dir=str(root / name), max_steps=steps + 1, per_device_train_batch_size=completions,
                            num_generations=4, max_completion_length=length, learning_rate=1e-3, beta=0.05,
                            logging_steps=1, save_steps=1000, use_cpu=True, bf16=False, report_to="none",
                            disable_tqdm=True, gradient_checkpointing=False, seed=0)
        trainer = trainer_class(model=model(), reward_funcs=[reward], args=args, train_dataset=prompts,
                                processing_class=tokenizer, peft_config=lora)
        times = []

        class StepTimer:  # seconds of each step (the first warms up)
            def __getattr__(self, _):
                return lambda *a, **k: None

            def on_step_begin(self, *a, **k):
                self.started = time.perf_counter()

            def on_step_end(self, *a, **k):
                times.append(time.perf_counter() - self.started)

        trainer.add_callback(StepTimer())
        trainer.train()
        out[f"{name}_s"] = statistics.fmean(times[1:])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--stages", nargs="*", default=["sft", "reward", "dpo", "pretrain"],
                        choices=["sft", "reward", "dpo", "pretrain"])
    parser.add_argument("--no-rl", action="store_true", help="skip the PPO vs GRPO/RLOO steps")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        base, chat, pairs, text = setup(root, args.rows)
        rows = ledger(root, base, chat, pairs, text, args.repeats, args.stages)
        rl = None if args.no_rl else rl_steps(root, base)
    if rows:
        print(f"\n| stage | align (s) | bare library call (s) | ratio | final loss align / bare |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['stage']} | {r['align_s']:.2f} | {r['bare_s']:.2f} | {r['ratio']:.3f} | "
              f"{r['align_loss']:.4f} / {r['bare_loss']:.4f} |")
    if rl is not None:
        print(f"\n| per step, 16 completions of <= 32 tokens | seconds | vs GRPO |\n|---|---|---|")
        for name in ("ppo", "grpo", "rloo"):
            print(f"| {name} | {rl[f'{name}_s']:.2f} | {rl[f'{name}_s'] / rl['grpo_s']:.2f}x |")


if __name__ == "__main__":
    main()
