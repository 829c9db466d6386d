"""Keep the executed, paired notebooks ``book/X.ipynb`` in sync with the chapters ``book/X.md``.

The chapters are MyST Markdown notebooks (jupytext ``md:myst``). Beside each one the repository
commits an executed ``.ipynb``: Colab and Binder open it, and strict nbval re-executes it in
``make test`` to prove its outputs reproducible.

Subcommands:

``sync [CHAPTER ...]``
    Convert each chapter (default: all) to ``book/X.ipynb`` and execute it with nbclient on the
    CPU in a fixed environment, with stable cell ids (derived from the cell index), no timing
    metadata and kernel ``python3``. Each chapter's execution time goes into ``book/status.csv``
    (one row per chapter, in the order of ``_toc.yml``), which the status page
    ``book/status.md`` shows; it never enters a notebook, so nbval compares no timing.
``check``
    Exit non-zero if a chapter has no notebook, a notebook has no chapter, their cell types,
    sources or metadata (tags, options) differ, a notebook is not fully executed, or a chapter's
    first code cell is not the Colab install cell (tagged ``remove-cell``, installing from the
    repository URL in ``_config.yml``), or ``book/status.csv`` does not have exactly one row per
    chapter (linked if it is in ``_toc.yml``). ``jupytext --diff`` always exits 0, hence this check.
``status``
    Rewrite ``book/status.csv`` for the current chapters and ``_toc.yml``, keeping the times.

A chapter is a ``book/*.md`` file whose front matter has a ``jupytext`` section.
"""

from __future__ import annotations

import argparse
import copy
import csv
import datetime
import io
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
KERNEL = "python3"
# The environment the reference notebooks are executed in, here and by nbval in `make test`
# (the Makefile sets the same variables: keep the two lists equal).
DETERMINISTIC_ENV = {
    "CUDA_VISIBLE_DEVICES": "",
    "MTGMM_DEVICE": "cpu",
    "PYTHONHASHSEED": "0",
    "OMP_NUM_THREADS": "2",
    "MKL_NUM_THREADS": "2",
}
# Variables that would change what a chapter computes; unset so the quick preset is recorded.
UNSET_ENV = ("MTGMM_PRESET",)
# Cell metadata that says nothing about the source and may be added by editors or executors.
VOLATILE_CELL_METADATA = (
    "execution",
    "ExecuteTime",
    "collapsed",
    "scrolled",
    "jupyter",
)
SKIP_EXECUTION_TAG = "skip-execution"
# Per-chapter execution times of the last `sync`, shown by the status page book/status.md.
STATUS = BOOK / "status.csv"
STATUS_HEADER = [
    "Chapter",
    "Execution time (s)",
    "Code cells",
    "Executed on (UTC)",
    "Load (1 min)",
]
NOT_RECORDED = "not recorded"


def is_chapter(md: Path) -> bool:
    """True if ``md`` starts with YAML front matter that has a ``jupytext`` section."""
    text = md.read_text(encoding="utf-8")
    if not text.startswith("---"):
        return False
    end = text.find("\n---", 3)
    if end < 0:
        return False
    header = text[3:end]
    return any(line.rstrip() == "jupytext:" for line in header.splitlines())


def chapters() -> list[Path]:
    return sorted(p for p in BOOK.glob("*.md") if is_chapter(p))


def resolve(names: list[str]) -> list[Path]:
    if not names:
        return chapters()
    out = []
    for name in names:
        p = Path(name)
        candidates = [p, ROOT / p, BOOK / p, BOOK / f"{p.stem}.md"]
        md = next(
            (
                c.with_suffix(".md")
                for c in candidates
                if c.with_suffix(".md").is_file()
            ),
            None,
        )
        if md is None or not is_chapter(md):
            sys.exit(
                f"notebooks.py: {name}: not a chapter (book/X.md with a jupytext header)"
            )
        out.append(md.resolve())
    return out


def read_chapter(md: Path):
    import jupytext

    return jupytext.read(md, fmt="md:myst")


def clean_metadata(meta: dict) -> dict:
    meta = copy.deepcopy(dict(meta))
    for key in VOLATILE_CELL_METADATA:
        meta.pop(key, None)
    return meta


