"""Data cards: what a run records about each dataset it read."""

import datasets
import pytest

from align.data import write_data_card

U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731


def chat(n=5):
    return datasets.Dataset.from_list([{"messages": [U(f"q{i}"), A(f"a{i}")]} for i in range(n)])


def test_card_in_a_folder_with_token_counts(tmp_path, tiny_tokenizer):
    path = write_data_card(chat(), tmp_path, name="chat", spec={"path": "chat.jsonl"},
                           tokenizer=tiny_tokenizer, notes="Made by hand.\n\n| a | b |")
    assert path == tmp_path / "data_card_chat.md"
    text = path.read_text()
    for needle in ("# Data card: chat", '`{"path": "chat.jsonl"}`', "**Rows**: 5", "**Text**: 20 bytes",
                   "conversational", "`messages` (list[{role: string, content: string}])",
                   "**Licence**: unknown — check the source", "**Tokens**", "Made by hand.\n\n| a | b |",
                   "Row 0:", "Row 2:", '"content": "q2"'):
        assert needle in text, needle
    assert "Row 1:" not in text


def test_token_counts_cover_every_text_field(tmp_path, tiny_tokenizer):
    rows = [{"prompt": "the cat", "chosen": "the dog", "rejected": "a lamp", "score": 1.0}] * 4
    text = write_data_card(datasets.Dataset.from_list(rows), tmp_path / "card.md", name="p", spec={"path": "p.jsonl"},
                           tokenizer=tiny_tokenizer).read_text()
    per_row = sum(len(tiny_tokenizer(s, add_special_tokens=False)["input_ids"]) for s in ("the cat", "the dog", "a lamp"))
    assert f"**Tokens** (contents of the text fields): {4 * per_row:,} in all, {per_row:.1f} per row on average, {per_row:,} at most" in text
    assert "**Text**: 80 bytes" in text and "`score` (float64)" in text and "preference" in text


def test_chat_template_is_applied_when_the_tokenizer_has_one(tmp_path, tiny_tokenizer):
    class Templated:
        chat_template = "yes"

        def apply_chat_template(self, messages, tokenize):
            return "".join(f"<{m['role']}>{m['content']}" for m in messages)

        def __call__(self, texts, add_special_tokens):
            return {"input_ids": [list(t) for t in texts]}  # one token per character

    text = write_data_card(chat(2), tmp_path, name="c", spec={"path": "c.jsonl"}, tokenizer=Templated()).read_text()
    assert "**Tokens** (chat template applied to conversations): 42 in all, 21.0 per row" in text


def test_long_values_are_truncated_and_licences_found(tmp_path):
    pytest.importorskip("align.data.builtin")
    long = datasets.Dataset.from_list([{"text": "word " * 1000}])
    text = write_data_card(long, tmp_path, name="t", spec={"builtin": "reviews", "split": "pretrain"}).read_text()
    assert "… [5,000 characters]" in text and len(text) < 2000 and "language_modeling" in text
    from align.data.builtin import BUILTINS
    assert f"**Licence**: {BUILTINS['reviews']['licence']}" in text
    hh = write_data_card(chat(), tmp_path, name="hh", spec={"path": "data/hh-rlhf/test.jsonl.gz"}).read_text()
    assert "**Licence**: MIT (Anthropic, hh-rlhf)" in hh
    given = write_data_card(chat(), tmp_path, name="x", spec={"path": "x.jsonl"}, licence="CC-BY-4.0").read_text()
    assert "**Licence**: CC-BY-4.0" in given


def test_empty_dataset_still_gets_a_card(tmp_path):
    empty = datasets.Dataset.from_dict({"text": []})
    text = write_data_card(empty, tmp_path / "sub" / "card.md", name="e", spec={"path": "e.txt"}).read_text()
    assert "**Rows**: 0" in text and "Examples" not in text
    odd = datasets.Dataset.from_list([{"question": "q", "answer": "a"}])
    text = write_data_card(odd, tmp_path, name="odd", spec={"path": "odd.csv"}).read_text()
    assert "**Format**: unknown: no known format" in text and "question: \"q\"" in text
