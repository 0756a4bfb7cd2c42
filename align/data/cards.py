"""Data cards: a markdown page per dataset a stage read, so a run documents its own inputs."""

from __future__ import annotations

import json
from pathlib import Path

from align.data.formats import DESCRIBE, detect_format, is_conversational


def text_of(value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "\n".join(m.get("content", "") if isinstance(m, dict) else str(m) for m in value)
    return "" if value is None else str(value)


def row_text(row: dict, tokenizer=None) -> str:
    parts = []
    for value in row.values():
        if isinstance(value, list) and value and isinstance(value[0], dict) and tokenizer is not None \
                and getattr(tokenizer, "chat_template", None):
            parts.append(tokenizer.apply_chat_template(value, tokenize=False))
        elif isinstance(value, (str, list)):
            parts.append(text_of(value))
    return "\n".join(parts)


def licence_of(spec: dict) -> str:
    if "builtin" in spec:
        from align.data.builtin import BUILTINS

        return BUILTINS.get(spec["builtin"], {}).get("licence", "unknown")
    if "hh-rlhf" in json.dumps(spec):
        return "MIT (Anthropic, hh-rlhf)"
    return "unknown: check the source"


def example(row: dict, limit: int = 400) -> str:
    text = json.dumps(row, ensure_ascii=False, indent=1, default=str)
    return text if len(text) <= limit else text[:limit] + " ..."


def write_data_card(ds, path, *, name: str, spec: dict, fmt: str | None = None, tokenizer=None,
                    licence: str | None = None, notes: str | None = None) -> Path:
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / f"data_card_{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or detect_format(ds, name=name)
    texts = [row_text(row, tokenizer) for row in ds]
    size = sum(len(t.encode("utf-8")) for t in texts)
    lines = [
        f"# Data card: {name}", "",
        f"- **Source**: `{json.dumps(spec, default=str)}`",
        f"- **Rows**: {len(ds):,}",
        f"- **Size**: {size:,} bytes of text",
        f"- **Format**: {fmt} ({DESCRIBE.get(fmt, fmt)}), {'conversational' if is_conversational(ds) else 'standard'}",
        f"- **Columns**: " + ", ".join(f"`{c}` ({t})" for c, t in ds.features.items()),
        f"- **Licence**: {licence or licence_of(spec)}",
    ]
    if tokenizer is not None and texts:
        counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
        lines.append(f"- **Tokens**: {sum(counts):,} in all, {sum(counts) / len(counts):.1f} per row on average, "
                     f"{max(counts):,} at most")
    if notes:
        lines += ["", "## Notes", "", notes]
    lines += ["", "## Examples", ""]
    for i in sorted({0, len(ds) // 2}):
        lines += [f"Row {i}:", "", "```json", example(ds[i]), "```", ""]
    path.write_text("\n".join(lines))
    return path
