"""The graded assignments (``make assignments``, tools/build_assignments.py) grade as they should.

For each chapter of ``ASSIGNMENT_CHAPTERS`` (default: ``ddpm mixture``, what fits in
``make test``; ``make test-assignments`` sets it to every chapter with a question file) the
assignment is built into a temporary folder and graded with its own autograder (Otter-Grader,
no Docker):

- the instructor's solution notebook scores full marks;
- the blank student notebook scores zero, and fails every hidden test;
- each question's deliberately wrong answer (its ``wrong`` substitution, a sign error) fails
  that question's stored-value tests and loses points on it, and on no other question;
- the student notebook and its visible tests name no package function that a question asks
  the student to write, hold no line of a solution, define none of its functions and compute
  none of its formulas outside the answer cell (``build_assignments.solution_leaks``; a fast
  test checks every chapter's master notebook so, and another that the check can fail), and
  run top to bottom in a fresh kernel (only the cells tagged ``raises-exception`` may fail).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))

otter = pytest.importorskip(
    "otter", reason="otter-grader (the assign extra) not installed"
)

import build_assignments as ba  # noqa: E402
from grade_assignments import grade  # noqa: E402

# otter's grading summary uses a pandas keyword that pandas 3.1 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:The inplace keyword:Warning")

_chosen = os.environ.get("ASSIGNMENT_CHAPTERS", "ddpm mixture").split()
CHAPTERS = ba.chapters_with_questions() if _chosen == ["all"] else _chosen


def test_question_files_name_their_chapters():
    assert set(CHAPTERS) <= set(ba.chapters_with_questions())
    for chapter in ba.chapters_with_questions():
        questions = ba.load_questions(chapter)
        assert questions, chapter
        for q in questions.values():
            kinds = {kind for kind, _, _ in q.tests}
            assert kinds <= {"visible", "hidden", "stored"}
            assert "visible" in kinds and "stored" in kinds, q.label
            assert q.wrong is not None, f"{q.label}: no wrong answer to test with"


def test_every_coding_exercise_is_graded():
    """Of the chapters with a question file, each exercise that asks for a function: its
    solution defines a function that the chapter's text outside the solutions names."""
    for chapter in ba.chapters_with_questions():
        nb = nbformat.read(ba.BOOK / f"{chapter}.ipynb", as_version=4)
        items = ba.split_chapter(nb.cells)
        text = "\n".join(
            c["source"]
            for c in items
            if isinstance(c, dict) and c["cell_type"] == "markdown"
        )
        coding = {
            s.label
            for s in items
            if isinstance(s, ba.Solution)
            and any(f"`{name}" in text for name in s.functions)
        }
        assert coding, chapter
        assert coding <= set(ba.load_questions(chapter)), chapter


@pytest.mark.parametrize("chapter", ba.chapters_with_exercises())
def test_master_notebook_builds(chapter):
    """Fast, every chapter with exercises: the otter master notebook can be made (a question
    whose package function a chapter cell calls needs a route, and so on)."""
    master, graded = ba.master_notebook(chapter)
    sources = [c.source for c in master.cells]
    assert sources[0].startswith("# ASSIGNMENT CONFIG")
    for q in graded.values():
        assert f"name: {q.function}\npoints: {q.points}" in "\n".join(sources)
    # the student's code reaches no answer: no package function that a question asks for,
    # no definition of a solution's function, no formula of a solution's code
    code = ba.student_code(master)
    for q in graded.values():
        assert not ba.solution_leaks(code, q, _solutions(chapter)[q.label]), q.label


def _solutions(chapter: str) -> dict:
    book = nbformat.read(ba.BOOK / f"{chapter}.ipynb", as_version=4)
    return {
        s.label: s for s in ba.split_chapter(book.cells) if isinstance(s, ba.Solution)
    }


