"""Open a report.html in headless Chromium, screenshot it, and check that every image really loaded.

    python benchmarks/screenshot_report.py runs/quickstart/report/report.html [--out shot.png]
    apt-get install -y chromium      # once, if /usr/bin/chromium is missing (Debian package)

Three checks, all needed for "the page opens anywhere with no server":
1. static: every <img> src is a data:image/png;base64 URI whose bytes are a PNG of non-zero size,
   and nothing points outside the file (no http(s) src/href/url(), no relative image paths);
2. DOM: a copy of the page with a tiny script that marks each image whose naturalWidth > 0 is
   rendered with ``--dump-dom``; every <img> must come back marked;
3. a PNG screenshot of the page, for a human to look at.
Prints a JSON summary; exits 1 if a check fails. Chromium runs with no network, no profile and no GPU.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import re
import struct
import subprocess
import sys
import tempfile
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--hide-scrollbars"]
PNG_PREFIX = "data:image/png;base64,"
# Marks each image once the page has loaded; --virtual-time-budget lets the load event fire before the dump.
MARK_SCRIPT = """<script>window.addEventListener("load", () => {
  for (const img of document.images) img.setAttribute("data-loaded", img.naturalWidth > 0 ? "yes" : "no");
});</script>"""


class Images(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[dict] = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.images.append(dict(attrs))


def images(html: str) -> list[dict]:
    parser = Images()
    parser.feed(html)
    return parser.images


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR chunk, or None if the bytes are not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def static_problems(html: str) -> list[str]:
    """Everything that would make the page depend on a server, the network or a missing file."""
    problems = [f"external reference: {m.group(0)[:60]}"
                for m in re.finditer(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//[^"'\s>]*|url\(\s*["']?(?:https?:)?//""", html)]
    for i, img in enumerate(images(html)):
        src = img.get("src") or ""
        if not src.startswith(PNG_PREFIX):
            problems.append(f"img {i} ({img.get('alt')}): src is not an inline PNG: {src[:60]!r}")
            continue
        try:
            size = png_size(base64.b64decode(src[len(PNG_PREFIX):], validate=True))
        except binascii.Error:
            size = None
        if not size or 0 in size:
            problems.append(f"img {i} ({img.get('alt')}): the data URI does not decode to a non-empty PNG")
    return problems


def chromium(args: list[str], profile: str, timeout: float) -> str:
    result = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args],
                            capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"chromium exited {result.returncode}: {result.stderr[-2000:]}")
    return result.stdout


def dom_loaded(html_path: Path, profile: str, timeout: float) -> tuple[int, int]:
    """(images with naturalWidth > 0, images) as Chromium rendered them."""
    with tempfile.TemporaryDirectory() as tmp:
        marked = Path(tmp) / "marked.html"
        marked.write_text(html_path.read_text().replace("</body>", MARK_SCRIPT + "</body>"))
        dom = chromium(["--virtual-time-budget=10000", "--dump-dom", marked.as_uri()], profile, timeout)
    found = images(dom)
    return sum(img.get("data-loaded") == "yes" for img in found), len(found)


def screenshot(html_path: Path, out: Path, profile: str, width: int, height: int, timeout: float) -> None:
    chromium([f"--screenshot={out.resolve()}", f"--window-size={width},{height}", "--virtual-time-budget=10000",
              html_path.resolve().as_uri()], profile, timeout)


def check(html_path: Path, out: Path, width: int = 1280, height: int = 4000, timeout: float = 120) -> dict:
    html = html_path.read_text()
    summary = {"page": str(html_path), "images": len(images(html)), "static_problems": static_problems(html)}
    with tempfile.TemporaryDirectory() as profile:
        summary["dom_loaded"], summary["dom_images"] = dom_loaded(html_path, profile, timeout)
        screenshot(html_path, out, profile, width, height, timeout)
    size = png_size(out.read_bytes()) if out.is_file() else None
    summary["screenshot"], summary["screenshot_size"] = str(out), size
    summary["ok"] = (not summary["static_problems"] and summary["dom_images"] == summary["images"] > 0
                     and summary["dom_loaded"] == summary["images"] and bool(size))
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("html", type=Path, help="the report.html to open")
    parser.add_argument("--out", type=Path, help="screenshot PNG (default: <html stem>_screenshot.png beside it)")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=4000, help="window height: how much of the page is captured")
    args = parser.parse_args(argv)
    if not Path(CHROMIUM).exists():
        print(f"{CHROMIUM} not found; install it with: apt-get update && apt-get install -y chromium", file=sys.stderr)
        return 2
    out = args.out or args.html.with_name(args.html.stem + "_screenshot.png")
    summary = check(args.html, out, args.width, args.height)
    print(json.dumps(summary, indent=2))
    return 0 if summary["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
