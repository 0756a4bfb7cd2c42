"""Model cards for stage outputs: a ``huggingface_hub.ModelCard`` (README.md with metadata) saying where the model
came from, so a pushed or exported folder documents itself.

When a stage that holds a model finishes, the runner writes ``lineage.json`` beside it (the chain of stages that
made it: base model, each stage's kind, datasets with their data cards' summaries, ``args:`` and LoRA) and renders
``README.md`` from it. Evaluation numbers are looked up at render time in the run's evaluate stages (their
``metrics.json``), so the cards are re-rendered after every stage and gain them once the run has them.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

from align.refs import StageRef

log = logging.getLogger("align")

LINEAGE = "lineage.json"
HF_CACHE_SNAPSHOT = re.compile(r"models--([^/]+?)--([^/]+)/snapshots/")
MODEL_KEYS = ("model", "policy", "reward", "tokenizer")
SUMMARY_FIELDS = ("Source", "Rows", "Format", "Licence", "Tokens")


def hub_id_of(value) -> str | None:
    """The Hub id a model reference stands for: the id itself (not a local folder), or the repository of a Hub cache
    snapshot folder (``.../models--org--name/snapshots/<sha>``); None for a local model."""
    from align.models import looks_like_hub_id

    if not isinstance(value, (str, Path)) or isinstance(value, StageRef):
        return None
    text = str(value)
    match = HF_CACHE_SNAPSHOT.search(text.replace("\\", "/"))
    if match:
        return f"{match.group(1)}/{match.group(2)}"
    return text if not Path(text).exists() and looks_like_hub_id(text) else None


def plain(value):
    if isinstance(value, StageRef):
        return f"${{stages.{value.stage}}}"
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def data_card_summary(path: Path) -> dict:
    """The summary bullets (source, rows, format, licence, tokens) of a data card align wrote."""
    if not path.is_file():
        return {}
    found = {}
    for line in path.read_text().splitlines():
        match = re.match(r"- \*\*(\w+)\*\*(?: \([^)]*\))?: (.*)", line)
        if match and match.group(1) in SUMMARY_FIELDS:
            found[match.group(1).lower()] = match.group(2)
    return found


def upstream(recipe, name: str) -> list[str]:
    """``name`` and every stage it depends on, in recipe order."""
    seen, todo = set(), [name]
    while todo:
        stage = todo.pop()
        if stage not in seen:
            seen.add(stage)
            todo += recipe.stages[stage].deps
    return [s for s in recipe.stages if s in seen]


def step(recipe, name: str, tags: dict) -> dict:
    """One link of the chain: what the stage started from, read and was told."""
    stage = recipe.stages[name]
    inputs = {key: plain(stage.spec[key]) for key in MODEL_KEYS if key in stage.spec}
    if isinstance(stage.spec.get("model"), dict):
        inputs["model"] = f"built from scratch: {json.dumps(stage.spec['model'])}"
    datasets = []
    for key in stage.dataset_keys:
        if key not in stage.spec:
            continue
        label, spec = recipe.dataset_spec(stage, key)
        datasets.append({"key": key, "name": label, "hub": spec.get("hub"),
                         "summary": data_card_summary(stage.out_dir / f"data_card_{label}.md")})
    return {"stage": name, "kind": stage.kind, "inputs": inputs, "datasets": datasets,
            "judges": list(stage.judges), "args": plain(stage.spec.get("args") or {}),
            "lora": plain(stage.spec.get("lora")), "tags": list(tags.get(stage.kind, ())),
            "hub_base": next((h for h in (hub_id_of(stage.spec.get(k)) for k in MODEL_KEYS) if h), None)}


def lineage(recipe, name: str, folder: Path, tags: dict) -> dict:
    """What the card of stage ``name`` (its model in ``folder``) says, as data. ``tags``: each kind's ``CARD_TAGS``."""
    from align.models import is_adapter

    chain = [step(recipe, s, tags) for s in upstream(recipe, name)]
    adapter = is_adapter(folder)
    base = json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] if adapter else None
    return {"recipe": recipe.name, "variant": recipe.variant, "seed": recipe.seed, "stage": name,
            "kind": recipe.stages[name].kind, "stage_dir": str(recipe.stages[name].out_dir.resolve()),
            "adapter": adapter, "adapter_base": base,
            "base_model": next((s["hub_base"] for s in chain if s["hub_base"]), None),
            "datasets": sorted({d["hub"] for s in chain for d in s["datasets"] if d["hub"]}),
            "classifier": "ForSequenceClassification" in str(read_json(folder / "config.json").get("architectures"))
                          or "SEQ_CLS" in str(read_json(folder / "adapter_config.json").get("task_type")),
            "chain": chain}


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