def test_leak_check_can_fail():
    """The check above finds each way a student notebook could reach an answer."""
    master, graded = ba.master_notebook("mixture")
    code = ba.student_code(master)
    q = graded["ex-mixture-code-oracle"]
    sol = _solutions("mixture")[q.label]
    assert not ba.solution_leaks(code, q, sol)
    body = sol.code.replace(f"def {q.function}(", "def helper(")
    for leak, expected in [
        ("eps = mtgmm.oracle_eps(gmm, x, 0.5)", "names oracle_eps"),
        ("from mtgmm.oracle import oracle_eps", "names oracle_eps"),
        (sol.code, f"cells define {q.function}"),
        (body, "computes the solution's"),
    ]:
        found = ba.solution_leaks([*code, leak], q, sol)
        assert any(expected in f for f in found), (leak, found)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignments")
    return {chapter: ba.build(chapter, out) for chapter in CHAPTERS}


def _autograder(folder: Path, chapter: str) -> Path:
    return folder / "autograder" / f"{chapter}-autograder.zip"


def _hidden_results(results) -> list[tuple[str, bool]]:
    return [
        (f"{name}: {t.test_case.name}", t.passed)
        for name, tf in results.results.items()
        for t in tf.test_case_results
        if t.test_case.hidden
    ]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_layout(built, chapter):
    folder = built[chapter]
    assert (folder / "student" / f"{chapter}.ipynb").is_file()
    assert (folder / "autograder" / f"{chapter}.ipynb").is_file()
    assert _autograder(folder, chapter).is_file()
    for q in ba.load_questions(chapter).values():
        assert (folder / "student" / "tests" / f"{q.function}.py").is_file()


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_notebook_does_not_reach_the_solution(built, chapter):
    folder = built[chapter]
    nb = nbformat.read(folder / "student" / f"{chapter}.ipynb", as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    tests = [p.read_text() for p in (folder / "student" / "tests").glob("*.py")]
    book = nbformat.read(ba.BOOK / f"{chapter}.ipynb", as_version=4)
    solutions = {
        s.label: s for s in ba.split_chapter(book.cells) if isinstance(s, ba.Solution)
    }
    for q in ba.load_questions(chapter).values():
        for name in q.package:
            pattern = re.compile(rf"\b{re.escape(name)}\b")
            assert not [c for c in code if pattern.search(c)], f"a cell names {name}"
            assert not [t for t in tests if pattern.search(t)], f"a test names {name}"
        stub = [c for c in code if re.search(rf"^def {q.function}\(", c, re.M)]
        assert len(stub) == 1, f"{q.function}: no answer cell"
        assert "..." in stub[0]
        sol = solutions[q.label]
        header = re.compile(r"^\s*(def |class |\"\"\"|'''|#)")
        body = [
            line.strip()
            for line in sol.code.splitlines()
            if len(line.strip()) >= 8 and not header.match(line)
        ]
        student_lines = {line.strip() for c in code for line in c.splitlines()}
        outside = {
            line.strip()
            for c in ba.split_chapter(book.cells)
            if isinstance(c, dict) and c["cell_type"] == "code"
            for line in c["source"].splitlines()
        }  # lines the chapter has anyway
        leaked = [line for line in body if line in student_lines - outside]
        assert not leaked, (
            f"{q.label}: solution lines in the student notebook: {leaked}"
        )
        assert not any("expected = np.array" in t for t in tests), (
            "a stored test leaked"
        )
        assert not ba.solution_leaks(code, q, sol), q.label
    # no prose of a solution either: the solution notebook has it, the student's not
    solution_nb = nbformat.read(
        folder / "autograder" / f"{chapter}.ipynb", as_version=4
    )
    texts = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    for sol in solutions.values():
        for c in sol.cells:
            if c["cell_type"] == "markdown" and len(c["source"]) > 40:
                assert c["source"] not in texts, f"{sol.label}: solution text leaked"
                assert any(c["source"] in s.source for s in solution_nb.cells)


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_scores_full_marks(built, chapter):
    folder = built[chapter]
    results = grade(
        folder / "autograder" / f"{chapter}.ipynb", _autograder(folder, chapter)
    )
    assert results.possible == sum(
        q.points for q in ba.load_questions(chapter).values()
    )
    assert results.total == results.possible, str(results.to_dict())


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_blank_student_notebook_scores_zero(built, chapter):
    folder = built[chapter]
    results = grade(
        folder / "student" / f"{chapter}.ipynb", _autograder(folder, chapter)
    )
    hidden = _hidden_results(results)
    assert hidden, "no hidden test"
    assert not [name for name, passed in hidden if passed], "a hidden test passes blank"
    assert results.total == 0


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_wrong_answer_loses_its_points_only(built, chapter, tmp_path):
    questions = ba.load_questions(chapter).values()
    for q in questions:
        folder = ba.build(chapter, tmp_path / q.function, wrong=q.function)
        results = grade(
            folder / "autograder" / f"{chapter}.ipynb", _autograder(folder, chapter)
        )
        for other in questions:
            tf = results.results[other.function]
            if other is q:
                assert tf.score < tf.possible, (
                    f"{q.function}: the wrong answer scores full"
                )
                stored = [
                    t.passed
                    for t, (kind, _, _) in zip(
                        tf.test_case_results, q.tests, strict=True
                    )
                    if kind == "stored"
                ]
                assert stored and not any(stored), f"{q.function}: a stored test passes"
            else:
                assert tf.score == tf.possible, (
                    f"{q.function}'s error costs {other.function}"
                )


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_student_notebook_runs_top_to_bottom(built, chapter, tmp_path):
    """In a fresh kernel and an empty folder with the student's files only."""
    from nbclient import NotebookClient

    work = tmp_path / "student"
    shutil.copytree(built[chapter] / "student", work)
    nb = nbformat.read(work / f"{chapter}.ipynb", as_version=4)
    NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(work)}},
    ).execute()
    checks = [c for c in nb.cells if c.source.startswith("grader.check(")]
    assert checks and all(c.outputs for c in checks), "a check cell printed nothing"
    failed = [
        c.source.splitlines()[0]
        for c in nb.cells
        if c.cell_type == "code"
        and any(o.output_type == "error" for o in c.outputs)
        and ba.RAISES not in c.metadata.get("tags", [])
    ]
    assert not failed, failed


