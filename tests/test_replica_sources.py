"""The replicas against the real repositories' files, not against align's idea of them.

``align/testing.py`` rebuilds Hub checkpoints offline; a replica is only worth testing against if it ships
what the real repository ships. The values below are copied from the real ``config.json``,
``generation_config.json`` and ``tokenizer_config.json`` of each checkpoint (read 2026-12-04 from verbatim
copies of those files in public repositories, since the Hub is not reachable here). Token ids are written as
the token the real id stands for in the real tokenizer (e.g. DeepSeek's 151643 is ``<｜end▁of▁sentence｜>``),
and sizes (hidden size, layers, vocabulary) are left out: replicas are small on purpose.
"""

from __future__ import annotations

import json

import pytest

from align.testing import FAMILIES, build_replica

TOKEN = "token:"  # an expected value naming the token a real id stands for

REAL = {
    # Qwen/Qwen3-30B-A3B config.json and generation_config.json
    "qwen3_moe": {
        "config.json": {
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe", "attention_bias": False,
            "attention_dropout": 0.0, "bos_token_id": TOKEN + "<|endoftext|>", "eos_token_id": TOKEN + "<|im_end|>",
            "decoder_sparse_step": 1, "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False,
            "router_aux_loss_coef": 0.001, "rms_norm_eps": 1e-06, "sliding_window": None, "use_sliding_window": False,
            "tie_word_embeddings": False, "hidden_act": "silu", "dtype": "bfloat16",
            "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
        },
        "generation_config.json": {
            "bos_token_id": TOKEN + "<|endoftext|>", "pad_token_id": TOKEN + "<|endoftext|>", "do_sample": True,
            "eos_token_id": [TOKEN + "<|im_end|>", TOKEN + "<|endoftext|>"], "temperature": 0.6, "top_k": 20,
            "top_p": 0.95,
        },
        "tokenizer_config.json": {
            "tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": "<|im_end|>",
            "pad_token": "<|endoftext|>", "unk_token": None, "model_max_length": 131072,
            "clean_up_tokenization_spaces": False, "errors": "replace", "split_special_tokens": False,
        },
    },
    # deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B: config.json says bos = eos = 151643 (the tokenizer's EOS), while
    # the tokenizer's BOS is 151646; generation_config.json has bos 151646.
    "r1_distill": {
        "config.json": {
            "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "attention_dropout": 0.0,
            "bos_token_id": TOKEN + "<｜end▁of▁sentence｜>", "eos_token_id": TOKEN + "<｜end▁of▁sentence｜>",
            "rms_norm_eps": 1e-06, "sliding_window": None, "use_sliding_window": False, "tie_word_embeddings": False,
            "max_window_layers": 21, "hidden_act": "silu", "dtype": "bfloat16",
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        },
        "generation_config.json": {
            "_from_model_config": True, "bos_token_id": TOKEN + "<｜begin▁of▁sentence｜>",
            "eos_token_id": TOKEN + "<｜end▁of▁sentence｜>", "do_sample": True, "temperature": 0.6, "top_p": 0.95,
        },
        "tokenizer_config.json": {
            "tokenizer_class": "LlamaTokenizerFast", "add_bos_token": True, "add_eos_token": False,
            "bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>",
            "pad_token": "<｜end▁of▁sentence｜>", "unk_token": None, "legacy": True, "model_max_length": 16384,
            "clean_up_tokenization_spaces": False,
        },
    },
    # EleutherAI/pythia-160m (GPT-NeoX): rotary_pct 0.25, parallel residual, untied, fp16, no template
    "pythia": {
        "config.json": {
            "architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "bos_token_id": TOKEN + "<|endoftext|>",
            "eos_token_id": TOKEN + "<|endoftext|>", "hidden_act": "gelu", "layer_norm_eps": 1e-05,
            "use_parallel_residual": True, "tie_word_embeddings": False, "dtype": "float16",
            "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default", "partial_rotary_factor": 0.25},
        },
        "tokenizer_config.json": {
            "tokenizer_class": "GPTNeoXTokenizer", "add_prefix_space": False, "bos_token": "<|endoftext|>",
            "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
        },
    },
    # ibm-granite/granite-3.0-2b-instruct: muP multipliers, logits_scaling, one token for bos/eos/pad/unk
    "granite3": {
        "config.json": {
            "architectures": ["GraniteForCausalLM"], "model_type": "granite", "attention_bias": False,
            "attention_multiplier": 0.015625, "embedding_multiplier": 12.0, "residual_multiplier": 0.22,
            "logits_scaling": 8.0, "tie_word_embeddings": True, "rms_norm_eps": 1e-05, "mlp_bias": False,
            "bos_token_id": TOKEN + "<|end_of_text|>", "eos_token_id": TOKEN + "<|end_of_text|>",
            "pad_token_id": TOKEN + "<|end_of_text|>", "dtype": "bfloat16",
        },
        "generation_config.json": {
            "bos_token_id": TOKEN + "<|end_of_text|>", "eos_token_id": TOKEN + "<|end_of_text|>",
            "pad_token_id": TOKEN + "<|end_of_text|>",
        },
        "tokenizer_config.json": {
            "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|end_of_text|>", "eos_token": "<|end_of_text|>",
            "pad_token": "<|end_of_text|>", "unk_token": "<|end_of_text|>", "padding_side": "left",
        },
    },
}


@pytest.fixture(scope="module")
def replicas(tmp_path_factory):
    root = tmp_path_factory.mktemp("sources")
    return {name: build_replica(name, root / name) for name in REAL}


def _expected(value, tokenizer):
    if isinstance(value, str) and value.startswith(TOKEN):
        return tokenizer.convert_tokens_to_ids(value[len(TOKEN):])
    if isinstance(value, list):
        return [_expected(v, tokenizer) for v in value]
    return value


@pytest.mark.parametrize("name,filename", [(n, f) for n, files in REAL.items() for f in files])
def test_replica_ships_what_the_real_repository_ships(name, filename, replicas):
    from transformers import AutoTokenizer

    path = replicas[name]
    shipped = json.loads((path / filename).read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    wrong = {key: (shipped.get(key, "<missing>"), _expected(value, tokenizer))
             for key, value in REAL[name][filename].items() if shipped.get(key, "<missing>") != _expected(value, tokenizer)}
    assert not wrong, f"{name} {filename}: replica vs real {wrong}"


def test_every_real_repository_is_a_family():
    assert set(REAL) <= set(FAMILIES)
