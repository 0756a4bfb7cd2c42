"""``align export RUN/STAGE OUT``: one plain model folder to ship, and ``--push-to-hub`` through huggingface_hub.

The folder holds safetensors weights (the LoRA adapter merged into its full-precision base with ``merge``, else the
adapter itself, naming its base by Hub id), the tokenizer with the chat template the run trained and sampled with,
a ``generation_config.json`` with the decoding the run evaluated with (its stop tokens included), and the model card
(``align.model_cards``) with the lineage and the evaluation numbers.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from align.errors import AlignError

log = logging.getLogger("align")
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json")
DTYPES = {"bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16", "fp32": "float32",
          "float32": "float32"}


def export_dtype(value, field: str = "--dtype") -> str:
    if value is None:
        return "float32"
    if value not in DTYPES:
        raise AlignError(f"{field}: expected one of {', '.join(DTYPES)}, got {value!r}.")
    return DTYPES[value]


def run_decoding(stage_dir: Path) -> dict | None:
    """The decoding the run's evaluate stage used for this model (None when it was not evaluated)."""
    from align.model_cards import evaluations

    found = evaluations(stage_dir)
    return found[0]["decoding"] if found else None


def generation_config(model, tokenizer, decoding: dict | None):
    """The decoding the run used, built as align samples (``decoding_config``: neutral except what was declared), with
    the stop ids (EOS and end-of-turn) and BOS; without an evaluation: temperature 1, no truncation."""
    from align.eval.generation import decoding_config, stop_ids

    d = decoding or {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = decoding_config(max_new_tokens=int(d.get("max_new_tokens", 256)), stop_ids=stop_ids(model, tokenizer),
                             pad_id=pad, greedy=bool(d.get("greedy", False)), temperature=float(d.get("temperature", 1.0)),
                             top_p=float(d.get("top_p", 1.0)), top_k=int(d.get("top_k", 0)))
    config.bos_token_id = model.generation_config.bos_token_id
    return config


def stage_info(stage_dir: Path, folder: Path) -> dict:
    """The stage's lineage (written by the runner), or a minimal one for a folder align did not write."""
    from align.model_cards import LINEAGE, read_json

    info = read_json(stage_dir / LINEAGE)
    if info.get("chain"):
        return info
    from align.models import is_adapter

    adapter = is_adapter(folder)
    return {"recipe": stage_dir.parent.name, "stage": stage_dir.name, "kind": "model", "seed": "?",
            "stage_dir": str(stage_dir.resolve()), "adapter": adapter, "chain": [
                {"stage": stage_dir.name, "kind": "model", "inputs": {}, "datasets": [], "judges": [], "args": {},
                 "lora": None, "tags": [], "hub_base": None}],
            "adapter_base": read_json(folder / "adapter_config.json").get("base_model_name_or_path"),
            "classifier": "ForSequenceClassification" in str(read_json(folder / "config.json").get("architectures"))}


def export_stage(stage_dir, out, *, merge: bool = False, dtype=None, push_to_hub: str | None = None,
                 base_model: str | None = None, private: bool | None = None, token: str | None = None,
                 model_kwargs: dict | None = None) -> dict:
    """Write the stage's model to ``out`` (see the module docstring); returns what was written (and pushed).
    ``model_kwargs``: how to load it (``trust_remote_code`` for a model that ships its own code)."""
    from align.model_cards import LINEAGE, hub_id_of, render
    from align.models import is_adapter, model_folder

    stage_dir, out = Path(stage_dir), Path(out)
    if not stage_dir.is_dir():
        raise AlignError(f"export: {stage_dir} is not a folder; give a stage folder such as runs/quickstart/ppo.")
    folder = model_folder(stage_dir)
    if folder is None:
        raise AlignError(f"export: {stage_dir} holds no model (no config.json or adapter_config.json, nor merged/). "
                         f"Has the stage finished?")
    if out.resolve() == stage_dir.resolve() or stage_dir.resolve() in out.resolve().parents:
        raise AlignError(f"export: {out} is inside the stage folder; choose a folder outside it.")
    info = stage_info(stage_dir, folder)
    adapter = is_adapter(folder)
    dtype = export_dtype(dtype)
    out.mkdir(parents=True, exist_ok=True)
    decoding = run_decoding(stage_dir)
    if adapter and not merge:
        base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"]
        hub_base = base_model or hub_id_of(base)
        if hub_base is None:
            raise AlignError(f"export: {stage_dir} is a LoRA adapter on {base}, a local folder (an earlier stage's "
                             f"model), so a pushed adapter could not find its base. Export it with --merge (one plain "
                             f"model), or give --base-model HUB_ID where that base is published.")
        export_adapter(folder, out, hub_base, dtype)
        model, tokenizer = None, None
        notes = [f"LoRA adapter; its base, `{hub_base}`, loads from the Hub (`adapter_config.json` names it by Hub "
                 f"id{'' if hub_base == base else f' instead of the local path {base}'})."]
        info = {**info, "adapter_base": hub_base, "base_model": info.get("base_model") or hub_base}
    else:
        model, tokenizer = export_full(folder, out, dtype, model_kwargs)
        notes = [f"Plain model in {dtype}" + (" (the LoRA adapter merged into its full-precision base)" if adapter
                                             else "") + "; no peft needed."]
        info = {**info, "merged": True}
    from align.models import load_causal_lm, load_tokenizer

    if not info.get("classifier"):
        if model is None:  # an adapter: its stop ids come from the base it was trained on
            model = load_causal_lm(folder, device=None, field="export", model_kwargs=model_kwargs)  # read, never run
            tokenizer = load_tokenizer(folder, field="export", model_kwargs=model_kwargs)
        generation_config(model, tokenizer, decoding).save_pretrained(out)
    said = ", ".join(f"{k}={v}" for k, v in (decoding or {}).items() if k not in ("note", "batch_size"))
    if info.get("classifier"):
        notes.append("A scalar-head sequence classifier (a reward model): no generation_config.")
    elif decoding:
        notes.append(f"`generation_config.json`: the decoding the run evaluated with ({said}).")
    else:
        notes.append(
            "`generation_config.json`: sampling at temperature 1 without truncation (the model was not evaluated "
            "in its run); stop tokens: EOS and the chat template's end of turn.")
    info = {**info, "evaluated_dir": str(stage_dir.resolve()), "export": notes, "where": push_to_hub or str(out)}
    (out / LINEAGE).write_text(json.dumps(info, indent=2, default=str) + "\n")
    card = render(info)
    card.save(out / "README.md")
    result = {"export_dir": str(out), "files": sorted(p.name for p in out.iterdir() if not p.name.startswith(".")),
              "merged": not adapter or merge, "dtype": dtype}
    if push_to_hub:
        result["pushed_to"] = push(out, push_to_hub, private=private, token=token)
    return result


def export_full(folder: Path, out: Path, dtype: str, model_kwargs: dict | None = None):
    """The model (an adapter merged into its base) in ``dtype``, with the config its checkpoint shipped."""
    import torch

    from align.models import config_kwargs, is_adapter, load_causal_lm, loading_kwargs, remote_code_refused
    from align.models import restore_shipped_config

    from transformers import AutoTokenizer

    trust = config_kwargs(loading_kwargs(model_kwargs, field="export"))
    config = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
    if "ForSequenceClassification" in str(config.get("architectures")):  # a reward model: its head, not an LM's
        from transformers import AutoModelForSequenceClassification

        from align.models import register_sequence_classifier

        with remote_code_refused("export", folder):
            register_sequence_classifier(folder, **trust)
            model = AutoModelForSequenceClassification.from_pretrained(folder, dtype=torch.float32, **trust)
    else:
        model = load_causal_lm(folder, field="export", training=True, tensor_parallel=False, model_kwargs=model_kwargs)
    if is_adapter(folder):
        restore_shipped_config(model, folder)
    model.to(getattr(torch, dtype))
    model.config.dtype = getattr(torch, dtype)
    model.save_pretrained(out)
    with remote_code_refused("export", folder):
        tokenizer = AutoTokenizer.from_pretrained(folder, **trust)  # as the stage saved it: chat template, no pad added
    tokenizer.save_pretrained(out)
    return model, tokenizer


def export_adapter(folder: Path, out: Path, base: str, dtype: str) -> None:
    """The adapter files (base named by ``base``) and the tokenizer, copied; weights cast when ``dtype`` asks."""
    for name in (*ADAPTER_FILES, *TOKENIZER_FILES):
        if (folder / name).is_file():
            shutil.copy2(folder / name, out / name)
    config = json.loads((out / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = base
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
    weights = out / "adapter_model.safetensors"
    if dtype != "float32" and weights.is_file():
        import torch
        from safetensors.torch import load_file, save_file

        save_file({k: v.to(getattr(torch, dtype)) for k, v in load_file(weights).items()}, weights,
                  metadata={"format": "pt"})


def push(folder: Path, repo_id: str, *, private: bool | None = None, token: str | None = None) -> str:
    """Create the model repository (if needed) and upload the folder in one commit; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
    commit = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                               commit_message="Upload model exported by align", ignore_patterns=[".*"])
    url = getattr(commit, "commit_url", None) or str(commit)
    log.info("export: pushed %s to %s", folder, url)
    return url
