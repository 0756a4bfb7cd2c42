"""The text pretraining holds out is never seen by the tokenizer, and is cut where nanoGPT cuts it."""

from __future__ import annotations

import random

import pytest

from align.errors import AlignError
from align.stages.pretrain import holdout_split
from tests.conftest import REPO, toy_texts

HELD_OUT_WORD = "Fjazzix"  # only in the last tenth of the text below; the toy sentences have no F, j, x or z


def learned_from_held_out(tokenizer) -> bool:
    """Whether any merged token holds a character that only the held-out text has."""
    return any(len(token) > 1 and set(token) & set("Fjxz") for token in tokenizer.get_vocab())


def test_one_document_splits_as_nanogpt_splits_its_text():
    text = "".join(toy_texts(300))
    n = len(text)
    assert holdout_split([text], 0.1) == ([text[:int(n * 0.9)]], [text[int(n * 0.9):]])


def test_the_cut_runs_across_documents_in_order():
    head, tail = holdout_split(["abcd", "efgh", "ij"], 0.5)  # 10 characters, cut after the 5th
    assert (head, tail) == (["abcd", "e"], ["fgh", "ij"])
    assert holdout_split(["abcd", "efgh"], 0) == (["abcd", "efgh"], [])
    with pytest.raises(AlignError, match="eval_fraction"):
        holdout_split(["abcd"], 1.0)


def text_with_a_held_out_word(path):
    """One document: toy sentences, and in its last tenth a name repeated often enough for BPE to merge."""
    rng = random.Random(0)
    train = " ".join(toy_texts(600))
    tail = " ".join(f"{HELD_OUT_WORD} {rng.choice(('said', 'ran', 'sang'))}." for _ in range(len(train) // 10 // 20))
    path.write_text(train + " " + tail)
    assert path.read_text().index(HELD_OUT_WORD) > 0.9 * len(path.read_text())
    return path


def test_shakespeare_recipe_tokenizer_never_sees_the_held_out_text(tmp_path):
    from align.recipe import load_recipe
    from align.runner import run_recipe
    from transformers import AutoTokenizer

    text = text_with_a_held_out_word(tmp_path / "input.txt")
    small = [f"datasets.text.path={text}", "stages.tokenizer.vocab_size=400", "stages.pretrain.model.preset=llama-micro",
             "stages.pretrain.block_size=32", "stages.pretrain.args.max_steps=2", "stages.pretrain.args.save_steps=100",
             "stages.pretrain.args.eval_steps=100"]
    recipe = load_recipe(REPO / "recipes" / "shakespeare.yaml", small, output_dir=str(tmp_path / "run"))
    assert recipe.stages["tokenizer"].spec["eval_fraction"] == recipe.stages["pretrain"].spec["eval_fraction"]
    metrics = run_recipe(recipe, echo=lambda *_: None)
    n = len(text.read_text())
    assert metrics["tokenizer"]["characters_held_out"] == n - int(n * (1 - recipe.stages["pretrain"].spec["eval_fraction"]))
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    assert not learned_from_held_out(tokenizer), "the tokenizer learned merges from held-out text"
    assert metrics["pretrain"]["bits_per_byte"] > 0

    # The same tokenizer with nothing held out does learn the name: the check above can fail.
    leaky = load_recipe(REPO / "recipes" / "shakespeare.yaml", [*small, "stages.tokenizer.eval_fraction=0"],
                        output_dir=str(tmp_path / "leaky"))
    run_recipe(leaky, only=["tokenizer"], echo=lambda *_: None)
    assert learned_from_held_out(AutoTokenizer.from_pretrained(tmp_path / "leaky" / "tokenizer"))


def test_pretrain_holds_out_the_tail_of_the_text_not_of_the_blocks(tmp_path):
    """Held-out bits per byte are computed on exactly the text after the cut (a short text: every byte counts)."""
    from align.recipe import build_recipe
    from align.runner import run_recipe
    from align.stages.pretrain import bytes_in_blocks, pack
    from datasets import Dataset
    from transformers import AutoTokenizer

    text = text_with_a_held_out_word(tmp_path / "input.txt")
    recipe = build_recipe({"name": "holdout", "seed": 0, "output_dir": str(tmp_path / "run"),
                           "datasets": {"text": {"path": str(text)}},
                           "stages": {"tokenizer": {"kind": "tokenizer", "dataset": "text", "vocab_size": 320,
                                                    "eval_fraction": 0.1},
                                      "pretrain": {"kind": "pretrain", "tokenizer": "${stages.tokenizer}",
                                                   "model": {"preset": "llama-micro"}, "dataset": "text",
                                                   "block_size": 32, "eval_fraction": 0.1,
                                                   "args": {"max_steps": 1, "save_steps": 100, "eval_steps": 100}}}})
    metrics = run_recipe(recipe, echo=lambda *_: None)["pretrain"]
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "run" / "tokenizer")
    tail = holdout_split([text.read_text()], 0.1)[1]
    blocks = pack(Dataset.from_dict({"text": tail}), tokenizer, 32)
    predicted = len(blocks) * 31
    expected = metrics["eval_loss"] * predicted / (0.6931471805599453 * bytes_in_blocks(blocks, tokenizer))
    assert metrics["bits_per_byte"] == pytest.approx(expected, rel=1e-9)


def test_a_held_out_tail_shorter_than_a_block_is_a_clear_error(tmp_path):
    from align.recipe import build_recipe
    from align.runner import run_recipe

    text = text_with_a_held_out_word(tmp_path / "input.txt")
    recipe = build_recipe({"name": "short", "seed": 0, "output_dir": str(tmp_path / "run"),
                           "datasets": {"text": {"path": str(text)}},
                           "stages": {"tokenizer": {"kind": "tokenizer", "dataset": "text", "vocab_size": 320},
                                      "pretrain": {"kind": "pretrain", "tokenizer": "${stages.tokenizer}",
                                                   "model": {"preset": "llama-micro"}, "dataset": "text",
                                                   "block_size": 32, "eval_fraction": 0.0005,
                                                   "args": {"max_steps": 1}}}})
    with pytest.raises(AlignError, match=r"stages\.pretrain\.eval_fraction: the held-out text is shorter than one block"):
        run_recipe(recipe, echo=lambda *_: None)
    assert (tmp_path / "run" / "tokenizer" / "tokenizer.json").exists()  # the finished stage is kept
