"""Pair-forming rules of the preferences stage."""

from align.stages.preferences import as_conversational, describe, form_pairs


def test_best_and_worst_of_k_form_the_pair():
    pairs = form_pairs(["p"], [["a", "b", "c", "d"]], [[0.2, 0.9, -0.5, 0.1]])
    assert pairs == [{"prompt": "p", "chosen": "b", "rejected": "c", "chosen_score": 0.9, "rejected_score": -0.5}]


def test_ties_and_small_gaps_give_no_pair():
    assert form_pairs(["p"], [["a", "b"]], [[0.5, 0.5]]) == []
    assert form_pairs(["p"], [["a", "b"]], [[0.5, 0.55]], min_score_gap=0.1) == []
    assert len(form_pairs(["p"], [["a", "b"]], [[0.5, 0.7]], min_score_gap=0.1)) == 1


def test_identical_texts_give_no_pair_even_with_different_scores():
    assert form_pairs(["p"], [["same", " same "]], [[0.0, 1.0]]) == []


def test_ties_at_the_top_pick_the_first_sample():
    pairs = form_pairs(["p"], [["a", "b", "c"]], [[1.0, 1.0, 0.0]])
    assert pairs[0]["chosen"] == "a" and pairs[0]["rejected"] == "c"


def test_one_pair_per_prompt_and_prompts_stay_aligned():
    pairs = form_pairs(["p1", "p2", "p3"], [["a", "b"], ["c", "d"], ["e", "f"]], [[1, 0], [0, 0], [0, 2]])
    assert [(p["prompt"], p["chosen"]) for p in pairs] == [("p1", "a"), ("p3", "f")]


def test_conversational_output_and_summary():
    row = as_conversational({"prompt": "Write.", "chosen": "good", "rejected": "bad", "chosen_score": 1.0, "rejected_score": 0.0})
    assert row["prompt"] == [{"role": "user", "content": "Write."}]
    assert row["chosen"] == [{"role": "assistant", "content": "good"}]
    text = describe([row], n_prompts=2, k=4)
    assert "1 pairs kept (50%)" in text and "mean 1.000" in text


def test_empty_responses_never_enter_a_pair():
    pairs = form_pairs(["p"], [["", "ok text", "better text"]], [[-1.0, 0.1, 0.5]])
    assert pairs[0]["chosen"] == "better text" and pairs[0]["rejected"] == "ok text"
    assert form_pairs(["p"], [["", "  ", "only one"]], [[-1.0, -1.0, 0.5]]) == []
