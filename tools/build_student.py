"""Build the student edition of the book into ``_build/student/html`` (``make student``).

The same book without the solutions: every exercise stays, every gated solution
(``solution-start`` … ``solution-end``, its text and its code cells) is removed, and the check
cells after the solutions stay, so a student who writes the asked-for function can run the
check against ``mtgmm``. It renders the committed, executed ``book/X.ipynb`` like
``tools/build_book.py --no-execute`` (``--execute`` executes the chapters afresh instead), with
a config derived from ``_config.yml`` that

- sets sphinx-exercise's ``hide_solutions`` and loads ``tools/sphinx_ext/student_edition.py``,
  which extends it to gated solutions;
- drops what would hand out the solutions anyway: the launch buttons (they open the full
  notebooks on GitHub), the download button and the copied sources (``_sources``).

It also writes student notebooks, ``_build/student/notebooks/X.ipynb``: the committed notebooks
with each gated solution removed (one that had code leaves an empty answer cell) and all outputs
cleared, for an instructor to hand out. The build runs with ``-W -n`` like the book's.
"""

from __future__ import annotations

import argparse
import copy
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from build_book import CONFIG, ROOT, jupyter_book, no_execute_config  # noqa: E402

OUT = ROOT / "_build" / "student"
EXTENSION_DIR = ROOT / "tools" / "sphinx_ext"
ANSWER_CELL = "# Your answer here\n"

START = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-start\}")
END = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-end\}")


def student_config(config: dict, execute: bool) -> dict:
    if not execute:
        config, _ = no_execute_config(config)
    config = copy.deepcopy(config)
    config["title"] = f"{config.get('title', '')} (student edition)".strip()
    config.pop("launch_buttons", None)
    sphinx = config.setdefault("sphinx", {})
    sphinx.setdefault("local_extensions", {})["student_edition"] = str(EXTENSION_DIR)
    sphinx["recursive_update"] = (
        True  # merge html_theme_options instead of replacing them
    )
    cfg = sphinx.setdefault("config", {})
    cfg["hide_solutions"] = True
    cfg["html_copy_source"] = False
    cfg["html_show_sourcelink"] = False
    cfg.setdefault("html_theme_options", {})["use_download_button"] = False
    return config


def strip_solutions(cells: list[dict]) -> tuple[list[dict], int]:
    """Cells without the gated solutions; one that had code leaves an empty answer cell."""
    out: list[dict] = []
    inside = False  # within solution-start … solution-end
    closing = None  # the fence that closes the directive line being skipped, if any
    removed = 0
    had_code = False
    for cell in cells:
        if cell["cell_type"] != "markdown":
            if inside:
                had_code = had_code or cell["cell_type"] == "code"
            else:
                out.append(cell)
            continue
        kept: list[str] = []
        pieces: list[list[str]] = []
        for line in cell["source"].splitlines(keepends=True):
            stripped = line.strip()
            if closing is not None:
                if stripped == closing:
                    closing = None
                    if not inside:  # the end directive closed: what follows is kept
                        pieces.append(kept)
                        kept = []
                continue
            if not inside and (m := START.match(stripped)):
                inside, closing, had_code = True, m.group("fence"), False
                pieces.append(kept)
                kept = []
                continue
            if inside and (m := END.match(stripped)):
                inside, closing = False, m.group("fence")
                removed += 1
                pieces.append(
                    None if had_code else []
                )  # None: where the answer cell goes
                continue
            if not inside:
                kept.append(line)
        pieces.append(kept)
        if inside and pieces and pieces[-1] == []:
            pieces.pop()
        for piece in pieces:
            if piece is None:
                out.append(_answer_cell())
            elif "".join(piece).strip():
                new = copy.deepcopy(cell)
                new["source"] = "".join(piece).strip("\n")
                out.append(new)
    if inside:
        raise ValueError("a solution-start has no solution-end")
    return out, removed


def _answer_cell() -> dict:
    return {
        "cell_type": "code",
        "metadata": {"tags": ["student-answer"]},
        "execution_count": None,
        "outputs": [],
        "source": ANSWER_CELL,
    }


def write_student_notebooks() -> list[Path]:
    import nbformat

    folder = OUT / "notebooks"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    written = []
    for ipynb in sorted((ROOT / "book").glob("*.ipynb")):
        nb = nbformat.read(ipynb, as_version=4)
        cells, _ = strip_solutions(nb.cells)
        for i, cell in enumerate(cells):
            cell = nbformat.from_dict(cell)
            cell["id"] = f"cell-{i}"
            if cell["cell_type"] == "code":
                cell["outputs"], cell["execution_count"] = [], None
            cells[i] = cell
        nb.cells = cells
        nbformat.validate(nb)
        out = folder / ipynb.name
        nbformat.write(nb, out)
        written.append(out)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--execute",
        action="store_true",
        help="execute the chapters instead of rendering",
    )
    args = parser.parse_args(argv)

    config = student_config(
        yaml.safe_load(CONFIG.read_text(encoding="utf-8")), args.execute
    )
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    config_path = OUT / "_config.student.yml"
    header = "# Generated by tools/build_student.py from _config.yml; do not edit.\n"
    config_path.write_text(
        header + yaml.safe_dump(config, sort_keys=False), encoding="utf-8"
    )
    work = OUT / "sphinx"  # jupyter-book writes into <path-output>/_build
    cmd = [jupyter_book(), "build", ".", "-W", "-n", "--keep-going", "--all"]
    cmd += ["--config", os.path.relpath(config_path, ROOT)]
    cmd += ["--path-output", os.path.relpath(work, ROOT)]
    print("+ " + " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        return rc
    (work / "_build" / "html").rename(OUT / "html")
    notebooks = write_student_notebooks()
    print(f"build_student.py: student edition in {OUT / 'html'}")
    print(
        f"build_student.py: {len(notebooks)} student notebook(s) in {OUT / 'notebooks'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
