"""Format detection and row checks: every error names the dataset, the column and the row."""

import time

import datasets
import pytest

from align.data import detect_format, is_conversational, validate_dataset
from align.errors import AlignError

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
S = lambda text: {"role": "system", "content": text}  # noqa: E731


def ds(rows):
    return datasets.Dataset.from_list(rows)


@pytest.mark.parametrize("rows, fmt, conversational", [
    ([{"text": "hello"}], "language_modeling", False),
    ([{"messages": [U("hi"), A("yo")]}], "conversational", True),
    ([{"messages": [S("be kind"), U("hi"), A("yo"), U("again"), A("yes")]}], "conversational", True),
    ([{"prompt": "hi", "completion": "yo"}], "prompt_completion", False),
    ([{"prompt": [U("hi")], "completion": [A("yo")]}], "prompt_completion", True),
    ([{"prompt": "hi"}], "prompt_only", False),
    ([{"prompt": [S("terse"), U("hi")]}], "prompt_only", True),
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
    assert validate_dataset(data, name="d", expected=(fmt, "language_modeling")) == fmt


def test_conversational_is_judged_on_the_first_non_null_value():
    assert is_conversational(ds([{"prompt": None}, {"prompt": [U("hi")]}]))
    assert not is_conversational(ds([{"text": "x"}]))


@pytest.mark.parametrize("rows, column, row, message", [
    ([{"text": "ok"}, {"text": "  "}], "text", 1, "the string is empty"),
    ([{"text": "ok"}, {"text": None}], "text", 1, "missing (null)"),
    ([{"prompt": "p", "completion": "c"}] * 3 + [{"prompt": "p", "completion": None}], "completion", 3, "missing"),
    ([{"prompt": "p", "chosen": "x", "rejected": ""}], "rejected", 0, "the string is empty"),
    ([{"messages": [U("a"), A("b")]}, {"messages": None}], "messages", 1, "missing (null)"),
    ([{"messages": [U("a"), A("b")]}, {"messages": [A("b"), U("a")]}], "messages", 1,
     "must start with a user message"),
    ([{"messages": [U("a"), U("b"), A("c")]}], "messages", 0, "two user messages in a row"),
    ([{"messages": [U("a"), {"role": "bot", "content": "b"}]}], "messages", 0, "role 'bot'"),
    ([{"messages": [U("a"), A("b")]}, {"messages": [U("a"), A("b"), U("c")]}], "messages", 1,
     "last message must be from the assistant"),
    ([{"messages": [U("a"), A("")]}], "messages", 0, "empty or non-string content"),
    ([{"messages": [U("a"), A("b")]}, {"messages": []}], "messages", 1, "non-empty list"),
    ([{"messages": [U("a"), S("s"), A("b")]}], "messages", 0, "system message may only come first"),
    ([{"prompt": [U("a"), A("b")]}], "prompt", 0, "last message must be from the user"),
    ([{"prompt": [U("p")], "chosen": [U("x")], "rejected": [A("y")]}], "chosen", 0, "expected only assistant"),
    ([{"prompt": [U("p")], "completion": [A("x"), A("y")]}, {"prompt": [U("p")], "completion": [U("x")]}],
     "completion", 1, "expected only assistant"),
    ([{"chosen": [U("a"), A("b")], "rejected": [U("a")]}], "rejected", 0, "last message must be from the assistant"),
])
def test_bad_rows_are_named(rows, column, row, message):
    with pytest.raises(AlignError) as err:
        validate_dataset(ds(rows), name="datasets.mine")
    text = str(err.value)
    assert text.startswith(f"datasets.mine: row {row}, column {column!r}: ") and message in text, text


def test_strings_where_messages_are_expected_are_named():
    # Arrow cannot mix lists and strings in one column, so a mismatch is a whole column of the wrong kind.
    data = datasets.Dataset.from_dict({"prompt": [[U("a")], [U("b")]], "completion": ["x", "y"]})
    with pytest.raises(AlignError, match=r"d: row 0, column 'completion': expected a non-empty list"):
        validate_dataset(data, name="d")
    data = datasets.Dataset.from_dict({"prompt": ["a", "b"], "completion": [[A("x")], [A("y")]]})
    with pytest.raises(AlignError, match=r"d: row 0, column 'completion': expected a string, got list"):
        validate_dataset(data, name="d")


def test_chosen_equal_to_rejected_is_refused():
    with pytest.raises(AlignError, match=r"datasets.p: row 1, columns 'chosen' and 'rejected' are identical"):
        validate_dataset(ds([{"prompt": "p", "chosen": "a", "rejected": "b"},
                             {"prompt": "p", "chosen": "same", "rejected": "same"}]), name="datasets.p")


def test_wrong_format_for_the_stage():
    with pytest.raises(AlignError, match=r"stages.dpo.dataset \(chat\) is a conversational dataset \(messages\) but this "
                                         r"stage needs a preference dataset \(prompt/chosen/rejected\) or"):
        validate_dataset(ds([{"messages": [U("a"), A("b")]}]), name="stages.dpo.dataset (chat)",
                         expected=("preference", "implicit_preference"))
    with pytest.raises(AlignError, match="needs a prompt-only dataset"):
        validate_dataset(ds([{"text": "a"}]), name="d", expected="prompt_only")


def test_unknown_columns_and_empty_dataset():
    with pytest.raises(AlignError, match=r"d: columns \['question', 'answer'\] match no known format.*rename"):
        validate_dataset(ds([{"question": "a", "answer": "b"}]), name="d")
    with pytest.raises(AlignError, match="d: the dataset has no rows"):
        validate_dataset(datasets.Dataset.from_dict({"text": []}), name="d")


def test_every_row_is_checked_quickly():
    n = 50_000
    data = datasets.Dataset.from_dict({"prompt": [[U(f"question {i}")] for i in range(n)],
                                       "chosen": [[A(f"good {i}")] for i in range(n)],
                                       "rejected": [[A("bad")] for _ in range(n)]})
    start = time.perf_counter()
    assert validate_dataset(data, name="d") == "preference"
    assert time.perf_counter() - start < 5
    bad = data.select(range(n - 1)).add_item({"prompt": [U("q")], "chosen": [A("x")], "rejected": [A("x")]})
    with pytest.raises(AlignError, match=f"row {n - 1}, columns 'chosen' and 'rejected'"):
        validate_dataset(bad, name="d")
    # rows are numbered as the user sees the dataset, after shuffle/select
    with pytest.raises(AlignError, match="row 0, columns 'chosen' and 'rejected'"):
        validate_dataset(bad.select([n - 1, 0]), name="d")
