"""on_invalid_rows: error (the default: stop at the first bad row) or drop (drop them, counted per reason in
the log and the data card: never silently)."""

import json
import logging

import datasets
import pytest

from align.data import load_dataset, validate_dataset, write_data_card
from align.state import dataset_fingerprint as fingerprint
from align.data.formats import drop_invalid_rows
from align.errors import AlignError

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731
GOOD = {"messages": [U("q"), A("a")]}
ROWS = [
    GOOD,                                                   # 0
    {"messages": [U("q"), {"role": "bot", "content": "a"}]},  # 1 bad role
    GOOD,                                                   # 2
    {"messages": [U("q"), A("")]},                          # 3 empty content
    {"messages": [A("a"), U("q")]},                         # 4 starts with the assistant
    {"messages": [U("q"), {"role": "bot", "content": "b"}]},  # 5 bad role again
    GOOD,                                                   # 6
    {"messages": [U("q"), A("a"), U("r"), A("  ")]},        # 7 empty content in another message
]


def jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_default_stops_at_the_first_bad_row_and_counts_the_rest(tmp_path):
    ds = load_dataset({"path": jsonl(tmp_path / "c.jsonl", ROWS)}, name="datasets.chat")
    assert len(ds) == len(ROWS) and not hasattr(ds, "align_dropped")
    with pytest.raises(AlignError) as err:
        validate_dataset(ds, name="datasets.chat")
    text = str(err.value)
    assert text.startswith("datasets.chat: row 1, column 'messages': message 1 has role 'bot'")
    assert "5 of 8 rows are invalid" in text and "on_invalid_rows: drop" in text


def test_drop_counts_per_reason_and_keeps_examples(tmp_path, caplog):
    spec = {"path": jsonl(tmp_path / "c.jsonl", ROWS), "on_invalid_rows": "drop"}
    with caplog.at_level(logging.WARNING, logger="align"):
        ds = load_dataset(spec, name="datasets.chat")
    assert len(ds) == 3 and all(m == GOOD["messages"] for m in ds["messages"])
    assert validate_dataset(ds, name="datasets.chat", expected="conversational") == "conversational"
    report = ds.align_dropped
    assert (report.total, report.dropped) == (8, 5)
    assert report.counts == {
        "column 'messages': a message has role 'bot'; roles are system, user, assistant, tool": 2,
        "column 'messages': a message (assistant) has empty or non-string content": 2,
        "column 'messages': the conversation must start with a user message (after an optional system message)": 1,
    }
    assert [row for row, _, _ in report.examples] == [1, 3, 4]  # the first few, in source order
    log = caplog.text
    assert "datasets.chat: dropped 5 of 8 rows as invalid (on_invalid_rows: drop)" in log
    assert "2 x column 'messages': a message has role 'bot'" in log and "row 1:" in log


def test_drop_is_written_in_the_data_card(tmp_path):
    spec = {"path": jsonl(tmp_path / "c.jsonl", ROWS), "on_invalid_rows": "drop"}
    ds = load_dataset(spec, name="datasets.chat")
    text = write_data_card(ds, tmp_path, name="chat", spec=spec).read_text()
    assert "**Rows**: 3" in text
    assert "## Dropped rows" in text and "removed **5 of 8** rows (62.5%)" in text
    assert "| column 'messages': a message has role 'bot'; roles are system, user, assistant, tool | 2 |" in text
    assert "- row 1: column 'messages': a message has role 'bot'" in text and "- row 4:" in text


def test_drop_with_nothing_to_drop_says_so(tmp_path):
    spec = {"path": jsonl(tmp_path / "c.jsonl", [GOOD, GOOD]), "on_invalid_rows": "drop"}
    ds = load_dataset(spec, name="d")
    assert len(ds) == 2 and ds.align_dropped.dropped == 0
    assert "all 2 rows were valid; none dropped" in write_data_card(ds, tmp_path, name="d", spec=spec).read_text()


def test_pairs_and_strings_are_dropped_by_reason():
    data = datasets.Dataset.from_list([
        {"prompt": "p", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": "same", "rejected": "same"},
        {"prompt": " ", "chosen": "a", "rejected": "b"},
        {"prompt": "p", "chosen": None, "rejected": "b"},
    ])
    kept, report = drop_invalid_rows(data, name="prefs")
    assert kept["chosen"] == ["a"]
    assert report.counts == {"columns 'chosen' and 'rejected' are identical": 1,
                             "column 'prompt': the string is empty": 1,
                             "column 'chosen': the value is missing (null)": 1}


def test_drop_applies_before_limit_so_limit_counts_valid_rows(tmp_path):
    spec = {"path": jsonl(tmp_path / "c.jsonl", ROWS), "on_invalid_rows": "drop", "limit": 2}
    ds = load_dataset(spec, name="d")
    assert len(ds) == 2 and ds.align_dropped.dropped == 5


def test_a_missing_column_is_still_an_error_and_so_is_dropping_everything(tmp_path):
    with pytest.raises(AlignError, match="match no known format"):
        load_dataset({"path": jsonl(tmp_path / "q.jsonl", [{"question": "q"}]), "on_invalid_rows": "drop"}, name="d")
    bad = jsonl(tmp_path / "bad.jsonl", [ROWS[1], ROWS[3]])
    with pytest.raises(AlignError, match=r"d: every one of the 2 rows is invalid, so on_invalid_rows: drop would leave "
                                         r"nothing .*First: d: row 0, column 'messages'"):
        load_dataset({"path": bad, "on_invalid_rows": "drop"}, name="d")


def test_the_option_is_checked_and_part_of_the_fingerprint(tmp_path):
    path = jsonl(tmp_path / "c.jsonl", ROWS)
    with pytest.raises(AlignError, match=r"datasets.c.on_invalid_rows: expected error .* or drop .*got 'skip'"):
        load_dataset({"path": path, "on_invalid_rows": "skip"}, name="datasets.c")
    assert fingerprint({"path": path}) != fingerprint({"path": path, "on_invalid_rows": "drop"})
    assert len(load_dataset({"path": path, "on_invalid_rows": "error"}, name="c")) == len(ROWS)


def test_drop_through_a_recipe_stage(tmp_path):
    """The stage's own path: ctx.dataset loads, validates and writes the card with the dropped rows."""
    from accelerate import PartialState

    from align.recipe import build_recipe
    from align.stages.context import StageContext

    raw = {"name": "t", "output_dir": str(tmp_path / "run"),
           "datasets": {"chat": {"path": jsonl(tmp_path / "c.jsonl", ROWS), "on_invalid_rows": "drop"}},
           "stages": {"tokenizer": {"kind": "tokenizer", "dataset": "chat"}}}
    recipe = build_recipe(raw)
    ctx = StageContext(recipe, recipe.stages["tokenizer"], PartialState(cpu=True))
    ds = ctx.dataset("dataset")
    assert len(ds) == 3
    card = (tmp_path / "run" / "tokenizer" / "data_card_chat.md").read_text()
    assert "## Dropped rows" in card and "removed **5 of 8** rows" in card
