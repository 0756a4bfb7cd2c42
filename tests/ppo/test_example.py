"""examples/ppo_custom_reward.py runs end to end with tiny settings."""

import importlib.util
from pathlib import Path

import torch

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ppo_custom_reward.py"


def test_ppo_custom_reward_example(tmp_path):
    spec = importlib.util.spec_from_file_location("ppo_custom_reward", EXAMPLE)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trajectory = example.main(["--max-steps", "3", "--output-dir", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    assert [step for step, _, _ in trajectory] == [0, 1, 2, 3]  # evaluated before training and every iteration
    assert trajectory[0][2] == 0.0 and all(0.0 <= score <= 1.0 for _, score, _ in trajectory)
    assert (tmp_path / "model.safetensors").exists() and (tmp_path / "tokenizer.json").exists()
    assert (tmp_path / "value_model" / "config.json").exists()
    # the reward function follows TRL's convention
    assert example.letter_share("ab")(["p", "q"], ["abcd", ""]) == [0.5, 0.0]
