"""Run one chapter notebook as Colab would (used by test_colab.py; runs in the Colab-like venv).

``python colab_run.py NOTEBOOK --url URL --source DIR --cwd DIR`` executes NOTEBOOK top to
bottom with nbclient in this interpreter's kernel, after rewriting the install line of its
Colab cell, ``%pip install … "mtgmm @ git+URL"``, to install from the local copy DIR of the
repository instead (GitHub is out of reach of the tests). A last cell is appended that prints,
as JSON, what the kernel ended with: ``IN_COLAB``, the versions of torch, and where ``mtgmm``
was imported from. This script prints that JSON as its last line of output.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat
from nbclient import NotebookClient

REPORT = """\
import json, sys, torch, mtgmm
print(json.dumps({"in_colab": IN_COLAB, "torch": torch.__version__,
                  "mtgmm": mtgmm.__file__, "python": sys.executable}))
"""


def rewrite_install_cell(nb, url: str, source: Path) -> None:
    cell = next(c for c in nb.cells if c.cell_type == "code")
    old = f'"mtgmm @ git+{url}"'
    if "google.colab" not in cell.source or old not in cell.source:
        sys.exit(
            f"colab_run.py: the first code cell does not install {old}:\n{cell.source}"
        )
    cell.source = cell.source.replace(old, f'"mtgmm @ {source.resolve().as_uri()}"')


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("notebook", type=Path)
    parser.add_argument(
        "--url", required=True, help="repository URL in the install cell"
    )
    parser.add_argument(
        "--source", type=Path, required=True, help="local copy to install"
    )
    parser.add_argument(
        "--cwd", type=Path, required=True, help="working directory (Colab's)"
    )
    parser.add_argument(
        "--timeout", type=int, default=600, help="per-cell timeout, seconds"
    )
    args = parser.parse_args()

    nb = nbformat.read(args.notebook, as_version=4)
    rewrite_install_cell(nb, args.url, args.source)
    nb.cells.append(nbformat.v4.new_code_cell(REPORT))
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    client = NotebookClient(
        nb,
        timeout=args.timeout,
        kernel_name="python3",
        allow_errors=False,
        resources={"metadata": {"path": str(args.cwd)}},
    )
    client.execute()
    last = nb.cells[-1].outputs
    text = "".join(o.get("text", "") for o in last if o.get("output_type") == "stream")
    print(text.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
