"""Fixtures for the evaluation tests: micro models whose outputs are not degenerate."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def untied_model(tiny_tokenizer):
    """A random micro Llama with its own LM head: greedy decoding wanders over the vocabulary.

    (With tied embeddings a random model mostly predicts the token it was just fed, so greedy
    decoding repeats the generation prompt's role token and every response decodes to "".)
    """
    from align.models import build_model

    return build_model({"preset": "llama-micro", "tie_word_embeddings": False}, tiny_tokenizer, seed=3).eval()
