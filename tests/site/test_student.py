"""The student edition (``make student``): every exercise, no solution, every check cell.

Each gated solution of a chapter's source (``solution-start`` … ``solution-end``) is read from
``book/X.md``; its code lines and its phrases of prose must appear in the full book (a check
that the test looks for the right text) and nowhere in the student edition, while the check
cell right after it (which asserts the reader's function against ``mtgmm``) must appear in
both. (The notebooks to hand out are the assignments' student notebooks, checked by
tests/test_assignments.py.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from bs4 import BeautifulSoup
from helpers import ROOT, is_chapter, toc_docnames

CHAPTERS = [d for d in toc_docnames() if is_chapter(d)]
# pages with code but no exercises: the landing page
WITHOUT_EXERCISES = {"book/intro"}
FENCE = re.compile(r"^(`{3,}|:{3,})\{([a-z:-]+)\}")
PHRASE = re.compile(r"(?:[A-Za-z]+ ){4,}[A-Za-z]+")  # five or more plain words in a row


@dataclass
class Solution:
    label: str
    code: list[str] = field(default_factory=list)  # lines of its code cells
    prose: list[str] = field(default_factory=list)  # phrases of its text
    check: list[str] = field(
        default_factory=list
    )  # lines of the code cell right after it


def code_cells(lines: list[str], i: int) -> tuple[list[str], int]:
    """The code lines of the ``code-cell`` that opens at line ``i``; the line after it."""
    fence = FENCE.match(lines[i]).group(1)
    out, j = [], i + 1
    while j < len(lines) and lines[j].startswith(":"):  # options such as :tags:
        j += 1
    while j < len(lines) and lines[j].strip() != fence:
        if lines[j].strip():
            out.append(lines[j].strip())
        j += 1
    return out, j + 1


def solutions(md: Path) -> tuple[list[Solution], set[str]]:
    """The gated solutions of a chapter, and the code lines outside them."""
    lines = md.read_text(encoding="utf-8").splitlines()
    found: list[Solution] = []
    outside: set[str] = set()
    outside_text: list[
        str
    ] = []  # prose outside the solutions, to tell their own phrases
    current = None
    after_end = False
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i].strip())
        name = m.group(2) if m else None
        if name == "solution-start":
            current = Solution(label=lines[i].split("}", 1)[1].strip())
            after_end = False
        elif name == "solution-end":
            found.append(current)
            current, after_end = None, True
        elif name == "code-cell":
            code, i = code_cells(lines, i)
            if current is not None:
                current.code += code
            else:
                outside.update(code)
                if after_end:
                    found[-1].check = code
            after_end = False
            continue
        elif lines[i].strip() and after_end and not m and lines[i].strip() != "```":
            after_end = False  # text between the solution and the next code cell
        elif not m and not lines[i].startswith(":"):
            text = re.sub(r"\$[^$]*\$|\{[a-z:]+\}`[^`]*`|`[^`]*`", " ", lines[i])
            if current is not None:
                current.prose += PHRASE.findall(text)
            else:
                outside_text.append(text)
        i += 1
    # a phrase that the chapter also uses outside the solution may stay in the student edition
    rest = " ".join(" ".join(outside_text).split())
    for sol in found:
        sol.prose = [phrase for phrase in sol.prose if phrase not in rest]
    return found, outside


def soup(html: Path) -> BeautifulSoup:
    return BeautifulSoup(html.read_text(encoding="utf-8"), "html.parser")


def page_text(html: Path) -> tuple[str, str]:
    """(all text, text of the code blocks) of a built page, whitespace normalised per line."""
    doc = soup(html)
    main = doc.select_one("main") or doc
    text = " ".join(main.get_text(" ").split())
    code = "\n".join(
        " ".join(line.split())
        for pre in main.select("pre")
        for line in pre.get_text().splitlines()
    )
    return text, code


def stub_headers(sol: Solution) -> list[str]:
    """The headers of the functions and classes the solution defines (the student's stub)."""
    return [
        " ".join(c.split()) for c in sol.code if re.match(r"(async )?(def|class) ", c)
    ]


def hidden_lines(sol: Solution, outside: set[str]) -> list[str]:
    """The solution's code lines that appear nowhere else in the chapter (so must vanish).

    The headers of its functions stay, with their docstrings (what the function must
    return): the student edition leaves them as a stub.
    """
    headers = set(stub_headers(sol))
    return [
        " ".join(c.split())
        for c in sol.code
        if c not in outside
        and len(c) >= 8
        and " ".join(c.split()) not in headers
        and not c.strip().startswith(('"""', "'''"))
    ]


def check_cell_outputs(doc: BeautifulSoup, sol: Solution) -> list[int]:
    """For each cell of the page whose code holds the solution's check, its output count."""
    if not sol.check:
        return []
    first = " ".join(sol.check[0].split())
    counts = []
    for cell in doc.select("div.cell"):
        pre = cell.select_one(".cell_input pre")
        if pre and first in " ".join(pre.get_text().split()):
            counts.append(len(cell.select(".cell_output")))
    return counts


@pytest.mark.parametrize("docname", CHAPTERS)
def test_student_page(site, student_site, docname):
    sols, outside = solutions(ROOT / f"{docname}.md")
    full_text, full_code = page_text(site / f"{docname}.html")
    text, code = page_text(student_site / f"{docname}.html")
    student = BeautifulSoup(
        (student_site / f"{docname}.html").read_text(encoding="utf-8"), "html.parser"
    )
    full = BeautifulSoup(
        (site / f"{docname}.html").read_text(encoding="utf-8"), "html.parser"
    )

    n_exercises = len(full.select("div.exercise"))
    assert len(student.select("div.exercise")) == n_exercises
    assert (n_exercises > 0) == (docname not in WITHOUT_EXERCISES)
    assert not student.select("div.solution"), "a solution box in the student edition"
    assert not student.select(".dropdown-launch-buttons"), (
        "launch buttons open the full book"
    )
    assert not student.select("a[href$='.ipynb']"), (
        "a link to a notebook with the solutions"
    )
    for sol in sols:
        for line in hidden_lines(sol, outside):
            assert line in full_code, (
                f"{sol.label}: {line!r} not found in the full book"
            )
            # whole lines: a short solution line may be part of a longer line elsewhere
            assert line not in code.splitlines(), (
                f"{sol.label}: solution code {line!r} in the student edition"
            )
        for phrase in sol.prose:
            assert phrase in full_text, (
                f"{sol.label}: {phrase!r} not found in the full book"
            )
            assert phrase not in text, (
                f"{sol.label}: solution text {phrase!r} in the student edition"
            )
        for line in sol.check:
            line = " ".join(line.split())
            assert line in code, f"{sol.label}: check cell line {line!r} missing"
        # the full edition's output of a check would read as the student's own result
        outputs = check_cell_outputs(student, sol)
        assert sum(outputs) == 0, f"{sol.label}: the check cell keeps its output"
        lines = code.splitlines()
        for header in stub_headers(sol):
            assert header in lines, f"{sol.label}: no stub {header!r} to complete"


def test_some_solutions_have_checks():
    """The test above is not vacuous: the book has gated solutions, with check cells."""
    found = [s for d in CHAPTERS for s in solutions(ROOT / f"{d}.md")[0]]
    assert found, "no gated solution in any chapter"
    assert any(s.check for s in found), "no check cell after any solution"
    assert any(s.prose for s in found) and any(s.code for s in found)
    assert any(stub_headers(s) and s.check for s in found), (
        "no solution defines a function"
    )


def test_check_cells_have_output_in_the_full_book(site):
    """The output check of the student test is not vacuous: the full book shows them."""
    counts = [
        n
        for d in CHAPTERS
        for s in solutions(ROOT / f"{d}.md")[0]
        for n in check_cell_outputs(
            BeautifulSoup(
                (site / f"{d}.html").read_text(encoding="utf-8"), "html.parser"
            ),
            s,
        )
    ]
    assert counts and any(counts), "no check cell found with an output in the full book"


def test_student_site_hands_out_no_sources(student_site):
    assert not (student_site / "_sources").exists(), "_sources holds the full notebooks"
