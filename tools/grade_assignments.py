"""Grade a folder of submitted notebooks with an assignment's autograder (``make grade``).

``python tools/grade_assignments.py AUTOGRADER.zip SUBMISSIONS/ [-o grades.csv]`` runs each
``SUBMISSIONS/*.ipynb`` through Otter-Grader's autograder locally (``otter run``'s grading,
without Docker: the current environment must hold the pinned stack, as after
``make bootstrap``) and writes one row per submission: each question's score, the total and
the percentage, like ``otter grade``'s ``final_grades.csv``. With Docker,
``otter grade -a AUTOGRADER.zip SUBMISSIONS/`` does the same in containers.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path


def grade(submission: Path, autograder: Path):
    """Otter's ``GradingResults`` of one notebook."""
    import otter.api

    return otter.api.grade_submission(str(submission), str(autograder), quiet=True)


def scores(results) -> dict[str, float]:
    row = {name: tf.score for name, tf in results.results.items()}
    row["total"] = results.total
    row["possible"] = results.possible
    row["percent"] = round(100 * results.total / results.possible, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("autograder", type=Path, help="the autograder zip")
    parser.add_argument("submissions", type=Path, help="a folder of .ipynb submissions")
    parser.add_argument(
        "-o", "--output", type=Path, help="CSV (default: SUBMISSIONS/grades.csv)"
    )
    args = parser.parse_args(argv)
    notebooks = sorted(args.submissions.glob("*.ipynb"))
    if not notebooks:
        print(f"grade_assignments.py: no .ipynb in {args.submissions}", file=sys.stderr)
        return 1
    rows = []
    for nb in notebooks:
        row = {"file": nb.name, **scores(grade(nb, args.autograder))}
        print(f"{nb.name}: {row['total']:g} / {row['possible']:g}", flush=True)
        rows.append(row)
    out = args.output or args.submissions / "grades.csv"
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with out.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    print(f"grade_assignments.py: {len(rows)} submission(s) graded into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
