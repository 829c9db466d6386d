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
with each gated solution removed (one that had code leaves an answer cell: its functions'
headers with ``...`` for a body) and all outputs cleared, for an instructor to hand out. On the
student pages too, a solution with functions leaves that stub, and the check cell after a
solution shows no output (the full edition's would read as the reader's result). The build runs
with ``-W -n`` like the book's.
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
from build_book import (  # noqa: E402
    CONFIG,
    ROOT,
    absolute_extension_paths,
    jupyter_book,
    no_execute_config,
)

OUT = ROOT / "_build" / "student"
EXTENSION_DIR = ROOT / "tools" / "sphinx_ext"
ANSWER_CELL = "# Your answer here\n"

START = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-start\}")
END = re.compile(r"^(?P<fence>`{3,}|:{3,})\{solution-end\}")


def stub_for(code: str) -> str:
    """What the reader starts from: the solution's functions and classes, without bodies.

    Each top-level ``def`` or ``class`` of the solution's code keeps its header (and its
    docstring) and gets the body ``...  # your answer``, so the check cell after the solution
    names something the reader completes. Code with neither gives the plain answer cell.
    """
    import ast

    try:
        tree = ast.parse(code)
    except SyntaxError:
        return ANSWER_CELL
    lines = code.splitlines()
    stubs = []
    for node in tree.body:
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue
        first = node.decorator_list[0].lineno if node.decorator_list else node.lineno
        body = node.body[0]
        keep = body.end_lineno if _is_docstring(body) else body.lineno - 1
        header = lines[first - 1 : keep]
        indent = " " * (body.col_offset if body.col_offset else 4)
        stubs.append("\n".join(header + [f"{indent}...  # your answer"]))
    return "\n\n\n".join(stubs) + "\n" if stubs else ANSWER_CELL


def _is_docstring(node) -> bool:
    import ast

    return (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    )


def student_config(config: dict, execute: bool) -> dict:
    if not execute:
        config, _ = no_execute_config(config)
    config = absolute_extension_paths(config)
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
    """Cells without the gated solutions, and the number removed.

    A solution that had code leaves an answer cell (``stub_for`` its code); the code cell right
    after a solution (its check cell) loses the full edition's output.
    """
    out: list[dict] = []
    inside = False  # within solution-start … solution-end
    closing = None  # the fence that closes the directive line being skipped, if any
    removed = 0
    had_code = False
    code: list[str] = []  # the code of the solution being skipped
    after_solution = False  # the next code cell is the solution's check cell
    for cell in cells:
        if cell["cell_type"] != "markdown":
            if inside:
                if cell["cell_type"] == "code":
                    had_code = True
                    code.append(cell["source"])
            else:
                if after_solution and cell["cell_type"] == "code":
                    # the full edition's output of the check would pass for the reader's
                    cell = copy.deepcopy(cell)
                    cell["outputs"], cell["execution_count"] = [], None
                after_solution = False
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
                inside, closing, had_code, code = True, m.group("fence"), False, []
                pieces.append(kept)
                kept = []
                continue
            if inside and (m := END.match(stripped)):
                inside, closing = False, m.group("fence")
                removed += 1
                # a string: the answer cell that goes there (a stub of the solution's code)
                pieces.append(stub_for("\n\n".join(code)) if had_code else [])
                after_solution = True
                continue
            if not inside:
                kept.append(line)
                if stripped:
                    after_solution = False  # text between the solution and its check
        pieces.append(kept)
        if inside and pieces and pieces[-1] == []:
            pieces.pop()
        for piece in pieces:
            if isinstance(piece, str):
                out.append(_answer_cell(piece))
            elif "".join(piece).strip():
                new = copy.deepcopy(cell)
                new["source"] = "".join(piece).strip("\n")
                out.append(new)
    if inside:
        raise ValueError("a solution-start has no solution-end")
    return out, removed


def _answer_cell(source: str = ANSWER_CELL) -> dict:
    return {
        "cell_type": "code",
        "metadata": {"tags": ["student-answer"]},
        "execution_count": None,
        "outputs": [],
        "source": source,
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
