"""Write one benchmark's section into docs/benchmarks.md, leaving the others as they are."""

from __future__ import annotations

import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Measured on this project's development machine (2 CPU cores, no GPU) unless a\n"
    "section says otherwise. Each section is written by the script it names; speed is\n"
    "always a ratio against a baseline measured in the same run.\n"
)


def replace_section(title: str, body: str) -> None:
    """Replace (or append) the `## title` section of docs/benchmarks.md with `body`."""
    text = DOC.read_text() if DOC.exists() else HEADER
    block = f"## {title}\n\n{body.rstrip()}\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block + "\n", text)
    else:
        text = text.rstrip() + "\n\n" + block
    DOC.parent.mkdir(exist_ok=True)
    DOC.write_text(text.rstrip() + "\n")
