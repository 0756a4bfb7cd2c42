"""Reuse a recipe's SFT stage in your own script: label fresh samples with a custom judge, run DPO.

    python examples/dpo_custom_judge.py runs/quickstart/sft --prompts 64

The judge here prefers short reviews that mention the price: any `(prompts, responses) -> scores`
function works, and so does `align.eval.judges.LLMJudge` with a local model.
"""

from __future__ import annotations

import argparse
import tempfile

import datasets
from trl import DPOConfig, DPOTrainer

from align.data.builtin import load_builtin
from align.eval import generate
from align.eval.judges import FunctionJudge
from align.models import load_causal_lm, load_tokenizer
from align.stages.preferences import as_conversational, form_pairs
from align.stages.training import lora_config


def mentions_price_briefly(prompts, responses):
    return [("price" in r.lower()) - len(r.split()) / 100 for r in responses]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sft_dir", help="an SFT stage folder (or any chat model folder)")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--max-steps", type=int, default=20)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)

    model, tokenizer = load_causal_lm(args.sft_dir), load_tokenizer(args.sft_dir)
    judge = FunctionJudge(f"{__name__}:mentions_price_briefly", name="price")
    prompts = load_builtin("reviews", "prompts", size=args.prompts)["prompt"]
    repeated = [p for p in prompts for _ in range(args.samples)]
    responses = generate(model, tokenizer, repeated, max_new_tokens=48, seed=0)
    scores = judge.score(repeated, responses)
    k = args.samples
    pairs = form_pairs(prompts, [responses[i * k:(i + 1) * k] for i in range(len(prompts))],
                       [scores[i * k:(i + 1) * k] for i in range(len(prompts))])
    data = datasets.Dataset.from_list([as_conversational(p) for p in pairs])
    print(f"{len(pairs)} preference pairs from {len(prompts)} prompts")
    config = DPOConfig(output_dir=args.output_dir or tempfile.mkdtemp(prefix="dpo_example_"), max_steps=args.max_steps,
                       per_device_train_batch_size=8, learning_rate=1e-3, beta=0.1, use_cpu=True, bf16=False,
                       report_to="none", logging_steps=5, gradient_checkpointing=False, max_length=256)
    trainer = DPOTrainer(model=model, args=config, train_dataset=data, processing_class=tokenizer,
                         peft_config=lora_config(None, "lora"))
    trainer.train()
    before = responses[::k]  # the first SFT sample of each prompt
    after = generate(trainer.model, tokenizer, prompts, max_new_tokens=48, seed=1)
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    result = {"judge_before": mean(judge.score(prompts, before)), "judge_after": mean(judge.score(prompts, after))}
    print(f"custom judge: {result['judge_before']:.3f} before DPO, {result['judge_after']:.3f} after")
    return result


if __name__ == "__main__":
    main()
