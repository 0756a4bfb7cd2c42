"""Offline replicas of Hub checkpoints: tiny random-init models that behave like the real ones.

Why this exists: align's stages must cope with what users really bring, not only with our own
micro Llama. Real checkpoints differ in ways that break pipelines: Llama 3 and Gemma 3 tokenizers
add a BOS that their chat templates add again; Qwen has no BOS at all and ships an embedding
matrix larger than its tokenizer; GPT-2 has neither a pad token nor a chat template; Phi-3 fuses
its projections, pads on the left and has role tokens that swallow the newline after them; OPT
ships fp16 weights and keeps dropout as a plain float; most ship bf16 and a
``generation_config.json`` that samples (temperature, top-p, top-k, repetition penalty) and stops
on end-of-turn ids as well as EOS. The Hub is not reachable in tests, so ``build_replica`` rebuilds
each family in about a second:

- a BPE trained with ``tokenizers`` on a small built-in English corpus, pre-tokenized the way the
  family's tokenizer is (byte-level with the Llama 3 or Qwen split regex, GPT-2 byte-level, or
  SentencePiece-style ``▁`` with byte fallback for Mistral/Phi-3/Gemma), the family's special
  tokens at the family's positions (start or end of the vocabulary, in the real order), wrapped
  in the tokenizer class the real checkpoint declares (so ``AutoTokenizer`` takes the same code
  path as for the real one, e.g. ``LlamaTokenizer`` → ``TokenizersBackend``), with the real
  bos/eos/pad/unk, BOS-adding behaviour, padding side and chat template (trl's copies under
  ``trl/chat_templates/`` where trl ships one, verbatim constants below otherwise);
- a 2-layer model of the family's real config class with the family's architectural quirks kept
  (GQA/MQA, head_dim ≠ hidden/heads, sliding windows, tied embeddings, biases, dropout), saved as
  ``model.safetensors`` in the dtype the real checkpoint ships, with its ``generation_config.json``.

    from align.testing import FAMILIES, build_replica
    path = build_replica("llama3", tmp_path / "llama3")   # AutoTokenizer / AutoModelForCausalLM load it

Adding a family: append a ``Family(...)`` to ``_FAMILIES`` below. Token ids are written as token
*strings* (``config_ids``, ``generation``) and resolved against the trained tokenizer, so ids stay
consistent however big the learned vocabulary is. ``head`` tokens take ids 0.. (before the learned
vocab), ``tail`` tokens are appended after it, as in the real vocabulary. Check the real
checkpoint's ``config.json``, ``generation_config.json``, ``tokenizer_config.json`` and
``tokenizer.json`` (added tokens, post-processor) and copy the conventions; then run
``tests/test_hub_replicas.py``, which covers every entry.
"""

from __future__ import annotations

import functools
import json
import math
import os
import random
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

VERY_LARGE_INTEGER = int(1e30)  # what transformers writes as model_max_length when a repo sets none

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# SmolLM2-135M-Instruct's chat template (tokenizer_config.json), verbatim.
SMOLLM2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

