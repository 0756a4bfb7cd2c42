"""align.testing: every offline replica loads and behaves like the Hub checkpoint it stands for."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping

import pytest
import torch

from align.testing import FAMILIES

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Write a short review of the kettle."},
    {"role": "assistant", "content": "The kettle is great."},
    {"role": "user", "content": "hi"},
]
DTYPES = {"bfloat16": "BF16", "float32": "F32", "float16": "F16"}


@pytest.fixture(scope="module")
def loaded(hub_replica):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    @functools.cache
    def load(name):
        path = hub_replica(name)
        return path, AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)

    return load


def ids_of(encoded):
    return list(encoded["input_ids"] if isinstance(encoded, Mapping) else encoded)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_loads_offline_with_the_real_layout(name, loaded):
    fam = FAMILIES[name]
    path, tok, model = loaded(name)
    for file in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json"):
        assert (path / file).is_file(), file
    assert type(model.config).__name__ == fam.config_class
    assert json.loads((path / "tokenizer_config.json").read_text())["tokenizer_class"] == fam.tokenizer_class
    assert 500 <= len(tok) <= 1000
    assert tok.eos_token == fam.eos and tok.bos_token == fam.bos and tok.unk_token == fam.unk
    if fam.vocab_multiple:  # padded embedding matrix, as Qwen / Phi-3 / OPT ship
        assert model.config.vocab_size > len(tok) and model.config.vocab_size % fam.vocab_multiple == 0
    else:
        assert model.config.vocab_size == len(tok)
    for key, value in fam.resolve(tok, fam.config_ids).items():
        assert getattr(model.config, key) == value, key


@pytest.mark.parametrize("name", list(FAMILIES))
def test_weights_are_stored_in_the_shipped_dtype(name, loaded):
    path, _, _ = loaded(name)
    raw = (path / "model.safetensors").read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes == {DTYPES[FAMILIES[name].dtype]}
    assert json.loads((path / "config.json").read_text())["dtype"] == FAMILIES[name].dtype


@pytest.mark.parametrize("name", list(FAMILIES))
def test_bos_is_added_exactly_when_the_real_tokenizer_adds_it(name, loaded):
    fam = FAMILIES[name]
    _, tok, _ = loaded(name)
    ids = ids_of(tok("hi"))
    if fam.add_bos:
        assert ids[0] == tok.bos_token_id and ids.count(tok.bos_token_id) == 1
    elif tok.bos_token_id is not None:
        assert tok.bos_token_id not in ids
    assert tok.decode(ids, skip_special_tokens=True).strip() == "hi"


@pytest.mark.parametrize("name", list(FAMILIES))
def test_real_chat_template(name, loaded):
    fam = FAMILIES[name]
    _, tok, _ = loaded(name)
    if fam.chat_template is None:
        assert tok.chat_template is None
        return
    assert tok.chat_template == fam.template_text()
    text = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert "hi" in text and "kettle" in text
    ids = ids_of(tok.apply_chat_template(CONVERSATION, tokenize=True, add_generation_prompt=True))
    if tok.bos_token is not None and tok.bos_token not in fam.template_text():
        assert ids.count(tok.bos_token_id) <= 1 and tok.bos_token_id not in ids[1:]
    # (SmolLM2's bos_token is <|im_start|>, which its template writes at every turn, as the real one does)
    if fam.add_bos and text.startswith(tok.bos_token):
        # the real trap: tokenizing the rendered text with special tokens doubles the BOS
        assert ids_of(tok(text))[:2] == [tok.bos_token_id] * 2
        assert ids_of(tok(text, add_special_tokens=False)).count(tok.bos_token_id) == 1


@pytest.mark.parametrize("name", list(FAMILIES))
def test_pad_token_matches_the_family(name, loaded):
    fam = FAMILIES[name]
    _, tok, _ = loaded(name)
    assert tok.pad_token == fam.pad
    assert (tok.pad_token_id is not None) == fam.has_pad
    assert tok.padding_side == fam.tokenizer_kwargs.get("padding_side", tok.padding_side)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_generation_config_is_the_shipped_one(name, loaded):
    from transformers import GenerationConfig

    fam = FAMILIES[name]
    path, tok, model = loaded(name)
    stored = GenerationConfig.from_pretrained(path)
    for key, value in fam.resolve(tok, fam.generation).items():
        assert getattr(stored, key) == value, key
        assert getattr(model.generation_config, key) == value, key
    eos = stored.eos_token_id if isinstance(stored.eos_token_id, list) else [stored.eos_token_id]
    assert tok.eos_token_id in eos  # generation stops at the end of the assistant's turn


@pytest.mark.parametrize("name", list(FAMILIES))
def test_forward_and_generate(name, loaded):
    _, tok, model = loaded(name)
    assert model.dtype == FAMILIES[name].torch_dtype  # dtype="auto" is the default in transformers 5
    batch = tok(["hello there", "hi"], return_tensors="pt", padding=True) if tok.pad_token else \
        tok(["hello there"], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape and logits.shape[-1] == model.config.vocab_size
    assert torch.isfinite(logits.float()).all()
    torch.manual_seed(0)
    out = model.generate(**batch, max_new_tokens=4, pad_token_id=tok.pad_token_id or tok.eos_token_id)
    assert out.shape[0] == batch["input_ids"].shape[0] and out.shape[1] <= batch["input_ids"].shape[1] + 4


def test_family_quirks(loaded):
    _, phi3, _ = loaded("phi3")  # role tokens rstrip: the newline after <|user|> disappears
    assert phi3.convert_ids_to_tokens(ids_of(phi3("<|user|>\nhi", add_special_tokens=False)))[0] == "<|user|>"
    with_newline, without = (ids_of(phi3(t, add_special_tokens=False)) for t in ("<|user|>\nhi", "<|user|>hi"))
    assert with_newline == without
    _, _, phi3_model = loaded("phi3")
    assert hasattr(phi3_model.model.layers[0].self_attn, "qkv_proj")  # fused projections
    _, _, opt = loaded("opt")
    assert isinstance(opt.model.decoder.layers[0].dropout, float) and opt.model.decoder.layers[0].dropout == 0.1
    _, _, gpt2 = loaded("gpt2")
    assert gpt2.transformer.drop.p == 0.1
    _, qwen3, _ = loaded("qwen3")
    text = qwen3.apply_chat_template(CONVERSATION[1:2], tokenize=False, add_generation_prompt=True,
                                     enable_thinking=False)
    assert text.endswith("<think>\n\n</think>\n\n")
    _, gemma, gemma_model = loaded("gemma3")
    assert gemma_model.config.num_key_value_heads == 1 and gemma.padding_side == "left"
