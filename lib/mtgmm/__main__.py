"""``python -m mtgmm``: execute the book's chapters at full scale.

The runner executes ``book/*.md`` and writes into the repository, so it lives with the
book's tools, in ``tools/full_preset.py`` (options: ``python -m mtgmm --help``). Run it from
a checkout of the repository.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Run ``tools/full_preset.py`` of the checkout that holds this package (or of the
    current folder) with the arguments ``argv``."""
    here = Path(__file__).resolve().parents[2]
    for root in (here, Path.cwd()):
        script = root / "tools" / "full_preset.py"
        if script.is_file():
            return runpy.run_path(str(script))["main"](argv)
    print("python -m mtgmm runs from a checkout of the book (tools/full_preset.py)")
    return 1


if __name__ == "__main__":
    sys.exit(main())
