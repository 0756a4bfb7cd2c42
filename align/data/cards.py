"""Data cards: a markdown page per dataset a stage read, so a run documents its own inputs."""

from __future__ import annotations

import json
from pathlib import Path

from align.data.formats import DESCRIBE, column_values, detect_format, is_conversational
from align.errors import AlignError

UNKNOWN_LICENCE = "unknown — check the source"


def strings(value) -> list[str]:
    """The text a cell holds: the string itself, or the contents of a message list."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [m["content"] for m in value if isinstance(m, dict) and isinstance(m.get("content"), str)]
    return []


def text_of(value) -> str:
    return "\n".join(strings(value))


def templated(value, tokenizer, options: dict | None = None) -> str:
    """What a trainer feeds the model: the chat template for message lists when the tokenizer has one (with the
    row's ``options``: its tools and template arguments)."""
    if isinstance(value, list) and value and getattr(tokenizer, "chat_template", None):
        from align.chat_templates import render

        try:
            return render(tokenizer, value, options, tokenize=False)
        except Exception:  # noqa: BLE001 -- strict templates refuse e.g. assistant-only lists; count the text
            pass
    return text_of(value)


def type_name(feature) -> str:
    """``Value('string')`` -> ``string``; lists of messages -> ``list[{role: string, content: string}]``."""
    if isinstance(feature, dict):
        return "{" + ", ".join(f"{k}: {type_name(v)}" for k, v in feature.items()) + "}"
    inner = getattr(feature, "feature", None)
    if inner is not None:
        return f"list[{type_name(inner)}]"
    return str(getattr(feature, "dtype", type(feature).__name__))


def is_text(feature) -> bool:
    """Strings, and lists of {role, content} messages."""
    name = type_name(feature)
    return name in ("string", "large_string") or (name.startswith("list[{") and "content: string" in name)


def truncate(value, limit: int = 300):
    """Long strings cut to ``limit`` characters, so an example shows every field of the row."""
    if isinstance(value, str):
        return value if len(value) <= limit else value[:limit] + f"… [{len(value):,} characters]"
    if isinstance(value, list):
        return [truncate(v, limit) for v in value]
    if isinstance(value, dict):
        return {k: truncate(v, limit) for k, v in value.items()}
    return value


def licence_of(spec: dict) -> str:
    if "builtin" in spec:
        from align.data.builtin import BUILTINS

        return BUILTINS.get(spec["builtin"], {}).get("licence", UNKNOWN_LICENCE)
    if "hh-rlhf" in str(spec.get("path", "")) + str(spec.get("hub", "")):
        return "MIT (Anthropic, hh-rlhf)"
    return UNKNOWN_LICENCE


def token_counts(columns: dict[str, list], tokenizer) -> list[int]:
    """Tokens per row over every text field, templated the way trainers see conversations."""
    counts = [0] * len(next(iter(columns.values()), []))
    for values in columns.values():
        texts = [templated(v, tokenizer) for v in values]
        for i, ids in enumerate(tokenizer(texts, add_special_tokens=False)["input_ids"]):
            counts[i] += len(ids)
    return counts


def write_data_card(ds, path, *, name: str, spec: dict, fmt: str | None = None, tokenizer=None,
                    licence: str | None = None, notes: str | None = None) -> Path:
    """Write ``path`` (or ``<path>/data_card_<name>.md`` when ``path`` is a folder) and return it."""
    path = Path(path)
    if path.is_dir() or not path.suffix:
        path = path / f"data_card_{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt is None:
        try:
            fmt = detect_format(ds, name=name)
        except AlignError:  # a card documents whatever was read; judging it is validate_dataset's job
            fmt = "unknown"
    text_columns = {c: column_values(ds, c) for c, feature in ds.features.items() if is_text(feature)}
    size = sum(len(s.encode("utf-8")) for values in text_columns.values() for v in values for s in strings(v))
    lines = [
        f"# Data card: {name}", "",
        f"- **Source**: `{json.dumps(spec, default=str)}`",
        f"- **Rows**: {len(ds):,}",
        f"- **Text**: {size:,} bytes (UTF-8 contents of {', '.join(text_columns) or 'no column'})",
        f"- **Format**: {fmt}: {DESCRIBE.get(fmt, 'no known format')}, "
        f"{'conversational (role/content message lists)' if is_conversational(ds) else 'standard (strings)'}",
        "- **Columns**: " + ", ".join(f"`{c}` ({type_name(t)})" for c, t in ds.features.items()),
        f"- **Licence**: {licence or licence_of(spec)}",
    ]
    if tokenizer is not None and text_columns and len(ds):
        counts = token_counts(text_columns, tokenizer)
        how = ("chat template applied to conversations" if is_conversational(ds) and getattr(tokenizer, "chat_template", None)
               else "contents of the text fields")
        lines.append(f"- **Tokens** ({how}): {sum(counts):,} in all, {sum(counts) / len(counts):.1f} per row on "
                     f"average, {max(counts):,} at most")
    dropped = getattr(ds, "align_dropped", None)  # set by load_dataset under on_invalid_rows: drop
    if dropped is not None:
        lines += ["", *dropped.markdown()]
    if notes:
        lines += ["", "## Notes", "", notes]
    if len(ds):
        lines += ["", "## Examples", ""]
        for i in sorted({0, len(ds) // 2}):
            fields = [f"{c}: {json.dumps(truncate(v), ensure_ascii=False, default=str)}" for c, v in ds[i].items()]
            lines += [f"Row {i}:", "", "```", *fields, "```", ""]
    path.write_text("\n".join(lines) + "\n")
    return path
