"""``python -m mtgmm`` (this file, `tools/full_preset.py`): every figure of the book at full scale.

Executes each chapter (``book/*.md`` MyST notebooks, in table-of-contents order) with the
full preset on the best available device, writes the executed notebooks and every figure
(PNG) into an output folder, and prints the execution time of each chapter. Run it from a
checkout of the book's repository (it needs ``jupytext`` and ``nbclient``, installed by the
``test`` extra). ``--quick`` runs the quick preset instead; ``--chapters`` selects chapters.

The times and the kernel's peak memory go to ``times.csv`` in the output folder;
``--record`` also merges them into ``book/full_scale.csv``, the table of the book's page
*Reproduce at full scale* (one row per chapter and device, replaced when measured again), and
copies each executed notebook and its figures into ``book/full/`` (figures as PNG files beside
the notebook, which keeps its text outputs), where that page shows them.
"""

from __future__ import annotations

import argparse
import base64
import csv
import datetime
import os
import platform
import re
import sys
import time
from pathlib import Path


def _chapters(book: Path, selected: list[str]) -> list[Path]:
    toc = book.parent / "_toc.yml"
    order = []
    if toc.is_file():
        order = [
            line.split("book/")[-1].strip()
            for line in toc.read_text().splitlines()
            if "file: book/" in line or "root: book/" in line
        ]
    chapters = [book / f"{name}.md" for name in order] or sorted(book.glob("*.md"))
    chapters = [
        c for c in chapters if c.is_file() and "jupytext:" in c.read_text()[:400]
    ]
    if selected:
        chapters = [c for c in chapters if c.stem in selected]
    return chapters


def _peak_gb(pid: int | None) -> float:
    """Peak resident memory (VmHWM) of the process ``pid`` in GB; NaN where unknown."""
    status = Path(f"/proc/{pid}/status")
    if pid is None or not status.is_file():
        return float("nan")
    for line in status.read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1e6
    return float("nan")


def _run(chapter: Path, out: Path, preset: str) -> tuple[float, float, int]:
    """Execute ``chapter``; write the notebook and its figures; (seconds, peak GB, number
    of cells that raised)."""
    import jupytext
    import nbclient
    import nbformat

    notebook = jupytext.read(chapter)
    os.environ["MTGMM_PRESET"] = preset
    start = time.perf_counter()
    client = nbclient.NotebookClient(
        notebook,
        kernel_name="python3",
        timeout=None,
        allow_errors=True,  # a failed check is recorded, and the chapter goes on
        resources={"metadata": {"path": str(chapter.parent)}},
    )
    with client.setup_kernel():
        for index, cell in enumerate(notebook.cells):
            client.execute_cell(cell, index)
        provisioner = getattr(client.km, "provisioner", None)
        peak = _peak_gb(getattr(provisioner, "pid", None))
    elapsed = time.perf_counter() - start
    notebook.metadata["mtgmm"] = {"preset": preset, "failed": _failures(notebook)}
    nbformat.write(notebook, out / f"{chapter.stem}.ipynb")
    figures = [
        output["data"]["image/png"]
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.get("outputs", [])
        if "image/png" in output.get("data", {})
    ]
    for i, png in enumerate(figures, 1):
        (out / f"{chapter.stem}-fig{i}.png").write_bytes(base64.b64decode(png))
    return elapsed, peak, len(notebook.metadata["mtgmm"]["failed"])


ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _text(cell) -> str:
    """The printed text of a code cell (streams and plain-text results)."""
    parts = []
    for output in cell.get("outputs", []):
        if output.get("output_type") == "stream":
            parts.append(output["text"])
        elif "text/plain" in output.get("data", {}):
            parts.append(output["data"]["text/plain"])
    return "\n".join(parts).strip()


def _failures(notebook) -> list[dict]:
    """The code cells that raised: their number among the code cells, the error, the line
    of the cell that raised (for a failed ``assert``, the check itself; read off the
    traceback's arrow) and the printed text of the cell and of the code cell before it,
    which is what the check read."""
    failed, previous, k = [], None, 0
    for cell in notebook.cells:
        if cell.cell_type != "code":
            continue
        k += 1
        for output in cell.get("outputs", []):
            if output.get("output_type") != "error":
                continue
            arrows = [
                line.strip().split(maxsplit=2)[-1]
                for entry in output.get("traceback", [])
                for line in ANSI.sub("", entry).splitlines()
                if line.strip().startswith("---->")
            ]
            lines = cell.source.splitlines()
            failed.append(
                {
                    "cell": k,
                    "error": ": ".join(
                        x for x in (output["ename"], output["evalue"]) if x
                    )[:200],
                    "source": arrows[0] if arrows else lines[0] if lines else "",
                    "read": "\n\n".join(
                        t
                        for t in (_text(previous) if previous else "", _text(cell))
                        if t
                    )[:4000],
                }
            )
        previous = cell
    return failed


def _keep(chapter: str, out: Path, book: Path) -> None:
    """Copy the executed notebook into ``book/full/``, each figure as a PNG file beside it
    (the notebook keeps a one-line pointer in its place)."""
    import nbformat

    full = book / "full"
    full.mkdir(exist_ok=True)
    for old in full.glob(f"{chapter}-fig*.png"):
        old.unlink()
    notebook = nbformat.read(out / f"{chapter}.ipynb", as_version=4)
    k = 0
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = output.get("data", {})
            if "image/png" in data:
                k += 1
                name = f"{chapter}-fig{k}.png"
                (full / name).write_bytes(base64.b64decode(data.pop("image/png")))
                data["text/plain"] = f"[figure {k}: {name}]"
            output.get("metadata", {}).pop("image/png", None)
    nbformat.write(notebook, full / f"{chapter}.ipynb")
    _index(book)


