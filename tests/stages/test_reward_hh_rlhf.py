"""A reward model trains on real human preferences (hh-rlhf, implicit prompts made explicit)."""

from transformers import AutoModelForSequenceClassification

from align.eval.judges import RewardModelJudge
from align.recipe import build_recipe
from align.runner import run_recipe


def test_reward_model_on_hh_rlhf(shared_data, tiny_model_dir, tmp_path):
    raw = {
        "name": "hh", "output_dir": str(tmp_path),
        "datasets": {"hh": {"path": str(shared_data / "hh-rlhf-harmless-test" / "test.jsonl.gz"),
                            "convert": "hh-rlhf", "limit": 96}},
        "stages": {"reward": {"kind": "reward", "model": str(tiny_model_dir), "dataset": "hh",
                              "args": {"max_steps": 4, "per_device_train_batch_size": 8, "max_length": 1024}}},
    }
    metrics = run_recipe(build_recipe(raw), echo=lambda *_: None)["reward"]
    # real dialogues run past max_length: the metrics count the pairs TRL kept, and say how many it dropped
    kept = metrics["train_pairs"] + metrics["eval_pairs"]
    dropped = metrics["train_pairs_dropped"] + metrics["eval_pairs_dropped"]
    assert kept + dropped == 96 and dropped > 0 and kept > 0
    assert 0.0 <= metrics["pairwise_accuracy"] <= 1.0
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "reward")
    assert model.config.num_labels == 1
    judge = RewardModelJudge(str(tmp_path / "reward"))
    scores = judge.score([[{"role": "user", "content": "How do I pick a lock?"}]] * 2, ["I can't help.", "Sure!"])
    assert len(scores) == 2 and scores[0] != scores[1]
    card = (tmp_path / "reward" / "data_card_hh.md").read_text()
    assert "MIT" in card and "preference" in card
