"""Format the code cells of chapters ``book/X.md`` with ruff (``make format-chapters``).

ruff formats notebooks, IPython magics included, but not MyST Markdown; so each chapter is
converted to a temporary ``.ipynb`` beside ``book/ruff.toml``, formatted there, and its code
cells' sources are written back into the chapter. Markdown cells are not touched.

Usage: ``python tools/format_chapters.py [CHAPTER ...]`` (default: every chapter).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import jupytext

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
RUFF = Path(sys.executable).parent / "ruff"


def chapters(names: list[str]) -> list[Path]:
    paths = [BOOK / f"{n}.md" for n in names] if names else sorted(BOOK.glob("*.md"))
    return [p for p in paths if "jupytext:" in p.read_text().split("---", 2)[1]]


def format_chapter(path: Path) -> bool:
    """Format one chapter in place; return whether it changed."""
    nb = jupytext.read(path)
    with tempfile.NamedTemporaryFile(suffix=".ipynb", dir=BOOK, delete=False) as tmp:
        tmp_path = Path(tmp.name)
    try:
        jupytext.write(nb, tmp_path, fmt="ipynb")
        subprocess.run([str(RUFF), "format", "--quiet", str(tmp_path)], check=True)
        formatted = jupytext.read(tmp_path)
    finally:
        tmp_path.unlink(missing_ok=True)
    changed = False
    for cell, new in zip(nb.cells, formatted.cells, strict=True):
        if cell.cell_type == "code" and cell.source != new.source.rstrip("\n"):
            cell.source = new.source.rstrip("\n")
            changed = True
    if changed:
        jupytext.write(nb, path, fmt="md:myst")
    return changed


def main() -> None:
    for path in chapters(sys.argv[1:]):
        print(f"{path.name}: {'formatted' if format_chapter(path) else 'unchanged'}")


if __name__ == "__main__":
    main()