# Mistral-7B-Instruct-v0.3's chat template (the tool-calling revision), verbatim: the system message
# is folded into the LAST user turn, no space before [/INST], no generation prompt.
MISTRAL_V03_CHAT_TEMPLATE = """{%- if messages[0]["role"] == "system" %}
    {%- set system_message = messages[0]["content"] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}
{%- set user_messages = loop_messages | selectattr("role", "equalto", "user") | list %}

{#- This block checks for alternating user/assistant messages, skipping tool calling messages #}
{%- set ns = namespace() %}
{%- set ns.index = 0 %}
{%- for message in loop_messages %}
    {%- if not (message.role == "tool" or message.role == "tool_results" or (message.tool_calls is defined and message.tool_calls is not none)) %}
        {%- if (message["role"] == "user") != (ns.index % 2 == 0) %}
            {{- raise_exception("After the optional system message, conversation roles must alternate user/assistant/user/assistant/...") }}
        {%- endif %}
        {%- set ns.index = ns.index + 1 %}
    {%- endif %}
{%- endfor %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if message["role"] == "user" %}
        {%- if tools is not none and (message == user_messages[-1]) %}
            {{- "[AVAILABLE_TOOLS] [" }}
            {%- for tool in tools %}
                {%- set tool = tool.function %}
                {{- '{"type": "function", "function": {' }}
                {%- for key, val in tool.items() if key != "return" %}
                    {%- if val is string %}
                        {{- '"' + key + '": "' + val + '"' }}
                    {%- else %}
                        {{- '"' + key + '": ' + val|tojson }}
                    {%- endif %}
                    {%- if not loop.last %}
                        {{- ", " }}
                    {%- endif %}
                {%- endfor %}
                {{- "}}" }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- else %}
                    {{- "]" }}
                {%- endif %}
            {%- endfor %}
            {{- "[/AVAILABLE_TOOLS]" }}
            {%- endif %}
        {%- if loop.last and system_message is defined %}
            {{- "[INST] " + system_message + "\\n\\n" + message["content"] + "[/INST]" }}
        {%- else %}
            {{- "[INST] " + message["content"] + "[/INST]" }}
        {%- endif %}
    {%- elif message.tool_calls is defined and message.tool_calls is not none %}
        {{- "[TOOL_CALLS] [" }}
        {%- for tool_call in message.tool_calls %}
            {%- set out = tool_call.function|tojson %}
            {{- out[:-1] }}
            {%- if not tool_call.id is defined or tool_call.id|length != 9 %}
                {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
            {%- endif %}
            {{- ', "id": "' + tool_call.id + '"}' }}
            {%- if not loop.last %}
                {{- ", " }}
            {%- else %}
                {{- "]" + eos_token }}
            {%- endif %}
        {%- endfor %}
    {%- elif message["role"] == "assistant" %}
        {{- " " + message["content"]|trim + eos_token}}
    {%- elif message["role"] == "tool_results" or message["role"] == "tool" %}
        {%- if message.content is defined and message.content.content is defined %}
            {%- set content = message.content.content %}
        {%- else %}
            {%- set content = message.content %}
        {%- endif %}
        {{- '[TOOL_RESULTS] {"content": ' + content|string + ", " }}
        {%- if not message.tool_call_id is defined or message.tool_call_id|length != 9 %}
            {{- raise_exception("Tool call IDs should be alphanumeric strings with length 9!") }}
        {%- endif %}
        {{- '"call_id": "' + message.tool_call_id + '"}[/TOOL_RESULTS]' }}
    {%- else %}
        {{- raise_exception("Only user and assistant roles are supported, with the exception of an initial optional system message!") }}
    {%- endif %}
{%- endfor %}
"""


# granite-3.0-2b-instruct's chat template (tokenizer_config.json), verbatim: no BOS, role markers as added tokens,
# every turn closed by <|end_of_text|> (which is also its BOS, EOS, PAD and UNK).
GRANITE3_CHAT_TEMPLATE = """{%- if tools %}
    {{- '<|start_of_role|>available_tools<|end_of_role|>\n' }}
    {%- for tool in tools %}
    {{- tool | tojson(indent=4) }}
    {%- if not loop.last %}
        {{- '\n\n' }}
    {%- endif %}
    {%- endfor %}
    {{- '<|end_of_text|>\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'system' %}
    {{- '<|start_of_role|>system<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}
    {%- elif message['role'] == 'user' %}
    {{- '<|start_of_role|>user<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}
    {%- elif message['role'] == 'assistant' %}
    {{- '<|start_of_role|>assistant<|end_of_role|>'  + message['content'] + '<|end_of_text|>\n' }}
    {%- elif message['role'] == 'assistant_tool_call' %}
    {{- '<|start_of_role|>assistant<|end_of_role|><|tool_call|>' + message['content'] + '<|end_of_text|>\n' }}
    {%- elif message['role'] == 'tool_response' %}
    {{- '<|start_of_role|>tool_response<|end_of_role|>' + message['content'] + '<|end_of_text|>\n' }}
    {%- endif %}
    {%- if loop.last and add_generation_prompt %}
    {{- '<|start_of_role|>assistant<|end_of_role|>' }}
    {%- endif %}
{%- endfor %}"""

class Tok(NamedTuple):
    """A special (or added) token as the real tokenizer.json declares it."""

    content: str
    special: bool = True
    rstrip: bool = False


def _toks(*contents: str, special: bool = True, rstrip: bool = False) -> tuple[Tok, ...]:
    return tuple(Tok(c, special, rstrip) for c in contents)


