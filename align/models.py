"""Model presets, building from scratch, and loading stage outputs for further training.

A stage folder holds either a full model (``config.json`` + weights) or a PEFT adapter
(``adapter_config.json``) on top of a base model; ``load_causal_lm`` and ``load_tokenizer``
accept both, so a later stage never needs to know how an earlier one was trained.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from align.errors import AlignError

# Llama-style decoder-only sizes (RMSNorm, SwiGLU, RoPE, grouped-query attention).
PRESETS: dict[str, dict] = {
    "llama-micro": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "llama-tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "llama-small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
    "llama-base": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    "llama-medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8),
}


def llama_config(model_spec: dict, tokenizer, *, field: str = "model") -> LlamaConfig:
    """Build a LlamaConfig from ``{preset: name, **overrides}`` or an explicit config dict."""
    spec = dict(model_spec or {})
    preset = spec.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise AlignError(f"{field}.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)} "
                         f"or give the LlamaConfig fields (hidden_size, num_hidden_layers, ...) directly.")
    fields = {**(PRESETS[preset] if preset else {}), **spec}
    fields.setdefault("max_position_embeddings", 1024)
    fields.setdefault("tie_word_embeddings", True)
    fields.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    try:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **fields,
        )
    except (TypeError, ValueError) as e:
        raise AlignError(f"{field}: cannot build a Llama config from {spec!r}: {e}") from None
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        raise AlignError(f"{field}: hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
                         f"({config.num_attention_heads}), which must be divisible by num_key_value_heads "
                         f"({config.num_key_value_heads}).")
    return config


def build_model(model_spec: dict, tokenizer, *, seed: int = 0, field: str = "model") -> LlamaForCausalLM:
    """A randomly initialised Llama whose vocabulary and special tokens match ``tokenizer``."""
    config = llama_config(model_spec, tokenizer, field=field)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


def resolve_model_path(path: str | Path, *, field: str = "model", files=("config.json", "adapter_config.json")) -> str:
    """Accept a stage folder, a folder with a model/adapter, or a hub id (used as given)."""
    p = Path(path)
    if not p.exists():
        if str(path).startswith((".", "/")) or p.suffix:
            raise AlignError(f"{field}: {path} does not exist. Give a stage reference like ${{stages.sft}}, "
                             f"a local model folder, or a hub model id.")
        return str(path)  # hub id; transformers reports network problems itself
    for candidate in (p / "merged", p):
        if any((candidate / name).exists() for name in files):
            return str(candidate.resolve())
    raise AlignError(f"{field}: {path} holds no model (no {' or '.join(files)}). "
                     f"Has the stage that writes it finished?")


def load_tokenizer(path: str | Path, *, field: str = "model"):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path, field=field, files=("tokenizer_config.json",)))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_model_path(path: str | Path) -> str:
    """For an adapter folder, the base model it was trained on; else the folder itself."""
    path = resolve_model_path(path)
    if is_adapter(path):
        return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    return path


def load_causal_lm(path: str | Path, *, merge: bool = True, field: str = "model", **kwargs):
    """Load a model, merging a LoRA adapter into its base so the result is a plain model."""
    path = resolve_model_path(path, field=field)
    if is_adapter(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
        return model.merge_and_unload() if merge else model
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def training_dtype() -> torch.dtype:
    """bf16 only where the hardware has it: bf16 autocast on a CPU without AMX is 6-7x slower."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def load_sequence_classifier(path: str | Path, *, field: str = "model", num_labels: int = 1):
    """A scalar-head classifier (reward/value model) initialised from a causal LM or a classifier.

    A LoRA adapter is merged into its base first; the new score head starts random, the backbone
    keeps the language model's weights (InstructGPT initialises its reward model from the SFT model).
    """
    import tempfile

    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(path, field=field)
    tokenizer = load_tokenizer(path, field=field)
    if not is_adapter(path) and "ForSequenceClassification" in str(AutoConfig.from_pretrained(path).architectures):
        model = AutoModelForSequenceClassification.from_pretrained(path)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            load_causal_lm(path, field=field).save_pretrained(tmp)
            model = AutoModelForSequenceClassification.from_pretrained(tmp, num_labels=num_labels)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