def _index(book: Path) -> None:
    """Write ``book/full/figures.md``, which the page *Reproduce at full scale* includes: for
    each kept chapter (table-of-contents order), a link to its executed notebook and every
    figure, named after the chapter's own figure."""
    import nbformat

    full, lines = book / "full", []
    for chapter in _chapters(book, []):
        path = full / f"{chapter.stem}.ipynb"
        if not path.is_file():
            continue
        notebook = nbformat.read(path, as_version=4)
        preset = notebook.metadata.get("mtgmm", {}).get("preset", "full")
        lines += [
            f"### {{doc}}`{chapter.stem}`",
            "",
            f"The executed notebook ({preset} preset): "
            f"{{download}}`full/{chapter.stem}.ipynb`.",
            "",
        ]
        failed = notebook.metadata.get("mtgmm", {}).get("failed", [])
        if failed:
            lines += [
                f"At this preset {len(failed)} code cell(s) raise. The chapter's checks "
                "are written for the quick preset, so a failed `assert` here is a claim "
                "of the text that does not hold at these sizes:",
                "",
            ]
            for f in failed:
                lines += [
                    f"- code cell {f['cell']}, ``{f['error']}``, at ``{f['source']}``",
                    "",
                ]
                if f.get("read"):
                    lines += [
                        "  ````{admonition} What the check read (the cell and the one "
                        "before it)",
                        "  :class: dropdown",
                        "",
                        "  ```text",
                        *[f"  {line}".rstrip() for line in f["read"].splitlines()],
                        "  ```",
                        "  ````",
                        "",
                    ]
        k = 0
        for cell in notebook.cells:
            outputs = cell.get("outputs", []) if cell.cell_type == "code" else []
            for output in outputs:
                if not str(output.get("data", {}).get("text/plain", "")).startswith(
                    "[figure "
                ):
                    continue
                k += 1
                name = cell.metadata.get("mystnb", {}).get("figure", {}).get("name")
                of = f"{{numref}}`{name}`" if name else f"figure {k}"
                lines += [
                    f":::{{figure}} full/{chapter.stem}-fig{k}.png",
                    f":name: full-{chapter.stem}-{k}",
                    "",
                    f"{preset.capitalize()} preset of {of} ({{doc}}`{chapter.stem}`).",
                    ":::",
                    "",
                ]
    (full / "figures.md").write_text("\n".join(lines) or "No chapter recorded yet.\n")


TIMES_HEADER = [
    "Chapter",
    "Preset",
    "Device",
    "Time (s)",
    "Peak (GB)",
    "Failed",
    "Machine",
    "Date (UTC)",
]


def _machine(device: str) -> str:
    """A short description of where the chapters ran."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(0)
    cpuinfo = Path("/proc/cpuinfo")
    names = [
        line.split(":", 1)[1].strip()
        for line in (cpuinfo.read_text().splitlines() if cpuinfo.is_file() else [])
        if line.startswith("model name")
    ]
    return f"{names[0] if names else platform.machine()}, {os.cpu_count()} cores"


def _write_times(path: Path, rows: list[list[str]], merge: bool) -> None:
    """Write ``rows`` to the CSV ``path``; with ``merge``, keep the existing rows of other
    (chapter, preset, device) keys, in their order, and append or replace ours."""
    kept: list[list[str]] = []
    if merge and path.is_file():
        with path.open(newline="", encoding="utf-8") as f:
            kept = list(csv.reader(f))[1:]
    ours = {tuple(r[:3]): r for r in rows}
    merged = [ours.pop(tuple(r[:3]), r) for r in kept] + list(ours.values())
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows([TIMES_HEADER, *merged])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mtgmm", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--book", type=Path, default=Path("book"), help="folder of the chapters"
    )
    parser.add_argument(
        "--out", type=Path, default=Path("_build/full"), help="output folder"
    )
    parser.add_argument(
        "--quick", action="store_true", help="run the quick preset instead"
    )
    parser.add_argument(
        "--chapters", nargs="*", default=[], help="chapter names (default: all)"
    )
    parser.add_argument(
        "--record", action="store_true", help="merge the times into book/full_scale.csv"
    )
    args = parser.parse_args(argv)
    chapters = _chapters(args.book, args.chapters)
    if not chapters:
        print(f"no chapters found in {args.book.resolve()}", file=sys.stderr)
        return 1
    from mtgmm.runtime import pick_device

    preset = "quick" if args.quick else "full"
    args.out.mkdir(parents=True, exist_ok=True)
    device = pick_device().type
    print(f"preset {preset} on {device}; writing to {args.out.resolve()}")
    today, machine, rows = datetime.date.today().isoformat(), _machine(device), []
    failed = 0
    for chapter in chapters:
        seconds, peak, n_failed = _run(chapter, args.out, preset)
        failed += n_failed
        print(
            f"{chapter.stem:>12}: {seconds:8.1f} s, peak {peak:.2f} GB, "
            f"{n_failed} cell(s) raised",
            flush=True,
        )
        rows.append(
            [
                f"{{doc}}`{chapter.stem}`",
                preset,
                device,
                f"{seconds:.0f}",
                f"{peak:.1f}",
                str(n_failed),
                machine,
                today,
            ]
        )
        _write_times(args.out / "times.csv", rows, merge=False)
        if args.record:  # chapter by chapter, so that a later failure loses nothing
            _write_times(args.book / "full_scale.csv", rows[-1:], merge=True)
            _keep(chapter.stem, args.out, args.book)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
