"""Every stage kind on the micro task: preferences, reward, DPO, GRPO, RLOO, evaluate, report."""

import json

import datasets
import pytest

from align.data import validate_dataset


@pytest.fixture(scope="module")
def full_run(micro_full_run):
    return micro_full_run


def test_preferences_are_judged_pairs_of_policy_samples(full_run):
    out, metrics = full_run
    pairs = datasets.load_from_disk(str(out / "preferences" / "dataset"))
    assert validate_dataset(pairs, name="prefs") == "preference"
    assert all(c > r for c, r in zip(pairs["chosen_score"], pairs["rejected_score"]))
    assert 0 < metrics["preferences"]["pairs"] <= 48
    card = (out / "preferences" / "data_card_preferences.md").read_text()
    assert "pairs kept" in card and "Score gap" in card


def test_reward_model_reports_pairwise_accuracy(full_run):
    _, metrics = full_run
    assert 0.0 <= metrics["reward"]["pairwise_accuracy"] <= 1.0
    assert "reward_margin" in metrics["reward"]


def test_online_trainers_log_reward_and_kl(full_run):
    out, metrics = full_run
    for stage in ("grpo", "rloo"):
        history = json.loads((out / stage / "trainer_state.json").read_text())["log_history"]
        assert any("reward" in h for h in history), stage
        assert any("kl" in h for h in history), stage
        assert metrics[stage]["reward_last"] is not None


def test_evaluation_and_report(full_run):
    out, metrics = full_run
    evaluation = metrics["eval"]
    assert set(evaluation["policies"]) == {"sft", "ppo", "dpo", "grpo"}
    assert evaluation["policies"]["sft"]["kl"] == pytest.approx(0.0, abs=1e-6)
    for name, m in evaluation["policies"].items():
        assert m["kl"] is not None and m["bits_per_byte"] > 0, name
        assert 0 <= m["win_rate"]["ci_low"] <= m["win_rate"]["win_rate"] <= m["win_rate"]["ci_high"] <= 1
    samples = [json.loads(line) for line in (out / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 * 16
    html = (out / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html and "dpo" in html and "ppo" in html


def test_ppo_stage_logs_trajectory_and_checkpoints(full_run):
    out, metrics = full_run
    history = json.loads((out / "ppo" / "trainer_state.json").read_text())["log_history"]
    trajectory = [h["step"] for h in history if "eval/score" in h]
    assert trajectory == [0, 2, 4]  # before training, then every eval_steps=2 of 4 iterations
    assert metrics["ppo"]["iterations"] == 4
    assert (out / "ppo" / "adapter_model.safetensors").exists() and (out / "ppo" / "value_model").exists()