def sync_one(md: Path, timeout: int) -> int:
    """Execute ``md`` into ``md.with_suffix('.ipynb')``; return the number of executed cells."""
    import nbformat
    from nbclient import NotebookClient

    nb = read_chapter(md)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata.pop(
        "jupytext", None
    )  # the pairing is enforced by `check`, not by jupytext
    nb.metadata["kernelspec"] = {
        "display_name": "Python 3",
        "language": "python",
        "name": KERNEL,
    }
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
        cell["metadata"] = clean_metadata(cell.get("metadata", {}))
        if cell["cell_type"] == "code":
            cell["outputs"] = []
            cell["execution_count"] = None
    client = NotebookClient(
        nb,
        timeout=timeout,
        kernel_name=KERNEL,
        record_timing=False,
        allow_errors=False,
        skip_cells_with_tag=SKIP_EXECUTION_TAG,
        resources={"metadata": {"path": str(md.parent)}},
    )
    client.execute()
    for cell in nb.cells:
        for key in ("execution", "ExecuteTime"):
            cell["metadata"].pop(key, None)
    nb.metadata.pop("widgets", None)
    nbformat.validate(nb)
    out = md.with_suffix(".ipynb")
    text = nbformat.writes(nb, version=4)
    out.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
    return sum(
        1 for c in nb.cells if c["cell_type"] == "code" and c.get("execution_count")
    )


def toc_docnames() -> dict[str, int]:
    """The documents of ``_toc.yml`` (``book/X``), each with its position."""
    toc = ROOT / "_toc.yml"
    text = toc.read_text(encoding="utf-8") if toc.is_file() else ""
    order: dict[str, int] = {}
    for line in text.splitlines():
        line = line.strip().removeprefix("- ")
        if line.startswith(("file:", "root:")):
            name = line.split(":", 1)[1].strip().strip("'\"")
            order.setdefault(Path(name).with_suffix("").as_posix(), len(order))
    return order


def docname(md: Path) -> str:
    return md.relative_to(ROOT).with_suffix("").as_posix()


def status_cell(md: Path, toc: dict[str, int]) -> str:
    """The Chapter cell of ``book/status.csv``: a link to the chapter's page if it is built."""
    if docname(md) in toc:
        return f"{{doc}}`{md.stem}`"
    return f"{md.stem} (not in _toc.yml)"  # a link to a page not built would fail the build


def status_stem(cell: str) -> str:
    link = re.fullmatch(r"\{doc\}`([^`]+)`", cell)
    return link.group(1) if link else cell.split(" ", 1)[0]


def read_status() -> dict[str, list[str]]:
    """The rows of ``book/status.csv`` by chapter stem (header excluded)."""
    if not STATUS.is_file():
        return {}
    rows = list(csv.reader(io.StringIO(STATUS.read_text(encoding="utf-8"))))
    return {status_stem(row[0]): row for row in rows[1:] if row}


def status_rows(recorded: dict[str, list[str]]) -> list[list[str]]:
    """One row per chapter in the order of ``_toc.yml``: ``recorded`` over the existing rows."""
    old = read_status()
    toc = toc_docnames()
    mds = sorted(chapters(), key=lambda md: (toc.get(docname(md), len(toc)), md.name))
    rows = []
    for md in mds:
        values = (
            recorded.get(md.stem)
            or old.get(md.stem, [""])[1:]
            or [NOT_RECORDED, "", "", ""]
        )
        values = list(values) + [""] * (len(STATUS_HEADER) - 1 - len(values))
        rows.append([status_cell(md, toc)] + values)
    return rows


