"""PPO outside any recipe: align.ppo.PPOTrainer with a plain Python reward function.

    python examples/ppo_custom_reward.py --max-steps 30

Builds a small Llama and a tokenizer from scratch (swap in any causal LM folder with --model), and
rewards responses for how many of their words are "good". Prints the reward and KL trajectory.
"""

from __future__ import annotations

import argparse
import tempfile

import datasets

from align.ppo import PPOConfig, PPOTrainer

WORDS = "the a good bad great phone lamp cat dog works is very not and but".split()


def good_word_share(prompts, completions):
    """Reward function in TRL's convention: (prompts, completions) -> one float per completion."""
    return [sum(w == "good" for w in c.split()) / max(len(c.split()), 1) for c in completions]


def build_tiny_model(seed: int):
    import random

    from align.models import build_model
    from align.stages.tokenizer import train_bpe

    rng = random.Random(seed)
    texts = [" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(500)]
    tokenizer = train_bpe(texts, vocab_size=300)
    return build_model({"preset": "llama-micro"}, tokenizer, seed=seed), tokenizer


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="a causal LM folder (default: a micro Llama built here)")
    parser.add_argument("--max-steps", type=int, default=30)
    parser.add_argument("--kl-coef", type=float, default=0.01)
    parser.add_argument("--output-dir", default=None)
    args = parser.parse_args(argv)
    if args.model:
        from align.models import load_causal_lm, load_tokenizer

        model, tokenizer = load_causal_lm(args.model), load_tokenizer(args.model)
    else:
        model, tokenizer = build_tiny_model(seed=0)
    prompts = datasets.Dataset.from_dict({"prompt": ["the phone", "a lamp", "my dog", "the cat"] * 8})
    config = PPOConfig(output_dir=args.output_dir or tempfile.mkdtemp(prefix="ppo_example_"),
                       max_steps=args.max_steps, rollout_batch_size=16, max_new_tokens=12, learning_rate=1e-2,
                       kl_coef=args.kl_coef, eval_steps=max(args.max_steps // 3, 1), save_steps=10**9,
                       use_cpu=True, report_to="none")
    trainer = PPOTrainer(model, reward_funcs=[good_word_share], processing_class=tokenizer, args=config,
                         train_dataset=prompts)
    trainer.train()
    trajectory = [(h["step"], h["eval/score"], h["eval/kl"]) for h in trainer.state.log_history if "eval/score" in h]
    for step, score, kl in trajectory:
        print(f"iteration {step:3d}: reward {score:.3f}, KL {kl:.2f}")
    trainer.save_model(config.output_dir)
    print(f"policy saved to {config.output_dir}")
    return trajectory


if __name__ == "__main__":
    main()
