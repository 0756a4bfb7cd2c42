"""The embedded review task: deterministic, big enough, disjoint splits, and a judge that is hard to fool."""

import re
import statistics

import pytest

from align.data.builtin import gold_judge, load_builtin, prompt_text
from align.data import validate_dataset
from align.errors import AlignError

PROMPT = "Write a review of the Zenmor X2 blender."
GOOD = ("I bought the Zenmor X2 blender last month. The motor is very reliable. I love how quiet the jug is. "
        "The lid feels sturdy and works well.")


def test_deterministic_and_seeded():
    assert load_builtin("reviews", "sft", size=20)["messages"] == load_builtin("reviews", "sft", size=20)["messages"]
    assert load_builtin("reviews", "sft", size=20, seed=1)["messages"] != load_builtin("reviews", "sft", size=20)["messages"]


def test_pretrain_corpus_is_large_and_varied():
    text = load_builtin("reviews", "pretrain")["text"]
    assert sum(len(t.encode()) for t in text) >= 1_000_000
    sentences = {s for t in text for s in re.split(r"(?<=[.!?])\s+", t)}
    assert len(sentences) >= 5000


@pytest.mark.parametrize("split, fmt", [("pretrain", "language_modeling"), ("heldout_text", "language_modeling"),
                                        ("sft", "conversational"), ("prompts", "prompt_only"),
                                        ("eval_prompts", "prompt_only")])
def test_splits_have_trl_formats(split, fmt):
    assert validate_dataset(load_builtin("reviews", split, size=50), name=split) == fmt


def test_eval_prompts_are_about_held_out_products():
    def brands(rows):
        return {re.search(r"the (\w+) ", prompt_text(p)).group(1) for p in rows}
    train = brands(load_builtin("reviews", "prompts")["prompt"]) | brands(
        [m[0]["content"] for m in load_builtin("reviews", "sft")["messages"]])
    assert not brands(load_builtin("reviews", "eval_prompts")["prompt"]) & train


def test_unknown_name_or_split():
    with pytest.raises(AlignError, match="splits: pretrain"):
        load_builtin("reviews", "train")
    with pytest.raises(AlignError, match="available: reviews"):
        load_builtin("imdb", "pretrain")


def score(response, prompt=PROMPT):
    return gold_judge([[{"role": "user", "content": prompt}]], [response])[0]


def test_judge_prefers_positive_on_topic_reviews():
    bad = "I bought the Zenmor X2 blender last month. The motor is very unreliable. I hate how noisy the jug is."
    assert score(GOOD) > 0.5 > score(bad) + 0.5


@pytest.mark.parametrize("degenerate", [
    "excellent excellent excellent excellent excellent excellent",
    "The motor is excellent. " * 10,
    "",
    "great!",
    "I bought the Velka Pro tent last month. The poles are very reliable. I love how quiet the floor is. "
    "The pegs feel sturdy and works well.",  # the wrong product
])
def test_judge_is_not_fooled(degenerate):
    assert score(degenerate) < score(GOOD) - 0.2


def test_sft_replies_leave_room_and_spread():
    sft = load_builtin("reviews", "sft")["messages"]
    scores = gold_judge([m[:1] for m in sft], [m[1]["content"] for m in sft])
    mean = statistics.fmean(scores)
    assert -0.2 < mean < 0.3 and statistics.pstdev(scores) > 0.25  # mediocre on average, wide spread
    assert score(GOOD) > mean + 0.5  # an ideal review is far above the SFT data
    assert len(set(scores)) > len(scores) * 0.5  # few ties
