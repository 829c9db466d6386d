"""Fail on prose that cites what a reader cannot see (``make lint``).

A chapter may only cite what it computes in front of the reader. Phrases that point at
planning documents, runs not shown, or docstrings as evidence are errors here.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = [
    r"science brief",
    r"planning (note|document)s?",
    r"\bnot re-?run\b",
    r"\bthe docstring (records|says|notes)\b",
    r"\b(runs?|results?) not shown\b",
    r"\bshared/",
]
PATTERN = re.compile("|".join(FORBIDDEN), re.IGNORECASE)


def main() -> int:
    bad = []
    for path in sorted((ROOT / "book").glob("*.md")) + [ROOT / "README.md"]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if m := PATTERN.search(line):
                bad.append(
                    f"{path.relative_to(ROOT)}:{n}: {m.group(0)!r}: {line.strip()}"
                )
    print("\n".join(bad) or "prose check: no citation of unseen material")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