@dataclass(frozen=True)
class Family:
    """How to rebuild one Hub checkpoint family. Token ids are given as token strings."""

    name: str
    hub_id: str                      # the checkpoint this mirrors
    config_class: str                # transformers config class
    arch: dict[str, Any]             # tiny sizes plus the real architectural quirks (no token ids)
    config_ids: dict[str, Any]       # bos/eos/pad_token_id of config.json, as token strings (or lists)
    style: str                       # pre-tokenization: gpt2 | llama3 | qwen | qwen_bos | spm | gemma
    tokenizer_class: str             # what the real tokenizer_config.json declares
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    add_bos: bool                    # does tokenizer("hi") start with BOS?
    dtype: str                       # dtype of the shipped weights
    generation: dict[str, Any]       # generation_config.json (token ids as strings)
    chat_template: str | None = None  # "trl:<name>" (file shipped by trl) or the template text
    head: tuple[Tok, ...] = ()       # tokens at ids 0.. before the learned vocabulary
    tail: tuple[Tok, ...] = ()       # added tokens after the learned vocabulary, in order
    bpe_size: int = 800              # size of the BPE model vocabulary (head + bytes + learned)
    vocab_multiple: int | None = None  # config.vocab_size rounded up past len(tokenizer) (padded embeddings)
    tokenizer_kwargs: dict[str, Any] = field(default_factory=dict)  # model_max_length, padding_side, ...
    tokenizer_config: dict[str, Any] = field(default_factory=dict)  # real tokenizer_config.json keys v5 drops

    @property
    def has_pad(self) -> bool:
        return self.pad is not None

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)

    def template_text(self) -> str | None:
        if self.chat_template is None or not self.chat_template.startswith("trl:"):
            return self.chat_template
        name = self.chat_template[4:]
        return resources.files("trl").joinpath("chat_templates", f"{name}.jinja").read_text(encoding="utf-8")

    def resolve(self, tokenizer, mapping: dict[str, Any]) -> dict[str, Any]:
        """Replace token strings in ``*_token_id`` entries by their ids in ``tokenizer``."""
        def one(value):
            if isinstance(value, str):
                token_id = tokenizer.convert_tokens_to_ids(value)
                if token_id is None or (tokenizer.unk_token_id is not None and token_id == tokenizer.unk_token_id
                                        and value != tokenizer.unk_token):
                    raise KeyError(f"{self.name}: token {value!r} is not in the replica's vocabulary")
                return token_id
            if isinstance(value, (list, tuple)):
                return [one(v) for v in value]
            return value

        return {k: one(v) if k.endswith("_token_id") else v for k, v in mapping.items()}


# --- the families ---------------------------------------------------------------------------------

_SMALL = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "max_position_embeddings": 512}
_BYTES = tuple(f"<0x{b:02X}>" for b in range(256))