def evaluations(stage_dir: str | Path) -> list[dict]:
    """Every evaluation of the model in ``stage_dir`` found in its run: (evaluate stage, policy name, its numbers,
    reference, primary judge, decoding)."""
    stage_dir = Path(stage_dir).resolve()
    found = []
    for metrics_file in sorted(stage_dir.parent.glob("*/metrics.json")):
        metrics = read_json(metrics_file)
        for policy, values in (metrics.get("policies") or {}).items():
            if isinstance(values, dict) and values.get("path") and Path(values["path"]).resolve() == stage_dir:
                found.append({"stage": metrics_file.parent.name, "policy": policy, "values": values,
                              "reference": metrics.get("reference"), "judge": metrics.get("primary_judge"),
                              "decoding": metrics.get("decoding") or {}})
    return found


def evaluation_lines(found: list[dict]) -> list[str]:
    lines = []
    for e in found:
        v = e["values"]
        scores = ", ".join(f"{j} {s:+.3f}" for j, s in (v.get("scores") or {}).items() if s is not None)
        wr = v.get("win_rate") or {}
        parts = [f"mean score: {scores}" if scores else None,
                 f"win rate vs {wr.get('vs')} ({wr.get('judge')} judge) {wr['win_rate']:.3f} "
                 f"[{wr.get('ci_low', float('nan')):.3f}, {wr.get('ci_high', float('nan')):.3f}]"
                 if wr.get("win_rate") is not None and v.get("kind") != "reference" and e["policy"] != e["reference"]
                 else None,
                 f"KL to {e['reference']} {v['kl']:.3f} nats" if v.get("kl") is not None else None,
                 f"perplexity {v['perplexity']:.3f}" if v.get("perplexity") is not None else None,
                 f"bits per byte {v['bits_per_byte']:.3f}" if v.get("bits_per_byte") is not None else None]
        parts += [f"{k} {x:.3f}" for k, x in (v.get("benchmarks") or {}).items()
                  if isinstance(x, (int, float)) and not k.endswith("_stderr")]
        lines.append(f"- `{e['stage']}` stage, as policy `{e['policy']}`: " + "; ".join(p for p in parts if p) + ".")
    return lines


def how_to_load(info: dict, where: str) -> str:
    if info.get("adapter") and not info.get("merged"):
        base = info.get("adapter_base")
        return "\n".join(["```python", "from peft import AutoPeftModelForCausalLM", "from transformers import AutoTokenizer",
                          "", f'model = AutoPeftModelForCausalLM.from_pretrained("{where}")  # loads the base: {base}',
                          f'tokenizer = AutoTokenizer.from_pretrained("{where}")', "```"])
    auto = "AutoModelForSequenceClassification" if info.get("classifier") else "AutoModelForCausalLM"
    lines = ["```python", f"from transformers import {auto}, AutoTokenizer", "",
             f'model = {auto}.from_pretrained("{where}")', f'tokenizer = AutoTokenizer.from_pretrained("{where}")']
    if not info.get("classifier"):
        lines += ['ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}], add_generation_prompt=True,',
                  '                                    return_tensors="pt", return_dict=True)',
                  "print(tokenizer.decode(model.generate(**ids)[0]))  # decoding: generation_config.json"]
    return "\n".join([*lines, "```"])


def step_lines(s: dict) -> list[str]:
    inputs = ", ".join(f"{k}: `{v}`" for k, v in s["inputs"].items())
    lines = [f"- **{s['stage']}** ({s['kind']})" + (f" from {inputs}" if inputs else "")]
    for d in s["datasets"]:
        summary = d["summary"]
        described = "; ".join(f"{k} {summary[k]}" for k in ("rows", "format", "licence", "tokens") if k in summary)
        lines.append(f"  - {d['key']}: `{d['name']}`" + (f" (Hub: `{d['hub']}`)" if d["hub"] else "")
                     + (f": {described}" if described else "")
                     + (f"; data card `{s['stage']}/data_card_{d['name']}.md`" if summary else ""))
    if s["judges"]:
        lines.append(f"  - judges: {', '.join(s['judges'])}")
    if s["lora"] not in (None, True, {}):
        lines.append(f"  - lora: `{json.dumps(s['lora'])}`")
    if s["args"]:
        lines.append(f"  - args: `{json.dumps(s['args'], default=str)}`")
    return lines


