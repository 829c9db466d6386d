"""Shared helpers of the site tests: paths, the table of contents, freshness of a build."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "_build"
HTML = BUILD / "html"
STUDENT_HTML = BUILD / "student" / "html"
SCREENSHOTS = BUILD / "screenshots"
MATHJAX = ROOT / "tools" / "site" / "node_modules" / "mathjax"
# The MathJax that Sphinx's mathjax extension loads (sphinx.ext.mathjax's default mathjax_path);
# the page tests serve the local npm copy (tools/site/package.json) in its place.
MATHJAX_CDN = "https://cdn.jsdelivr.net/npm/mathjax@3/"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The two screens the page tests use: a laptop, and a phone (touch, 390 CSS px wide).
VIEWPORT = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 30_000
# Pages that Sphinx and its extensions generate besides the documents of _toc.yml.
GENERATED_PAGES = ["genindex", "search", "py-modindex", "prf-prf"]

sys.path.insert(0, str(ROOT / "tools"))


def toc_docnames() -> list[str]:
    """The documents of ``_toc.yml`` in reading order (root first)."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text(encoding="utf-8"))
    names = [toc["root"]]

    def walk(entries):
        for entry in entries or []:
            if "file" in entry:
                names.append(entry["file"])
            walk(entry.get("sections"))
            walk(entry.get("chapters"))

    for part in toc.get("parts", []):
        walk(part.get("chapters"))
    walk(toc.get("chapters"))
    return [str(Path(n).with_suffix("").as_posix()) for n in names]


def source_of(docname: str) -> Path | None:
    """The repository file a document is built from (the MyST ``.md`` where there is one)."""
    for suffix in (".md", ".ipynb", ".rst"):
        path = ROOT / f"{docname}{suffix}"
        if path.is_file():
            return path
    return None


def is_chapter(docname: str) -> bool:
    """A chapter is a notebook page: ``book/X.md`` with a jupytext header and ``book/X.ipynb``."""
    import notebooks

    md = ROOT / f"{docname}.md"
    return (
        md.is_file() and notebooks.is_chapter(md) and md.with_suffix(".ipynb").is_file()
    )


def config() -> dict:
    return yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))


def _newest_input() -> float:
    files = [ROOT / "_config.yml", ROOT / "_toc.yml", ROOT / "tools" / "build_book.py"]
    files += [p for p in (ROOT / "book").rglob("*") if p.is_file()]
    files += [
        p for p in (ROOT / "_static").rglob("*") if p.is_file()
    ]  # the site's js, css
    files += list((ROOT / "lib").rglob("*.py"))  # the API page documents the package
    return max(p.stat().st_mtime for p in files if ".ipynb_checkpoints" not in p.parts)


def is_fresh(html: Path, tools: list[Path]) -> bool:
    pages = list(html.glob("book/*.html"))
    if not (html / "index.html").is_file() or not pages:
        return False
    newest = max([_newest_input()] + [p.stat().st_mtime for p in tools])
    return min(p.stat().st_mtime for p in pages) >= newest


def build(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(
            f"{' '.join(cmd)} failed:\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}"
        )


WAIT_FOR_MATHJAX = """
async (timeout) => {
  const math = [...document.querySelectorAll('.math')];
  if (!math.length) return {math: 0};
  const t0 = Date.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (Date.now() - t0 > timeout) return {math: math.length, loaded: false};
    await new Promise(r => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  const items = [...MathJax.startup.document.math];
  const errors = items
    .filter(m => /<merror|mathcolor="red"/.test(MathJax.startup.toMML(m.root)))
    .map(m => m.math);
  const untypeset = math
    .filter(el => !el.querySelector('mjx-container'))
    .map(el => el.textContent.slice(0, 100));
  return {math: math.length, loaded: true, items: items.length, errors, untypeset};
}
"""

WAIT_FOR_IMAGES = """
async (timeout) => {
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  const settle = img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r);
  });
  await Promise.race([
    Promise.all(images.map(settle)),
    new Promise(r => setTimeout(r, timeout)),
  ]);
  return images.map(img => ({src: img.getAttribute('src'), width: img.naturalWidth}));
}
"""
