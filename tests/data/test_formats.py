"""Format detection and row checks: every error names the dataset, the column and the row."""

import datasets
import pytest

from align.data import detect_format, is_conversational, validate_dataset
from align.errors import AlignError

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def ds(rows):
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("rows, fmt, conversational", [
    ([{"text": "hello"}], "language_modeling", False),
    ([{"messages": [U("hi"), A("yo")]}], "conversational", True),
    ([{"prompt": "hi", "completion": "yo"}], "prompt_completion", False),
    ([{"prompt": [U("hi")], "completion": [A("yo")]}], "prompt_completion", True),
    ([{"prompt": "hi"}], "prompt_only", False),
    ([{"prompt": [U("hi")]}], "prompt_only", True),
    ([{"prompt": "hi", "chosen": "a", "rejected": "b"}], "preference", False),
    ([{"prompt": [U("hi")], "chosen": [A("a")], "rejected": [A("b")], "chosen_score": 1.0}], "preference", True),
    ([{"chosen": "hi a", "rejected": "hi b"}], "implicit_preference", False),
    ([{"chosen": [U("hi"), A("a")], "rejected": [U("hi"), A("b")]}], "implicit_preference", True),
])
def test_every_format_is_detected_and_valid(rows, fmt, conversational):
    data = ds(rows)
    assert detect_format(data) == fmt
    assert is_conversational(data) is conversational
    assert validate_dataset(data, name="d") == fmt


@pytest.mark.parametrize("rows, column, row, message", [
    ([{"text": "ok"}, {"text": "  "}], "text", 1, "empty"),
    ([{"text": "ok"}, {"text": None}], "text", 1, "missing"),
    ([{"messages": [U("a"), A("b")]}, {"messages": [A("b"), U("a")]}], "messages", 1, "must start with a user message"),
    ([{"messages": [U("a"), U("b"), A("c")]}], "messages", 0, "two user messages in a row"),
    ([{"messages": [U("a"), {"role": "bot", "content": "b"}]}], "messages", 0, "role 'bot'"),
    ([{"messages": [U("a"), A("b"), U("c")]}], "messages", 0, "last message must be from the assistant"),
    ([{"messages": [U("a"), A("")]}], "messages", 0, "empty or non-string content"),
    ([{"messages": [U("a"), {"role": "system", "content": "s"}, A("b")]}], "messages", 0, "system message may only come first"),
    ([{"prompt": [U("a"), A("b")]}], "prompt", 0, "last message must be from the user"),
    ([{"prompt": "p", "chosen": "x", "rejected": ""}], "rejected", 0, "empty"),
    ([{"prompt": [U("p")], "chosen": [U("x")], "rejected": [A("y")]}], "chosen", 0, "expected only assistant"),
])
def test_bad_rows_are_named(rows, column, row, message):
    with pytest.raises(AlignError) as err:
        validate_dataset(ds(rows), name="datasets.mine")
    text = str(err.value)
    assert "datasets.mine" in text and f"row {row}" in text and repr(column) in text and message in text


def test_chosen_equal_to_rejected_is_refused():
    with pytest.raises(AlignError, match=r"datasets.p: row 1: chosen and rejected are identical"):
        validate_dataset(ds([{"prompt": "p", "chosen": "a", "rejected": "b"},
                             {"prompt": "p", "chosen": "same", "rejected": "same"}]), name="datasets.p")


def test_wrong_format_for_the_stage():
    with pytest.raises(AlignError, match=r"stages.dpo.dataset is a conversational dataset \(messages\) but this stage "
                                         r"needs a preference dataset"):
        validate_dataset(ds([{"messages": [U("a"), A("b")]}]), name="stages.dpo.dataset",
                         expected=("preference", "implicit_preference"))


def test_unknown_columns_and_empty_dataset():
    with pytest.raises(AlignError, match=r"match no known format.*rename"):
        validate_dataset(ds([{"question": "a", "answer": "b"}]), name="d")
    with pytest.raises(AlignError, match="no rows"):
        validate_dataset(datasets.Dataset.from_dict({"text": []}), name="d")
