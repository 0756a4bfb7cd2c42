"""The scripts in examples/ run (tiny settings) and do what they say."""

import shutil
import sys
from pathlib import Path

import pytest

from align.recipe import load_recipe
from align.runner import run_recipe

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "examples"))


@pytest.fixture(scope="module")
def micro_sft(tmp_path_factory):
    out = tmp_path_factory.mktemp("examples_micro")
    run_recipe(load_recipe(REPO / "tests" / "recipes" / "micro.yaml", output_dir=str(out)), echo=lambda *_: None)
    return out / "sft"


def test_ppo_with_a_custom_reward_function(tmp_path):
    import ppo_custom_reward

    trajectory = ppo_custom_reward.main(["--max-steps", "6", "--output-dir", str(tmp_path)])
    assert [step for step, _, _ in trajectory] == [0, 2, 4, 6]  # evaluated before training too
    assert (tmp_path / "config.json").exists() and (tmp_path / "value_model").exists()


def test_dpo_from_a_recipe_stage_with_a_custom_judge(micro_sft, tmp_path):
    import dpo_custom_judge

    result = dpo_custom_judge.main([str(micro_sft), "--prompts", "16", "--samples", "2", "--max-steps", "2",
                                    "--output-dir", str(tmp_path)])
    assert set(result) == {"judge_before", "judge_after"}


def test_compare_two_run_folders(tmp_path, micro_full_run):
    import compare_runs

    run = tmp_path / "a"
    shutil.copytree(micro_full_run[0], run)
    shutil.copytree(run, tmp_path / "b")
    page = compare_runs.main([str(run), str(tmp_path / "b"), "--out", str(tmp_path / "cmp")])
    assert Path(page).exists() and "a/ppo" in Path(page).read_text()


def test_sft_on_a_mixture_lists_it_in_the_data_card(micro_sft, tmp_path):
    import sft_mixture

    card = sft_mixture.main([str(micro_sft.parent / "pretrain"), "--chats", "48", "--max-steps", "2",
                             "--output-dir", str(tmp_path)]).read_text()
    # 48 builtin chats at 0.75 cap the mixture at 64 rows: 48 + 16 ShareGPT chats
    assert "| 0.75 | - | 48 | 48 | 75.0% |" in card and "| 0.25 | - | 64 | 16 | 25.0% |" in card
    assert (tmp_path / "sft" / "align_model.json").is_file()  # trained from align's own model, and marked so
