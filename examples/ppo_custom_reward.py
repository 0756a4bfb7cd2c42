"""PPO outside any recipe: align.ppo.PPOTrainer with a plain Python reward function.

    python examples/ppo_custom_reward.py --max-steps 30
    python examples/ppo_custom_reward.py --model runs/quickstart/sft --letters xyz --max-steps 50
    # the same, policy and critic sharded by FSDP2 over two processes (GPUs, or gloo ranks on a CPU)
    accelerate launch --config_file recipes/accelerate/fsdp2.yaml --num_processes 2 \
        examples/ppo_custom_reward.py --max-steps 30 --output-dir runs/ppo_fsdp2

The reward is a toy a random model can climb: the share of the response's characters that are
among --letters (default: vowels). Without --model the script builds a micro Llama and a
byte-level tokenizer from scratch (seconds) and trains all its weights; with --model (any causal
LM folder or align stage folder) it trains LoRA adapters on it, the reference being the same
model with the adapters disabled. Prints the reward-vs-KL trajectory measured on fixed prompts.
"""

from __future__ import annotations

import argparse
import random
import tempfile

import datasets

from align.ppo import PPOConfig, PPOTrainer

WORDS = "the a good bad great phone lamp cat dog works is very not and but".split()
PROMPTS = ["the phone", "a lamp", "my dog", "the cat is", "this lamp was", "a great phone"]


def letter_share(letters: str):
    """A reward function in TRL's convention: (prompts, completions) -> one float per completion."""
    def reward(prompts, completions):
        return [sum(ch in letters for ch in c) / max(len(c), 1) for c in completions]
    return reward


def tiny_model_and_tokenizer(seed: int = 0):
    from align.models import build_model
    from align.stages.tokenizer import train_bpe

    rng = random.Random(seed)
    tokenizer = train_bpe([" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(500)], vocab_size=300)
    return build_model({"preset": "llama-micro"}, tokenizer, seed=seed), tokenizer


def main(argv=None) -> list[tuple[int, float, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a causal LM folder (default: a micro Llama built here)")
    parser.add_argument("--letters", default="aeiou", help="characters the reward counts (default: aeiou)")
    parser.add_argument("--max-steps", type=int, default=30, help="PPO iterations (default 30)")
    parser.add_argument("--kl-coef", type=float, default=0.01, help="beta of the KL penalty (default 0.01)")
    parser.add_argument("--learning-rate", type=float, default=None, help="default 3e-3 from scratch, 1e-3 with LoRA")
    parser.add_argument("--output-dir", default=None, help="where the policy is saved (default: a temporary folder)")
    args = parser.parse_args(argv)

    peft_config = None
    if args.model:
        from peft import LoraConfig

        from align.models import load_causal_lm, load_tokenizer

        model, tokenizer = load_causal_lm(args.model), load_tokenizer(args.model)
        peft_config = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM")
    else:
        model, tokenizer = tiny_model_and_tokenizer()
    # Prompt-only data in TRL's standard format; a list of messages per row (conversational) works too.
    prompts = datasets.Dataset.from_dict({"prompt": PROMPTS * 8})
    config = PPOConfig(
        output_dir=args.output_dir or tempfile.mkdtemp(prefix="ppo_example_"),
        max_steps=args.max_steps, rollout_batch_size=16, num_mini_batches=2, ppo_epochs=4, max_new_tokens=12,
        learning_rate=args.learning_rate or (1e-3 if args.model else 3e-3), kl_coef=args.kl_coef,
        eval_steps=max(args.max_steps // 3, 1), eval_prompts=len(PROMPTS), save_strategy="no",
        use_cpu=True, report_to="none", seed=0)
    trainer = PPOTrainer(model, reward_funcs=[letter_share(args.letters)], processing_class=tokenizer, args=config,
                         train_dataset=prompts, peft_config=peft_config)
    trainer.train()
    trajectory = [(h["step"], h["eval/score"], h["eval/kl"]) for h in trainer.state.log_history if "eval/score" in h]
    for step, score, kl in trajectory:
        print(f"iteration {step:3d}: reward {score:.3f}  KL {kl:6.2f} nats")
    trainer.save_model(config.output_dir)
    print(f"policy saved to {config.output_dir} (value model in {config.output_dir}/value_model)")
    return trajectory


if __name__ == "__main__":
    main()
