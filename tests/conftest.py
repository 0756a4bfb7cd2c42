"""Shared fixtures: a tiny byte-level BPE tokenizer and micro Llama models, built locally in seconds."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

WORDS = ("the a good bad great poor quick slow red blue cat dog phone lamp works breaks loves hates "
         "battery screen price design delivery is was very not quite really and but").split()


def toy_texts(n: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 15))) + "." for _ in range(n)]


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from align.stages.tokenizer import train_bpe

    return train_bpe(toy_texts(), vocab_size=300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """A saved micro Llama (random init) with its tokenizer: loads with AutoModelForCausalLM. It carries align's
    marker, as a pretrain stage's output does, so stages training it take align's micro-model defaults."""
    from align.models import build_model
    from align.stages.training import mark_align_model

    path = tmp_path_factory.mktemp("micro_llama")
    build_model({"preset": "llama-micro"}, tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    mark_align_model(path, "tests/conftest.py: a llama-micro preset built from scratch")
    return path


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def micro_full_run(tmp_path_factory):
    """Every stage kind once, on tiny slices of the builtin task (about 15 s); shared by several tests."""
    from align.recipe import load_recipe
    from align.runner import run_recipe

    out = tmp_path_factory.mktemp("micro_full")
    recipe = load_recipe(REPO / "tests" / "recipes" / "micro_full.yaml", output_dir=str(out))
    return out, run_recipe(recipe, echo=lambda *_: None)


@pytest.fixture(scope="session")
def hub_replica(tmp_path_factory):
    """``hub_replica("llama3")`` -> Path of a tiny offline replica of that Hub checkpoint (see align.testing).

    Each family is built once per test session (about a second each).
    """
    from align.testing import build_replica

    root = tmp_path_factory.mktemp("hub_replicas")
    built: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in built:
            built[family] = build_replica(family, root / family)
        return built[family]

    return get