def _run_test_cell(cell_source: str, env: dict) -> bool:
    """Run one generated otter test cell against ``env``; whether it passed."""
    import inspect

    namespace: dict = {}
    exec(compile(cell_source, "<test cell>", "exec"), namespace)
    test = next(v for k, v in namespace.items() if k.startswith("test_"))
    args = [env.get(p) for p in inspect.signature(test).parameters]
    try:
        test(*args)
    except Exception:  # noqa: BLE001 (any failure fails the test, as in otter)
        return False
    return True


@pytest.mark.parametrize("chapter", ba.chapters_with_questions())
def test_question_tests_without_a_notebook(chapter):
    """Fast, for every chapter with questions: the generated tests, run in this process,
    pass on the solution, fail on a blank answer, and the stored ones fail on the wrong one.
    """
    book = nbformat.read(ba.BOOK / f"{chapter}.ipynb", as_version=4)
    items = ba.split_chapter(book.cells)
    solutions = {s.label: s for s in items if isinstance(s, ba.Solution)}
    code = [c for c in items if isinstance(c, dict) and c["cell_type"] == "code"]
    preamble = ba._strip_magics(code[1]["source"])
    for q in ba.load_questions(chapter).values():
        sol = solutions[q.label]
        env = ba.solution_namespace(sol, preamble, q.setup)
        cells = [c["source"] for c in ba.test_cells(q, env)]
        assert all(_run_test_cell(c, env) for c in cells), f"{q.label}: solution fails"
        blank = dict(env, **{q.function: lambda *args, **kwargs: None})
        assert not any(_run_test_cell(c, blank) for c in cells), (
            f"{q.label}: blank passes"
        )
        cells_wrong = [
            dict(c, source=ba.wrong_code(q, c["source"]))
            if q.function in ba.Solution("", [c]).functions
            else c
            for c in sol.cells
        ]
        wrong_sol = ba.Solution(q.label, cells_wrong)
        wrong = ba.solution_namespace(wrong_sol, preamble, q.setup)
        for cell, (kind, _, _) in zip(cells, q.tests, strict=True):
            if kind == "stored":
                assert not _run_test_cell(cell, wrong), f"{q.label}: wrong passes"