def write_status(recorded: dict[str, list[str]]) -> None:
    """Rewrite ``book/status.csv`` (``recorded``: stem -> [seconds, cells, day, load])."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(STATUS_HEADER)
    writer.writerows(status_rows(recorded))
    STATUS.write_text(out.getvalue(), encoding="utf-8")


def cmd_sync(args) -> int:
    for key, value in DETERMINISTIC_ENV.items():
        os.environ[key] = value
    for key in UNSET_ENV:
        os.environ.pop(key, None)
    for md in resolve(args.chapters):
        t0 = time.perf_counter()
        print(
            f"sync {md.relative_to(ROOT)} -> {md.with_suffix('.ipynb').name} ...",
            flush=True,
        )
        cells = sync_one(md, args.timeout)
        seconds = time.perf_counter() - t0
        print(f"  done in {seconds:.1f} s", flush=True)
        day = datetime.datetime.now(datetime.timezone.utc).date().isoformat()
        load = f"{os.getloadavg()[0]:.1f}"  # other work on the machine slows a chapter
        write_status({md.stem: [f"{seconds:.0f}", str(cells), day, load]})
    return 0


def cmd_status(args) -> int:
    write_status({})
    print(f"notebooks.py status: rewrote {STATUS.relative_to(ROOT)}")
    return 0


def repository_url() -> str:
    import yaml

    config = yaml.safe_load((ROOT / "_config.yml").read_text(encoding="utf-8"))
    return config["repository"]["url"].rstrip("/")


def cell_key(cell) -> tuple:
    source = cell["source"]
    if isinstance(source, list):
        source = "".join(source)
    return (
        cell["cell_type"],
        source.strip("\n"),
        clean_metadata(cell.get("metadata", {})),
    )


def check_one(md: Path, url: str) -> list[str]:
    import nbformat

    rel = md.relative_to(ROOT)
    ipynb = md.with_suffix(".ipynb")
    problems = []
    if not ipynb.is_file():
        return [f"{rel}: no paired {ipynb.name} (run `make notebooks`)"]
    src = read_chapter(md)
    nb = nbformat.read(ipynb, as_version=4)
    try:
        nbformat.validate(nb)
    except nbformat.ValidationError as err:
        problems.append(f"{ipynb.name}: invalid notebook: {err.message}")
    a = [cell_key(c) for c in src.cells]
    b = [cell_key(c) for c in nb.cells]
    if len(a) != len(b):
        problems.append(f"{rel}: {len(a)} cells, but {ipynb.name} has {len(b)}")
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        for what, u, v in zip(("cell type", "source", "metadata"), x, y, strict=True):
            if u != v:
                problems.append(f"{rel}: cell {i}: {what} differs from {ipynb.name}")
                break
    if nb.metadata.get("kernelspec", {}).get("name") != KERNEL:
        problems.append(f"{ipynb.name}: kernelspec is not {KERNEL}")
    for i, cell in enumerate(nb.cells):
        tags = cell.get("metadata", {}).get("tags", [])
        if cell["cell_type"] != "code":
            continue
        figure = cell.get("metadata", {}).get("mystnb", {}).get("figure")
        rich = [o for o in cell.get("outputs", []) if o.get("output_type") != "stream"]
        if figure and len(rich) != 1:
            # myst-nb wraps every rich output in the figure: two outputs, two targets; none, and
            # the caption is left without a figure
            problems.append(
                f"{ipynb.name}: figure cell {i} has {len(rich)} outputs (expected 1)"
            )
        if cell["source"].rstrip().endswith(";"):
            # nbval runs cells with store_history=False, where a trailing ';' does not
            # silence the last value: its repr would appear in nbval's output only
            problems.append(
                f"{ipynb.name}: cell {i} ends with ';' (assign to _ instead)"
            )
        if SKIP_EXECUTION_TAG in tags and "nbval-skip" not in tags:
            # nbclient and myst-nb skip such a cell, nbval would run it
            problems.append(
                f"{ipynb.name}: cell {i} is tagged {SKIP_EXECUTION_TAG} but not nbval-skip"
            )
        elif SKIP_EXECUTION_TAG not in tags and cell.get("execution_count") is None:
            if cell["source"].strip():  # nbval compares no output of an unexecuted cell
                problems.append(
                    f"{ipynb.name}: cell {i} was not executed (run `make notebooks`)"
                )
    code = [c for c in src.cells if c["cell_type"] == "code"]
    if not code:
        problems.append(f"{rel}: no code cell (expected the Colab install cell first)")
    else:
        first = code[0]
        if "remove-cell" not in first.get("metadata", {}).get("tags", []):
            problems.append(
                f"{rel}: first code cell is not tagged remove-cell (Colab cell)"
            )
        if "google.colab" not in first["source"] or f"git+{url}" not in first["source"]:
            problems.append(
                f"{rel}: first code cell must be the Colab install cell of book/_colab_cell.txt "
                f"(installing git+{url})"
            )
    return problems


def cmd_check(args) -> int:
    url = repository_url()
    problems = []
    mds = chapters()
    if not mds:
        problems.append("book/: no chapter found")
    for md in mds:
        problems += check_one(md, url)
    for ipynb in sorted(BOOK.glob("*.ipynb")):
        md = ipynb.with_suffix(".md")
        if not (md.is_file() and is_chapter(md)):
            problems.append(
                f"{ipynb.relative_to(ROOT)}: no chapter {md.name} with a jupytext header"
            )
    status, where = read_status(), STATUS.relative_to(ROOT)
    if [row[0] for row in status_rows({})] != [row[0] for row in status.values()]:
        problems.append(
            f"{where}: its rows are not one per chapter in the order and form of _toc.yml "
            "(`python tools/notebooks.py status` rewrites them, keeping the times)"
        )
    for p in problems:
        print(f"notebooks.py check: {p}", file=sys.stderr)
    if problems:
        print(
            f"{len(problems)} problem(s); `make notebooks` regenerates the notebooks.",
            file=sys.stderr,
        )
        return 1
    print(f"notebooks.py check: {len(mds)} chapter(s) and their notebooks agree")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_sync = sub.add_parser(
        "sync", help="write executed book/X.ipynb for chapters (default all)"
    )
    p_sync.add_argument(
        "chapters", nargs="*", help="chapter names or paths, e.g. notation"
    )
    p_sync.add_argument(
        "--timeout", type=int, default=600, help="per-cell timeout in seconds"
    )
    p_sync.set_defaults(func=cmd_sync)
    p_check = sub.add_parser(
        "check", help="fail if a chapter and its notebook disagree"
    )
    p_check.set_defaults(func=cmd_check)
    p_status = sub.add_parser(
        "status", help="rewrite book/status.csv for the current _toc.yml"
    )
    p_status.set_defaults(func=cmd_status)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