QWEN25_TAIL = (
    _toks("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
          "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
          "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
    + _toks("<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>",
            "<|repo_name|>", "<|file_sep|>", special=False)
)
QWEN_ADDITIONAL = ["<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>", "<|box_start|>",
                   "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
                   "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]


# What Qwen3 and Qwen3-MoE checkpoints ship alike: tokenizer, special tokens, template, generation config.
QWEN3_SHIPPED = dict(
    config_ids={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"},
    style="qwen", tokenizer_class="Qwen2Tokenizer",
    bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False, dtype="bfloat16",
    generation={"bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "do_sample": True,
                "eos_token_id": ["<|im_end|>", "<|endoftext|>"], "temperature": 0.6, "top_p": 0.95, "top_k": 20},
    chat_template="trl:qwen3", vocab_multiple=128,
    tail=QWEN25_TAIL + _toks("<tool_response>", "</tool_response>", "<think>", "</think>", special=False),
    tokenizer_kwargs={"model_max_length": 131072, "clean_up_tokenization_spaces": False, "errors": "replace",
                      "split_special_tokens": False, "additional_special_tokens": QWEN_ADDITIONAL},
)


_FAMILIES = [
    Family(
        name="llama3", hub_id="meta-llama/Llama-3.2-1B-Instruct", config_class="LlamaConfig",
        arch={**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
              "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                  "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                  # 8192 of 131072 in the real one; must stay below max_position_embeddings
                                  "original_max_position_embeddings": 128}},
        config_ids={"bos_token_id": "<|begin_of_text|>",
                    "eos_token_id": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
        style="llama3", tokenizer_class="PreTrainedTokenizerFast",
        bos="<|begin_of_text|>", eos="<|eot_id|>", pad=None, unk=None, add_bos=True, dtype="bfloat16",
        generation={"bos_token_id": "<|begin_of_text|>", "do_sample": True, "temperature": 0.6, "top_p": 0.9,
                    "eos_token_id": ["<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"]},
        chat_template="trl:llama3_2",
        tail=_toks("<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>",
                   "<|reserved_special_token_1|>", "<|finetune_right_pad_id|>", "<|reserved_special_token_2|>",
                   "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>", "<|eot_id|>", "<|python_tag|>"),
        tokenizer_kwargs={"model_max_length": 131072, "clean_up_tokenization_spaces": True},
    ),
    Family(
        name="qwen2_5", hub_id="Qwen/Qwen2.5-0.5B-Instruct", config_class="Qwen2Config",
        arch={**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-6,
              "use_sliding_window": False, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        config_ids={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"},
        style="qwen", tokenizer_class="Qwen2Tokenizer",
        bos=None, eos="<|im_end|>", pad="<|endoftext|>", unk=None, add_bos=False, dtype="bfloat16",
        # Qwen2.5-0.5B/1.5B/3B-Instruct ship repetition_penalty 1.1; the 7B and larger ship 1.05.
        generation={"bos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>", "do_sample": True,
                    "eos_token_id": ["<|im_end|>", "<|endoftext|>"], "repetition_penalty": 1.1,
                    "temperature": 0.7, "top_p": 0.8, "top_k": 20},
        chat_template="trl:qwen2_5", tail=QWEN25_TAIL, vocab_multiple=128,
        tokenizer_kwargs={"model_max_length": 131072, "clean_up_tokenization_spaces": False,
                          "errors": "replace", "split_special_tokens": False,
                          "additional_special_tokens": QWEN_ADDITIONAL},
    ),
    Family(
        name="qwen3", hub_id="Qwen/Qwen3-0.6B", config_class="Qwen3Config",
        # head_dim 32 != hidden/heads (the real 0.6B: hidden 1024, 16 heads, head_dim 128)
        arch={**_SMALL, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": True,
              "rms_norm_eps": 1e-6, "attention_bias": False, "use_sliding_window": False,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        **QWEN3_SHIPPED,
    ),
    Family(
        name="gemma3", hub_id="google/gemma-3-270m-it", config_class="Gemma3TextConfig",
        # MQA (1 KV head), head_dim != hidden/heads, query_pre_attn_scalar = head_dim, sliding + full layers
        arch={**_SMALL, "num_key_value_heads": 1, "head_dim": 32, "query_pre_attn_scalar": 32,
              "sliding_window": 64, "layer_types": ["sliding_attention", "full_attention"],
              "tie_word_embeddings": True, "rms_norm_eps": 1e-6, "hidden_activation": "gelu_pytorch_tanh"},
        config_ids={"bos_token_id": "<bos>", "eos_token_id": ["<eos>", "<end_of_turn>"], "pad_token_id": "<pad>"},
        style="gemma", tokenizer_class="GemmaTokenizer",
        bos="<bos>", eos="<eos>", pad="<pad>", unk="<unk>", add_bos=True, dtype="bfloat16",
        generation={"cache_implementation": "hybrid", "do_sample": True, "top_k": 64, "top_p": 0.95,
                    "bos_token_id": "<bos>", "eos_token_id": ["<eos>", "<end_of_turn>"], "pad_token_id": "<pad>"},
        chat_template="trl:gemma3",
        # real ids: <pad> 0, <eos> 1, <bos> 2, <unk> 3, <mask> 4, [@BOS@] 5, <unused0..98> 6-104,
        # <start_of_turn> 105, <end_of_turn> 106
        head=(_toks("<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "[@BOS@]")
              + _toks(*(f"<unused{i}>" for i in range(99))) + _toks("<start_of_turn>", "<end_of_turn>")),
        bpe_size=1000,
        tokenizer_kwargs={"model_max_length": VERY_LARGE_INTEGER, "clean_up_tokenization_spaces": False,
                          "mask_token": "<mask>", "spaces_between_special_tokens": False},
        tokenizer_config={"add_bos_token": True, "add_eos_token": False},
    ),
    Family(
        name="mistral", hub_id="mistralai/Mistral-7B-Instruct-v0.3", config_class="MistralConfig",
        arch={**_SMALL, "num_key_value_heads": 2, "head_dim": 16, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-5, "sliding_window": None,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        config_ids={"bos_token_id": "<s>", "eos_token_id": "</s>"},
        style="spm", tokenizer_class="LlamaTokenizer",
        bos="<s>", eos="</s>", pad=None, unk="<unk>", add_bos=True, dtype="bfloat16",
        generation={"_from_model_config": True, "bos_token_id": "<s>", "eos_token_id": "</s>"},
        chat_template=MISTRAL_V03_CHAT_TEMPLATE,
        head=_toks("<unk>", "<s>", "</s>", "[INST]", "[/INST]", "[TOOL_CALLS]", "[AVAILABLE_TOOLS]",
                   "[/AVAILABLE_TOOLS]", "[TOOL_RESULTS]", "[/TOOL_RESULTS]"),
        bpe_size=900,
        tokenizer_kwargs={"model_max_length": VERY_LARGE_INTEGER, "clean_up_tokenization_spaces": False,
                          "legacy": False, "spaces_between_special_tokens": False,
                          "use_default_system_prompt": False},
        tokenizer_config={"add_bos_token": True, "add_eos_token": False, "legacy": False},
    ),
    Family(
        name="phi3", hub_id="microsoft/Phi-3-mini-4k-instruct", config_class="Phi3Config",
        # fused qkv_proj / gate_up_proj, no GQA, sliding window (2047 of 4096 in the real one)
        arch={**_SMALL, "num_key_value_heads": 4, "tie_word_embeddings": False, "rms_norm_eps": 1e-5,
              "sliding_window": 255, "original_max_position_embeddings": 512, "resid_pdrop": 0.0,
              "embd_pdrop": 0.0, "attention_dropout": 0.0,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        config_ids={"bos_token_id": "<s>", "eos_token_id": "<|endoftext|>", "pad_token_id": "<|endoftext|>"},
        style="spm", tokenizer_class="LlamaTokenizer",
        bos="<s>", eos="<|endoftext|>", pad="<|endoftext|>", unk="<unk>", add_bos=False, dtype="bfloat16",
        generation={"_from_model_config": True, "bos_token_id": "<s>",
                    "eos_token_id": ["<|endoftext|>", "<|assistant|>", "<|end|>"], "pad_token_id": "<|endoftext|>"},
        chat_template="trl:phi3",
        head=(Tok("<unk>"), Tok("<s>"), Tok("</s>", special=False, rstrip=True)),
        # the role/end tokens rstrip: "<|user|>\nhi" tokenizes without the newline, as in the real one
        tail=(Tok("<|endoftext|>"), Tok("<|assistant|>", rstrip=True))
        + _toks(*(f"<|placeholder{i}|>" for i in range(1, 5)), rstrip=True)
        + _toks("<|system|>", "<|end|>", "<|placeholder5|>", "<|placeholder6|>", "<|user|>", rstrip=True),
        bpe_size=900, vocab_multiple=64,
        tokenizer_kwargs={"model_max_length": 4096, "padding_side": "left", "clean_up_tokenization_spaces": False,
                          "legacy": False, "use_default_system_prompt": False},
        tokenizer_config={"add_bos_token": False, "add_eos_token": False, "legacy": False},
    ),
    Family(
        name="smollm2", hub_id="HuggingFaceTB/SmolLM2-135M-Instruct", config_class="LlamaConfig",
        arch={**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
              "rope_parameters": {"rope_type": "default", "rope_theta": 100000.0}},
        config_ids={"bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>", "pad_token_id": "<|im_end|>"},
        style="gpt2", tokenizer_class="GPT2Tokenizer",
        bos="<|im_start|>", eos="<|im_end|>", pad="<|im_end|>", unk="<|endoftext|>", add_bos=False,
        dtype="bfloat16",
        generation={"_from_model_config": True, "bos_token_id": "<|im_start|>", "eos_token_id": "<|im_end|>",
                    "pad_token_id": "<|im_end|>"},
        chat_template=SMOLLM2_CHAT_TEMPLATE,
        head=_toks("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>", "<file_sep>",
                   "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>",
                   "<jupyter_start>", "<jupyter_text>", "<jupyter_code>", "<jupyter_output>",
                   "<jupyter_script>", "<empty_output>"),
        tokenizer_kwargs={"model_max_length": 8192, "clean_up_tokenization_spaces": False,
                          "additional_special_tokens": ["<|im_start|>", "<|im_end|>"]},
    ),
    Family(
        name="gpt2", hub_id="openai-community/gpt2", config_class="GPT2Config",
        arch={"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 512, "activation_function": "gelu_new",
              "resid_pdrop": 0.1, "embd_pdrop": 0.1, "attn_pdrop": 0.1, "layer_norm_epsilon": 1e-5,
              "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}},
        config_ids={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        style="gpt2", tokenizer_class="GPT2Tokenizer",
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", add_bos=False, dtype="float32",
        generation={"_from_model_config": True, "bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        tail=_toks("<|endoftext|>"),
        # the real model_max_length equals n_positions (1024); the replica has 512 positions
        tokenizer_kwargs={"model_max_length": 512},
    ),
    Family(
        name="opt", hub_id="facebook/opt-125m", config_class="OPTConfig",
        arch={"hidden_size": 64, "ffn_dim": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 512, "word_embed_proj_dim": 64, "dropout": 0.1,
              "attention_dropout": 0.0, "activation_dropout": 0.0, "activation_function": "relu",
              "do_layer_norm_before": True, "enable_bias": True, "layer_norm_elementwise_affine": True,
              "layerdrop": 0.0, "init_std": 0.02, "prefix": "</s>"},
        config_ids={"bos_token_id": "</s>", "eos_token_id": "</s>", "pad_token_id": "<pad>"},
        style="gpt2", tokenizer_class="GPT2Tokenizer",
        bos="</s>", eos="</s>", pad="<pad>", unk="</s>", add_bos=True, dtype="float16",
        generation={"_from_model_config": True, "bos_token_id": "</s>", "eos_token_id": "</s>",
                    "pad_token_id": "<pad>"},
        head=_toks("<s>", "<pad>", "</s>", "<unk>"), vocab_multiple=32,
        # no model_max_length in the real repo, although positions stop at 2048
        tokenizer_kwargs={"model_max_length": VERY_LARGE_INTEGER, "errors": "replace"},
        tokenizer_config={"add_bos_token": True},
    ),
    Family(
        name="granite3", hub_id="ibm-granite/granite-3.0-2b-instruct", config_class="GraniteConfig",
        # muP multipliers and logits_scaling; transformers has no GraniteForSequenceClassification
        arch={**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": True, "rms_norm_eps": 1e-5,
              "embedding_multiplier": 12.0, "attention_multiplier": 0.015625, "residual_multiplier": 0.22,
              "logits_scaling": 8.0, "attention_dropout": 0.1, "attention_bias": False, "mlp_bias": False,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        config_ids={"bos_token_id": "<|end_of_text|>", "eos_token_id": "<|end_of_text|>",
                    "pad_token_id": "<|end_of_text|>"},
        style="gpt2", tokenizer_class="GPT2Tokenizer",
        bos="<|end_of_text|>", eos="<|end_of_text|>", pad="<|end_of_text|>", unk="<|end_of_text|>", add_bos=False,
        dtype="bfloat16",
        generation={"_from_model_config": True, "bos_token_id": "<|end_of_text|>", "eos_token_id": "<|end_of_text|>",
                    "pad_token_id": "<|end_of_text|>"},
        chat_template=GRANITE3_CHAT_TEMPLATE,
        head=_toks("<|end_of_text|>", "<fim_prefix>", "<fim_middle>", "<fim_suffix>", "<fim_pad>", "<filename>",
                   "<gh_stars>", "<issue_start>", "<issue_comment>", "<issue_closed>", "<jupyter_start>",
                   "<jupyter_text>", "<jupyter_code>", "<jupyter_output>", "<empty_output>", "<commit_before>",
                   "<commit_msg>", "<commit_after>", "<reponame>"),
        tail=_toks("<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"),
        tokenizer_kwargs={"model_max_length": 9223372036854775807, "padding_side": "left",
                          "clean_up_tokenization_spaces": True,
                          "additional_special_tokens": ["<|start_of_role|>", "<|end_of_role|>", "<|tool_call|>"]},
    ),
    Family(
        name="qwen3_moe", hub_id="Qwen/Qwen3-30B-A3B", config_class="Qwen3MoeConfig",
        # sparse MoE on every layer (128 experts, 8 active in the real one), router aux loss 0.001, untied head
        arch={**_SMALL, "num_key_value_heads": 2, "head_dim": 32, "tie_word_embeddings": False,
              "rms_norm_eps": 1e-6, "attention_bias": False, "use_sliding_window": False,
              "num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "decoder_sparse_step": 1,
              "mlp_only_layers": [], "norm_topk_prob": True, "output_router_logits": False,
              "router_aux_loss_coef": 0.001,
              "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
        **QWEN3_SHIPPED,
    ),
    Family(
        name="r1_distill", hub_id="deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B", config_class="Qwen2Config",
        # Qwen2 weights, DeepSeek's tokenizer: Qwen's split regex, a BOS added by the post-processor and written again
        # by the template, a template that drops <think>...</think> from replies and opens <think> to sample
        arch={**_SMALL, "num_key_value_heads": 2, "tie_word_embeddings": False, "rms_norm_eps": 1e-6,
              "use_sliding_window": False, "sliding_window": None, "max_window_layers": 21,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0}},
        # config.json names the tokenizer's EOS (151643) as bos_token_id too; generation_config.json has the real BOS
        config_ids={"bos_token_id": "<｜end▁of▁sentence｜>", "eos_token_id": "<｜end▁of▁sentence｜>"},
        style="qwen_bos", tokenizer_class="LlamaTokenizerFast",
        bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", pad="<｜end▁of▁sentence｜>", unk=None, add_bos=True,
        dtype="bfloat16",
        generation={"_from_model_config": True, "bos_token_id": "<｜begin▁of▁sentence｜>",
                    "eos_token_id": "<｜end▁of▁sentence｜>", "do_sample": True, "temperature": 0.6, "top_p": 0.95},
        chat_template="trl:deepseek_r1_distill", vocab_multiple=128,
        tail=(_toks("<｜end▁of▁sentence｜>") + _toks("<｜User｜>", "<｜Assistant｜>", special=False)
              + _toks("<｜begin▁of▁sentence｜>") + _toks("<|EOT|>", "<think>", "</think>", special=False)),
        tokenizer_kwargs={"model_max_length": 16384, "clean_up_tokenization_spaces": False, "legacy": True},
        tokenizer_config={"add_bos_token": True, "add_eos_token": False, "legacy": True},
    ),
    Family(
        name="pythia", hub_id="EleutherAI/pythia-160m", config_class="GPTNeoXConfig",
        # parallel residual, rotary on a quarter of each head, untied head, fp16 weights, no chat template, no pad
        arch={"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4,
              "max_position_embeddings": 512, "use_parallel_residual": True, "hidden_act": "gelu",
              "attention_dropout": 0.0, "hidden_dropout": 0.0, "layer_norm_eps": 1e-5, "tie_word_embeddings": False,
              "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25}},
        config_ids={"bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        style="gpt2", tokenizer_class="GPTNeoXTokenizer",
        bos="<|endoftext|>", eos="<|endoftext|>", pad=None, unk="<|endoftext|>", add_bos=False, dtype="float16",
        generation={"_from_model_config": True, "bos_token_id": "<|endoftext|>", "eos_token_id": "<|endoftext|>"},
        head=_toks("<|endoftext|>", "<|padding|>"), vocab_multiple=128,
        tokenizer_kwargs={"model_max_length": VERY_LARGE_INTEGER},
    ),
]


FAMILIES: dict[str, Family] = {f.name: f for f in _FAMILIES}


# --- corpus and tokenizer ---------------------------------------------------------------------

_CHAT_LINES = [
    "Hi! How can I help you today?", "hi", "Hi there.", "Hello, who are you?", "You are a helpful assistant.",
    "Write a short review of the kettle.", "Sure, here is a short review.", "Thank you, that was helpful.",
    "system\nYou are a helpful assistant.\n", "user\nhi\n", "assistant\nHello! How can I help?\n",
    "model\nHello!\n", "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n",
    "The answer is 42, or 3.14 if you prefer pi.", "Let me think step by step.\n\nWhat is 2 + 2? It is 4.",
]


@functools.lru_cache(maxsize=1)
def corpus() -> tuple[str, ...]:
    """A few hundred English documents (reviews and prose from the builtin task) plus chat phrases."""
    from align.data.builtin import document

    rng = random.Random(1234)
    return tuple([document(rng, False) for _ in range(300)] + _CHAT_LINES * 20)


def _train_bpe(family: Family) -> tuple[dict[str, int], list[tuple[str, str]]]:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers

    byte_fallback = family.style in ("spm", "gemma")
    tok = Tokenizer(models.BPE(unk_token=family.unk if byte_fallback else None, byte_fallback=byte_fallback,
                               fuse_unk=byte_fallback))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    if family.style == "gpt2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    elif family.style == "llama3":
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_SPLIT), "isolated"), byte_level])
    elif family.style in ("qwen", "qwen_bos"):
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

        tok.normalizer = normalizers.NFC()
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), "isolated"),
                                                     byte_level])
    elif family.style == "spm":
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    elif family.style == "gemma":  # no dummy prefix; merges stay inside words
        tok.normalizer = normalizers.Replace(" ", "▁")
        tok.pre_tokenizer = pre_tokenizers.Split("▁", "merged_with_next")
    else:
        raise ValueError(f"{family.name}: unknown tokenizer style {family.style!r}")
    specials = [t.content for t in family.head] + (list(_BYTES) if byte_fallback else [])
    trainer = trainers.BpeTrainer(
        vocab_size=family.bpe_size, min_frequency=2, special_tokens=specials, show_progress=False,
        initial_alphabet=[] if byte_fallback else pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus(), trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def _added(tok: Tok):
    from tokenizers import AddedToken

    return AddedToken(tok.content, special=tok.special, rstrip=tok.rstrip, lstrip=False, normalized=False,
                      single_word=False)


def build_tokenizer(family: Family | str):
    """The family's tokenizer (not saved): trained BPE, real class, special tokens, chat template."""
    import transformers

    family = FAMILIES[family] if isinstance(family, str) else family
    vocab, merges = _train_bpe(family)
    n = len(vocab)
    named = {k: v for k, v in (("bos_token", family.bos), ("eos_token", family.eos), ("pad_token", family.pad),
                                ("unk_token", family.unk))}
    common = dict(chat_template=family.template_text(), **family.tokenizer_kwargs)
    if family.style in ("llama3", "qwen_bos"):
        tokenizer = _llama3_tokenizer(family, vocab, merges, named, common)
    else:
        cls = {"gpt2": transformers.GPT2Tokenizer, "qwen": transformers.Qwen2Tokenizer,
               "spm": transformers.LlamaTokenizer, "gemma": transformers.GemmaTokenizer}[family.style]
        decoder = {vocab[t.content]: _added(t) for t in family.head}
        decoder.update({n + i: _added(t) for i, t in enumerate(family.tail)})
        tokenizer = cls(vocab=vocab, merges=merges, added_tokens_decoder=decoder, add_bos_token=family.add_bos,
                        **named, **common)
    _check_layout(family, tokenizer, n)
    return tokenizer


def _llama3_tokenizer(family, vocab, merges, named, common):
    """Byte-level BPE whose post-processor adds the BOS (Llama 3; DeepSeek's Qwen-based distills, with Qwen's regex)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=family.style == "llama3"))
    split = LLAMA3_SPLIT
    if family.style == "qwen_bos":
        from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as split

        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False)])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([_added(t) for t in family.tail])
    bos, bos_id = family.bos, tok.token_to_id(family.bos)
    # as in the real tokenizer.json: the post-processor, not tokenizer_config, adds <|begin_of_text|>
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
                                      special_tokens=[(bos, bos_id)])])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **named, **common)


def _check_layout(family: Family, tokenizer, n: int) -> None:
    for i, t in enumerate(family.head):
        assert tokenizer.convert_tokens_to_ids(t.content) == i, (family.name, t.content)
    for i, t in enumerate(family.tail):
        assert tokenizer.convert_tokens_to_ids(t.content) == n + i, (family.name, t.content)


# --- model ----------------------------------------------------------------------------------

def _config_vocab_size(family: Family, n_tokens: int) -> int:
    if family.vocab_multiple is None:
        return n_tokens
    m = family.vocab_multiple
    return math.ceil((n_tokens + 1) / m) * m


def build_replica(family: str, path, *, seed: int = 0) -> Path:
    """Write a loadable replica of ``family`` (a key of FAMILIES) to ``path`` and return the path."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, GenerationConfig

    if family not in FAMILIES:
        raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")
    fam = FAMILIES[family]
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(fam)
    tokenizer.save_pretrained(path)
    _patch_tokenizer_config(path, fam)

    config_cls = getattr(transformers, fam.config_class)
    config = config_cls(**fam.arch, vocab_size=_config_vocab_size(fam, len(tokenizer)),
                        **fam.resolve(tokenizer, fam.config_ids))
    with _seeded(seed):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.to(fam.torch_dtype)
    model.config.dtype = fam.torch_dtype
    model.generation_config = GenerationConfig(**fam.resolve(tokenizer, fam.generation))
    model.save_pretrained(path)
    return path


def _patch_tokenizer_config(path: Path, family: Family) -> None:
    """Declare the real tokenizer class and put back the real keys that v5's save_pretrained leaves out."""
    config_file = path / "tokenizer_config.json"
    data = json.loads(config_file.read_text(encoding="utf-8"))
    if data.get("chat_template", "") is None:
        del data["chat_template"]
    data.update(family.tokenizer_config, tokenizer_class=family.tokenizer_class)
    data = dict(sorted(data.items()))
    config_file.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


class _seeded:
    """Seed torch for the model init and restore the global RNG afterwards."""

    def __init__(self, seed: int):
        self.seed = seed

    def __enter__(self):
        import torch

        self.state = torch.random.get_rng_state()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc):
        import torch

        torch.random.set_rng_state(self.state)
        return False


__all__ = ["FAMILIES", "Family", "Tok", "build_replica", "build_tokenizer", "corpus"]


def length_judge(prompts: list, responses: list[str]) -> list[float]:
    """A judge for random-init replicas, whose text no real judge can tell apart: longer is better, so
    preference pairs, rewards and win rates exist and differ."""
    return [float(len(response.split())) for response in responses]


def ultrafeedback_rows(n: int) -> list[dict]:
    """Preference rows in trl-lib/ultrafeedback_binarized's shape (a string prompt, chosen/rejected as whole
    conversations, scores) made from the builtin reviews: a row's own review beats the next row's."""
    from align.data import load_dataset

    rows = load_dataset({"builtin": "reviews", "split": "sft", "limit": n + 1}, name="chat")
    out = []
    for i in range(n):
        user = rows[i]["messages"][0]
        out.append({"prompt": user["content"], "score_chosen": 8.0, "score_rejected": 3.0,
                    "chosen": [user, rows[i]["messages"][1]],
                    "rejected": [user, {"role": "assistant", "content": rows[i + 1]["messages"][1]["content"]}]})
    return out


def cpu_ranks_env(**extra: str) -> dict[str, str]:
    """The environment for launching CPU (gloo) ranks in a subprocess, also on a machine with a GPU.

    With CUDA visible, accelerate's ``wait_for_everyone`` passes ``device_ids=[local rank]`` to the gloo barrier
    and torch places it on ``cuda:<rank>``: on a one-GPU machine rank 1 dies there (seen on an H200). Hiding the
    GPUs makes the ranks what they claim to be."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", **extra}
