"""One list of blocks, rendered twice: markdown with PNG links, and one HTML page with the PNGs inlined.

Building the content once keeps report.md and report.html from drifting apart; the HTML page
needs no server and no network (images are base64 data URIs, the CSS is inline).
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Image:
    path: Path  # a PNG inside the report folder
    alt: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 2em; border-bottom: 1px solid #eee; }
table { border-collapse: collapse; margin: 1em 0; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 8px; vertical-align: top; text-align: left; }
th { background: #f3f3f3; }
td { white-space: pre-wrap; }
img { max-width: 100%; height: auto; display: block; margin: 1em 0; }
p.note { color: #555; font-size: 14px; }
"""


def markdown_cell(value: str) -> str:
    return str(value).replace("|", "\\|").replace("\n", "<br>")


def to_markdown(title: str, blocks: list, out_dir: Path) -> str:
    lines = [f"# {title}", ""]
    for block in blocks:
        if isinstance(block, Heading):
            lines += ["#" * block.level + " " + block.text, ""]
        elif isinstance(block, Text):
            lines += [block.text, ""]
        elif isinstance(block, Image):
            lines += [f"![{block.alt}]({block.path.relative_to(out_dir).as_posix()})", ""]
        elif isinstance(block, Table):
            lines.append("| " + " | ".join(map(markdown_cell, block.headers)) + " |")
            lines.append("|" + "---|" * len(block.headers))
            lines += ["| " + " | ".join(map(markdown_cell, row)) + " |" for row in block.rows]
            lines.append("")
    return "\n".join(lines)


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def to_html(title: str, blocks: list) -> str:
    esc = html.escape
    body = [f"<h1>{esc(title)}</h1>"]
    for block in blocks:
        if isinstance(block, Heading):
            body.append(f"<h{block.level}>{esc(block.text)}</h{block.level}>")
        elif isinstance(block, Text):
            body.append(f'<p class="note">{esc(block.text)}</p>')
        elif isinstance(block, Image):
            body.append(f'<img alt="{esc(block.alt)}" src="{data_uri(block.path)}">')
        elif isinstance(block, Table):
            head = "".join(f"<th>{esc(str(h))}</th>" for h in block.headers)
            rows = "".join("<tr>" + "".join(f"<td>{esc(str(c))}</td>" for c in row) + "</tr>" for row in block.rows)
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_pages(title: str, blocks: list, out_dir: Path, stem: str = "report") -> tuple[Path, Path]:
    """Write ``<stem>.md`` and ``<stem>.html`` into ``out_dir``; returns both paths."""
    md, page = out_dir / f"{stem}.md", out_dir / f"{stem}.html"
    md.write_text(to_markdown(title, blocks, out_dir))
    page.write_text(to_html(title, blocks))
    return md, page