def render(info: dict, *, where: str = "path/to/this/folder", extra: list[str] | None = None):
    """The ModelCard for ``info`` (a ``lineage`` dict, possibly with ``merged``/``export`` entries)."""
    from huggingface_hub import ModelCard, ModelCardData

    where = info.get("where") or where
    adapter = info.get("adapter") and not info.get("merged")
    own = next(s for s in info["chain"] if s["stage"] == info["stage"])
    tags = ["align", info["kind"], *own["tags"], *(info.get("tags") or [])]
    data = ModelCardData(
        base_model=info.get("base_model"), datasets=info.get("datasets") or None,
        library_name="peft" if adapter else "transformers",
        pipeline_tag="text-classification" if info.get("classifier") else "text-generation",
        tags=list(dict.fromkeys(tags)), model_name=f"{info['recipe']}/{info['stage']}",
        base_model_relation=("adapter" if adapter else "finetune") if info.get("base_model") else None)
    found = evaluations(info.get("evaluated_dir") or info["stage_dir"])
    run = f"{info['recipe']}" + (f" ({info['variant']})" if info.get("variant") else "")
    body = [f"# {info['recipe']}/{info['stage']}", "",
            f"The `{info['stage']}` stage ({info['kind']}) of the align recipe `{run}`, seed "
            f"{info['seed']}. " + ("A PEFT (LoRA) adapter" + (f" on `{info['adapter_base']}`" if info.get('adapter_base')
                                                               else "") if adapter else "A full model") + ".", ""]
    if info.get("base_model"):
        body += [f"Base model on the Hub: `{info['base_model']}`.", ""]
    body += ["## Lineage", "", "Each stage, in the order they ran, with what it started from, the data it read and "
             "its arguments (`args:` go verbatim to the library's config class):", ""]
    for s in info["chain"]:
        body += step_lines(s)
    body += ["", "## Evaluation", ""]
    body += evaluation_lines(found) or ["No evaluation of this model in its run (yet)."]
    if info.get("export"):
        body += ["", "## Export", "", *info["export"]]
    body += ["", "## How to load", "", how_to_load(info, where), *(extra or [])]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n")


def write_stage_card(recipe, name: str, folder: Path, tags: dict) -> Path | None:
    """``lineage.json`` + ``README.md`` for a stage that holds a model (its ``merged/`` gets one too); a stage that
    wrote its own ``lineage.json`` (export) keeps it. None when the folder holds no model."""
    from align.models import model_folder

    folder = Path(folder)
    if model_folder(folder) is None:
        return None
    try:  # documentation: a card that cannot be written must not cost a finished stage its completion
        if not (folder / LINEAGE).is_file():
            info = lineage(recipe, name, folder, tags)
            (folder / LINEAGE).write_text(json.dumps(info, indent=2, default=str) + "\n")
        return refresh(folder)
    except Exception as e:  # noqa: BLE001
        log.warning("stages.%s: model card not written (%s: %s)", name, type(e).__name__, e)
        return None


def refresh(folder: Path) -> Path | None:
    """Re-render ``README.md`` (and ``merged/README.md``) from ``lineage.json`` and the run's evaluations."""
    info = read_json(Path(folder) / LINEAGE)
    if not info.get("chain"):
        return None
    render(info).save(Path(folder) / "README.md")
    if (Path(folder) / "merged" / "config.json").is_file():
        render({**info, "merged": True}).save(Path(folder) / "merged" / "README.md")
    return Path(folder) / "README.md"


def refresh_run(recipe) -> None:
    """Every finished stage card of the run, re-rendered (an evaluate stage that just finished adds its numbers)."""
    for stage in recipe.stages.values():
        if (stage.out_dir / LINEAGE).is_file():
            try:
                refresh(stage.out_dir)
            except Exception as e:  # noqa: BLE001 -- as in write_stage_card
                log.warning("stages.%s: model card not refreshed (%s: %s)", stage.name, type(e).__name__, e)
