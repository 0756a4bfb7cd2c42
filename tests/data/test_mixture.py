"""``mixture:``: several sources, each with its own convert, normalised to one format, mixed in the asked proportions,
and listed in the data card."""

from __future__ import annotations

import json

import pytest

from align.data import load_dataset, write_data_card
from align.errors import AlignError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def sources(tmp_path):
    chat = write_jsonl(tmp_path / "chat.jsonl", [
        {"messages": [{"role": "user", "content": f"a{i}"}, {"role": "assistant", "content": f"b{i}"}], "id": i}
        for i in range(300)])
    sharegpt = write_jsonl(tmp_path / "sharegpt.jsonl", [
        {"conversations": [{"from": "human", "value": f"q{i}"}, {"from": "gpt", "value": f"r{i}"}]}
        for i in range(100)])
    return chat, sharegpt


def origin(row) -> str:
    return "sharegpt" if row["messages"][0]["content"].startswith("q") else "chat"


def test_fractions_give_the_asked_proportions_without_repeating_a_row(sources):
    chat, sharegpt = sources
    ds = load_dataset({"mixture": [{"path": chat, "fraction": 0.8},
                                   {"path": sharegpt, "convert": "sharegpt", "fraction": 0.2}]}, name="mix")
    counts = {k: sum(origin(r) == k for r in ds) for k in ("chat", "sharegpt")}
    # TRL's rule: the largest mixture with no source repeated; chat (300 rows) caps it at 300 / 0.8 = 375
    assert counts == {"chat": 300, "sharegpt": 75}
    assert ds.column_names == ["messages"]  # one format: the conversational columns all sources share
    assert len({json.dumps(r["messages"]) for r in ds}) == len(ds)
    assert [origin(r) for r in ds.select(range(40))].count("sharegpt") > 0  # shuffled together, not appended
    fractions = {m["fraction"]: m["rows_used"] for m in ds.align_mixture}
    assert fractions == {0.8: 300, 0.2: 75}


def test_fractions_are_normalised_and_limit_keeps_the_proportions(sources):
    chat, sharegpt = sources
    ds = load_dataset({"mixture": [{"path": chat, "fraction": 1}, {"path": sharegpt, "convert": "sharegpt",
                                                                   "fraction": 1}], "limit": 100}, name="mix")
    share = sum(origin(r) == "sharegpt" for r in ds) / len(ds)
    assert len(ds) == 100 and 0.35 < share < 0.65  # 100 + 100 rows mixed, a shuffled sample of 100


def test_weights_keep_a_share_of_each_source(sources):
    chat, sharegpt = sources
    ds = load_dataset({"mixture": [{"path": chat, "weight": 0.1}, {"path": sharegpt, "convert": "sharegpt"}]},
                      name="mix")
    assert sum(origin(r) == "chat" for r in ds) == 30 and sum(origin(r) == "sharegpt" for r in ds) == 100


def test_the_data_card_lists_the_mixture(sources, tmp_path):
    chat, sharegpt = sources
    spec = {"mixture": [{"path": chat, "fraction": 0.8}, {"path": sharegpt, "convert": "sharegpt", "fraction": 0.2}]}
    card = write_data_card(load_dataset(spec, name="mix"), tmp_path / "card.md", name="mix", spec=spec).read_text()
    assert "## Mixture" in card
    assert "| 0.8 | - | 300 | 300 | 80.0% |" in card and "| 0.2 | - | 100 | 75 | 20.0% |" in card
    assert '"convert": "sharegpt"' in card


@pytest.mark.parametrize("spec, message", [
    ({"mixture": []}, r"mix\.mixture: expected a list of dataset specs"),
    ({"mixture": [{"path": "a.jsonl", "fraction": 0.5}, {"path": "b.jsonl"}]},
     r"fraction is set on some sources and not on mix\.mixture\[1\]"),
    ({"mixture": [{"path": "a.jsonl", "weight": 2}]}, r"mix\.mixture\[0\]\.weight: expected between 0 and 1"),
    ({"mixture": [{"path": "a.jsonl", "fractoin": 1}]}, r"mix\.mixture\[0\]\.fractoin: unknown dataset key"),
    ({"mixture": [{"mixture": [{"path": "a.jsonl"}]}]}, r"cannot be a mixture"),
    ({"mixture": [{"path": "a.jsonl"}], "split": "train"}, r"mix\.split: give split on each source"),
    ({"path": "a.jsonl", "fraction": 0.5}, r"mix\.fraction: unknown dataset key"),
])
def test_bad_mixtures_name_the_field(spec, message):
    with pytest.raises(AlignError, match=message):
        load_dataset(spec, name="mix")


def test_sources_of_different_formats_are_refused(sources, tmp_path):
    chat, _ = sources
    text = write_jsonl(tmp_path / "text.jsonl", [{"text": "x"}])
    with pytest.raises(AlignError, match=r"mix\.mixture: the sources are in different formats .*conversational.*"
                                         r"language_modeling"):
        load_dataset({"mixture": [{"path": chat}, {"path": text}]}, name="mix")


def test_a_recipe_dataset_can_be_a_mixture_with_a_builtin_source(sources, tmp_path):
    from align.recipe import build_recipe
    from align.state import dataset_fingerprint

    chat, _ = sources
    spec = {"mixture": [{"builtin": "reviews", "split": "sft", "size": 20}, {"path": chat}], "limit": 30}
    recipe = build_recipe({"name": "m", "output_dir": str(tmp_path / "run"), "datasets": {"chat": spec},
                           "stages": {"sft": {"kind": "sft", "model": "m", "dataset": "chat"}}})
    assert len(load_dataset(recipe.datasets["chat"], name="datasets.chat")) == 30
    before = dataset_fingerprint(spec)
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": "changed"}]}])
    assert dataset_fingerprint(spec) != before  # a source's file changing re-runs the stages that read it
