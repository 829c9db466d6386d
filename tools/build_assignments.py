"""Build graded assignments from the chapters with Otter-Grader (``make assignments``).

For each chapter ``book/X.md`` with exercises (its graded questions in ``assignments/X.py``),
this script writes an Otter Assign master notebook ``_build/assignments/X/master/X.ipynb``
from the committed, paired ``book/X.ipynb`` (so the chapter text stays single-sourced) and
runs ``otter assign`` on it, which writes

- ``_build/assignments/X/student/X.ipynb`` and ``student/tests/``: the notebook to hand out,
  with the visible tests a student may run (``grader.check("name")``);
- ``_build/assignments/X/autograder/X.ipynb``: the instructor's solution notebook;
- ``_build/assignments/X/autograder/X-autograder.zip``: the autograder, with the hidden tests.

How a chapter becomes an assignment:

- Each exercise whose gated solution defines a function, and that ``assignments/X.py`` lists in
  ``QUESTIONS``, becomes an autograded question named after that function. The solution's code
  is the otter solution (each function keeps its header and docstring, its body becomes
  ``...`` in the student notebook); the solution's text stays in the solution notebook only.
  The check cell right after the solution, which compares the reader's function with the
  package's own, is dropped: its place is taken by the question's tests, written in
  ``assignments/X.py`` as plain functions whose parameters are the names they test.
  ``visible`` tests go to the student; ``hidden`` ones (properties: shapes, symmetries, limits)
  and ``stored`` ones (the solution's values on fixed inputs, computed here at build time and
  compared with a tolerance) only to the autograder. Every hidden and stored test first checks
  that the student's function names none of the question's ``forbid`` names (the package
  function it rewrites), so wrapping the package scores nothing.
- Every other exercise becomes a manually graded otter question (no points in the
  autograder): the prompt stays, the solution (text and code) is in the solution notebook only.
- The package function that a graded exercise rewrites (``package`` in the question) appears
  in no student cell: an import of it is dropped from its import line, and a chapter cell
  that calls it is routed to the student's function through the question's ``route``
  adapter. If such a cell comes before the exercise, the question (prompt, answer cell, check)
  moves up to just before that cell, and the cells that use the student's function, or what
  those cells compute, get the ``raises-exception`` tag: with a blank answer they fail, and
  Jupyter's Run All goes on past them.
- The first cell (the Colab cell) also installs ``otter-grader`` and, in Colab, writes the
  visible tests next to the notebook; an otter cell (``grader = otter.Notebook()``) follows it.

``python tools/build_assignments.py [X ...]`` builds the named chapters (default: every chapter
with exercises; one without a question file has manually graded questions only, and keeps its
check cells). ``--wrong X:name`` builds the solution notebook with the question's
deliberately wrong variant (its ``wrong`` substitution) instead, for the tests.
"""

from __future__ import annotations

import argparse
import ast
import copy
import importlib.util
import inspect
import json
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import yaml

ROOT = Path(__file__).resolve().parent.parent
BOOK = ROOT / "book"
QUESTION_DIR = ROOT / "assignments"
OUT = ROOT / "_build" / "assignments"
CONFIG = ROOT / "_config.yml"
OTTER_PIN = "otter-grader==7.0.0"
RAISES = "raises-exception"

FENCE = re.compile(r"^(?P<fence>`{3,}|:{3,})\{(?P<name>[a-z-]+)\}\s*(?P<arg>\S*)")


# ---------------------------------------------------------------------------------------------
# the chapter's structure: text, code cells and the gated solutions


@dataclass
class Solution:
    label: str
    cells: list[dict] = field(default_factory=list)  # its text and code cells
    check: dict | None = None  # the code cell right after it
    prompt_index: int | None = None  # index in items of the exercise's text

    @property
    def code(self) -> str:
        return "\n\n".join(c["source"] for c in self.cells if c["cell_type"] == "code")

    @property
    def functions(self) -> list[str]:
        try:
            tree = ast.parse(self.code)
        except SyntaxError:
            return []
        return [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]


def _markdown(source: str, like: dict | None = None) -> dict:
    cell = nbformat.v4.new_markdown_cell(source)
    if like is not None:
        cell["metadata"] = copy.deepcopy(like.get("metadata", {}))
    return cell


def split_chapter(cells: list[dict]) -> list[dict | Solution]:
    """The chapter as a list of cells and ``Solution`` s (the gated solutions, in order).

    Markdown cells are split at the ``solution-start`` … ``solution-end`` directives; what lies
    between them (text and code cells) goes into the ``Solution``.
    """
    items: list[dict | Solution] = []
    current: Solution | None = None
    closing = None  # fence that closes the directive being skipped
    after: Solution | None = None  # the solution whose check cell may come next
    for cell in cells:
        cell = copy.deepcopy(cell)
        if cell["cell_type"] == "code":
            cell["outputs"], cell["execution_count"] = [], None
        if cell["cell_type"] != "markdown":
            if current is not None:
                current.cells.append(cell)
            else:
                if after is not None and cell["cell_type"] == "code":
                    after.check = cell
                after = None
                items.append(cell)
            continue
        kept: list[str] = []

        def flush(kept=kept, cell=cell) -> None:
            text = "".join(kept).strip("\n")
            if text.strip():
                target = current.cells if current is not None else items  # noqa: B023
                target.append(_markdown(text, cell))
            kept.clear()

        for line in cell["source"].splitlines(keepends=True):
            stripped = line.strip()
            if closing is not None:
                if stripped == closing:
                    closing = None
                continue
            m = FENCE.match(stripped)
            if m and m["name"] == "solution-start" and current is None:
                flush()
                current = Solution(m["arg"])
                closing = m["fence"]
                continue
            if m and m["name"] == "solution-end" and current is not None:
                flush()
                items.append(current)
                after, current = current, None
                closing = m["fence"]
                continue
            kept.append(line)
            if stripped and current is None:
                after = None
        flush()
    if current is not None:
        raise ValueError(f"solution {current.label} has no solution-end")
    return items


# ---------------------------------------------------------------------------------------------
# the question files assignments/X.py


@dataclass
class Question:
    label: str
    function: str
    tests: list[tuple[str, int, object]]  # (kind, points, function)
    package: list[str] = field(default_factory=list)
    forbid: list[str] = field(default_factory=list)
    route: str | dict[str, str] | None = None  # one adapter, or one per name
    wrong: tuple[str, str] | str | None = None
    tolerance: dict = field(default_factory=lambda: {"rtol": 1e-6, "atol": 1e-9})
    setup: str = ""  # the chapter's variables that the solution or the tests read

    @property
    def points(self) -> int:
        return sum(p for _, p, _ in self.tests)


def load_questions(chapter: str) -> dict[str, Question]:
    """The graded questions of a chapter (none without a question file)."""
    path = QUESTION_DIR / f"{chapter}.py"
    if not path.exists():
        return {}
    spec = importlib.util.spec_from_file_location(f"assignments_{chapter}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = {}
    for label, q in module.QUESTIONS.items():
        q = dict(q)
        out[label] = Question(label=label, **q)
    return out


# ---------------------------------------------------------------------------------------------
# tests: otter's exception-based test cells


def _body(func) -> str:
    return textwrap.dedent(inspect.getsource(func))


def _independence(question: Question, indent: str = "    ") -> str:
    """Lines that fail the test if the student's function names a forbidden name."""
    if not question.forbid:
        return ""
    f = question.function
    return textwrap.indent(
        textwrap.dedent(
            f"""\
            def _names(code):
                found = set(code.co_names)
                for const in code.co_consts:
                    if hasattr(const, "co_names"):
                        found |= _names(const)
                return found

            assert callable({f}), "{f} is not defined"
            _module = getattr({f}, "__module__", None) or ""
            assert not _module.startswith("mtgmm"), "{f} is mtgmm's own"
            _used = _names({f}.__code__) & {set(question.forbid)!r}
            assert not _used, f"{f} may not use {{sorted(_used)}}"
            """
        ),
        indent,
    )


COMPARE = """\
def _as_array(value):
    import numpy as np

    if isinstance(value, (tuple, list)):
        return [_as_array(v) for v in value]
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=float)


def _compare(got, expected, rtol, atol):
    import numpy as np

    if isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected), "wrong structure"
        for g, e in zip(got, expected):
            _compare(g, e, rtol, atol)
        return
    assert got.shape == expected.shape, f"shape {got.shape}, expected {expected.shape}"
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol, equal_nan=True)
"""


def _literal(value) -> str:
    """Python source for a stored value: nested lists of float arrays."""
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    flat = ", ".join(repr(float(v)) for v in value.ravel())
    flat = flat.replace("nan", 'float("nan")').replace("inf", 'float("inf")')
    return f"np.array([{flat}], dtype=float).reshape({tuple(value.shape)!r})"


def test_cells(question: Question, solution_env: dict | None) -> list[dict]:
    """Otter test cells of a question (``solution_env``: namespace with the solution)."""
    cells = []
    f = question.function
    for i, (kind, points, func) in enumerate(question.tests):
        hidden = kind != "visible"
        name = f"test_{i}_{func.__name__}"
        # the first parameter is the student's function; others are notebook variables
        params = ", ".join(inspect.signature(func).parameters)
        if not params.startswith(f):
            raise ValueError(f"{question.label}: {func.__name__} must take {f} first")
        lines = [f"def {name}({params}):"]
        lines.append(f'    """{(func.__doc__ or func.__name__).strip()}"""')
        if hidden:
            lines.append(_independence(question).rstrip("\n"))
        lines.append(textwrap.indent(_body(func), "    ").rstrip("\n"))
        if kind == "stored":
            import numpy as np

            tol = question.tolerance
            expected = _stored(func, solution_env)
            lines.append(textwrap.indent(COMPARE, "    ").rstrip("\n"))
            lines.append("    import numpy as np")
            lines.append(f"    expected = {_literal(expected)}")
            lines.append(
                f"    _compare(_as_array({func.__name__}({params})), expected, "
                f"rtol={tol['rtol']!r}, atol={tol['atol']!r})"
            )
            del np
        else:
            lines.append(f"    {func.__name__}({params})")
        config = (
            f'""" # BEGIN TEST CONFIG\npoints: {points}\nhidden: {hidden}\n'
            '""" # END TEST CONFIG\n'
        )
        source = config + "\n".join(lines) + "\n"
        ast.parse(source)
        cells.append(nbformat.v4.new_code_cell(source))
    return cells


def _stored(func, env: dict):
    """The value the solution gives a stored test, as nested lists of float arrays."""
    import numpy as np
    import torch

    def as_array(value):
        if isinstance(value, (tuple, list)):
            return [as_array(v) for v in value]
        if isinstance(value, torch.Tensor):
            return value.detach().cpu().double().numpy()
        return np.asarray(value, dtype=float)

    return as_array(func(*(env[p] for p in inspect.signature(func).parameters)))


def wrong_code(question: Question, code: str) -> str:
    """The solution's code with the question's deliberately wrong answer.

    ``wrong`` is either ``(old, new)``, a substitution in the code (a sign error), or the
    source of a function that takes the right answer and returns a wrong one, for chapters
    whose solution code is still changing.
    """
    if isinstance(question.wrong, str):
        f = question.function
        return f"{code.rstrip()}\n\n\n_right_{f} = {f}\n{f} = ({question.wrong})(_right_{f})\n"
    old, new = question.wrong
    if old not in code:
        raise ValueError(f"{question.label}: {old!r} not in the solution")
    return code.replace(old, new)


def solution_namespace(solution: Solution, preamble: str, setup: str = "") -> dict:
    """The solution's functions, executed after the chapter's imports (``preamble``) and the
    question's ``setup`` (the chapter's variables that the function or its tests use)."""
    env: dict = {}
    exec(compile(preamble, "<chapter imports>", "exec"), env)
    exec(compile(setup, "<question setup>", "exec"), env)
    # only its cells that define functions: a cell that applies them to the chapter's
    # results (the solution notebook runs it) needs the chapter's variables
    for cell in solution.cells:
        if cell["cell_type"] == "code" and Solution("", [cell]).functions:
            code = _strip_magics(cell["source"])
            exec(compile(code, f"<solution {solution.label}>", "exec"), env)
    return env


# ---------------------------------------------------------------------------------------------
# the master notebook


def raw(text: str) -> dict:
    return nbformat.v4.new_raw_cell(text)


def mark_solution(code: str) -> str:
    """The solution's code with each top-level function body inside BEGIN/END SOLUTION."""
    tree = ast.parse(code)
    lines = code.splitlines()
    inserts: list[tuple[int, str]] = []  # (line index, marker), applied bottom-up
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef):
            continue
        body = node.body
        doc = (
            isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        )
        first = body[1] if doc and len(body) > 1 else body[0]
        if doc and len(body) == 1:
            continue
        indent = " " * first.col_offset
        inserts.append((first.lineno - 1, f"{indent}# BEGIN SOLUTION"))
        inserts.append((node.end_lineno, f"{indent}# END SOLUTION"))
    for index, marker in sorted(inserts, reverse=True):
        lines.insert(index, marker)
    return "\n".join(lines) + "\n"


def _checks_solution_code(sol: Solution) -> bool:
    """Whether the code cell after a solution reads what the solution's code defines."""
    if sol.check is None or not sol.code:
        return False
    try:
        defined = _assigned(ast.parse(_strip_magics(sol.code)))
        read = _loaded(ast.parse(_strip_magics(sol.check["source"])))
    except SyntaxError:
        return True
    return bool(defined & read)


def _only_definitions(code: str) -> bool:
    tree = ast.parse(_strip_magics(code))
    return all(
        isinstance(n, (ast.FunctionDef, ast.Import, ast.ImportFrom)) for n in tree.body
    )


def whole_solution(code: str) -> str:
    """Code of a manually graded solution: all of it removed from the student notebook."""
    return "# BEGIN SOLUTION\n" + code.rstrip("\n") + "\n# END SOLUTION\n"


def _names_used(source: str, names: list[str]) -> bool:
    return any(re.search(rf"\b{re.escape(n)}\b", source) for n in names)


def route_cell(source: str, question: Question) -> str:
    """A chapter cell with the package function of ``question`` routed to the student's."""
    for name in question.package:
        # an import of the name: drop it from the import line
        source = re.sub(
            rf"^(from [\w.]+ import .*?)\b{name}\b,\s*", r"\1", source, flags=re.M
        )
        source = re.sub(
            rf"^(from [\w.]+ import .*?),\s*\b{name}\b", r"\1", source, flags=re.M
        )
        source = re.sub(
            rf"^\s*{name},\n", "", source, flags=re.M
        )  # parenthesised lists
        source = re.sub(rf"^from [\w.]+ import {name}\n", "", source, flags=re.M)
        # a call: through the adapter
        if re.search(rf"\b{name}\(", source):
            route = (
                question.route.get(name)
                if isinstance(question.route, dict)
                else question.route
            )
            if route is None:
                raise ValueError(
                    f"{question.label}: a chapter cell calls {name} and the question has "
                    "no route"
                )
            source = re.sub(rf"(?:\b[\w]+\.)*\b{name}\(", f"_{name}_routed(", source)
            source = f"_{name}_routed = {route}\n" + source
    return source


def _assigned(node) -> set[str]:
    out = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            out.add(n.id)
        elif isinstance(n, (ast.FunctionDef, ast.ClassDef)):
            out.add(n.name)
        elif isinstance(n, ast.alias):
            out.add((n.asname or n.name).split(".")[0])
    return out


def _loaded(node) -> set[str]:
    """Names a statement reads when it runs (not those read by the functions it defines)."""
    out = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load):
            out.add(n.id)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            continue
        stack.extend(ast.iter_child_nodes(n))
    return out


def propagate(
    source: str, tainted: set[str], sticky: set[str] = frozenset()
) -> tuple[bool, set[str]]:
    """Whether a cell may fail for want of a tainted name, and the names tainted after it.

    Statement by statement: one that reads a tainted name (not one it assigns itself) may
    fail, and so may everything after it in the cell; what those statements assign is
    tainted, what the statements before them assign is clean again (``sticky`` names stay
    tainted).
    """
    try:
        tree = ast.parse(_strip_magics(source))
    except SyntaxError:
        return False, tainted
    tainted = set(tainted)
    failing = False
    for stmt in tree.body:
        if not failing and (_loaded(stmt) - _assigned(stmt)) & (tainted | sticky):
            failing = True
        if failing:
            tainted |= _assigned(stmt)
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
            _all_loaded(stmt) & (tainted | sticky)
        ):
            tainted.add(stmt.name)  # defining it is safe, calling it may fail
        else:
            tainted -= _assigned(stmt) - set(sticky)
    return failing, tainted


def _all_loaded(node) -> set[str]:
    """The global names a function definition reads: those its body reads (also in nested
    functions) but neither assigns nor takes as parameters."""
    loaded = {
        n.id
        for n in ast.walk(node)
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }
    local = {n.arg for n in ast.walk(node) if isinstance(n, ast.arg)}
    return loaded - local - (_assigned(node) - {node.name})


def _strip_magics(source: str) -> str:
    return "\n".join(
        "pass" if line.lstrip().startswith(("%", "!")) else line
        for line in source.splitlines()
    )


def colab_cell(cell: dict, visible: dict[str, str]) -> dict:
    """The Colab cell, installing otter too and writing the visible tests in Colab."""
    cell = copy.deepcopy(cell)
    src = cell["source"]
    src = re.sub(r'%pip install -q "', f'%pip install -q {OTTER_PIN} "', src, count=1)
    if visible:
        lines = [
            "    import pathlib",
            "",
            "    pathlib.Path('tests').mkdir(exist_ok=True)",
        ]
        lines.append("    for _name, _text in {")
        for name, text in visible.items():
            lines.append(f"        {name!r}: {text!r},")
        lines.append("    }.items():")
        lines.append("        pathlib.Path('tests', _name).write_text(_text)")
        src = src.rstrip("\n") + "\n" + "\n".join(lines) + "\n"
    cell["source"] = src
    return cell


OTTER_INIT = (
    "# Otter-Grader: grader.check(name) runs the visible tests of a question\n"
    "import otter\n\ngrader = otter.Notebook()\n"
)


def master_notebook(
    chapter: str, wrong: str | None = None
) -> tuple[nbformat.NotebookNode, dict[str, Question]]:
    """The Otter Assign master notebook of ``chapter`` and its graded questions."""
    nb = nbformat.read(BOOK / f"{chapter}.ipynb", as_version=4)
    questions = load_questions(chapter)
    items = split_chapter(nb.cells)
    solutions = {s.label: s for s in items if isinstance(s, Solution)}
    missing = set(questions) - set(solutions)
    if missing:
        raise ValueError(f"{chapter}: no gated solution for {sorted(missing)}")
    code_cells = [c for c in items if isinstance(c, dict) and c["cell_type"] == "code"]
    colab = code_cells[0]
    preamble = "\n".join(
        _strip_magics(c["source"]) for c in code_cells[1:2]
    )  # the chapter's imports

    # the exercise text of each solution: the markdown cells right before it
    for i, item in enumerate(items):
        if isinstance(item, Solution):
            j = i
            while (
                j > 0
                and isinstance(items[j - 1], dict)
                and (
                    items[j - 1]["cell_type"] == "markdown"
                    and "exercise" in items[j - 1]["source"]
                )
            ):
                j -= 1
            item.prompt_index = j if j < i else None

    # where each graded question goes: its exercise, or before the first cell it routes
    graded = {label: q for label, q in questions.items()}
    # the stored values come from the right solution, also when building a wrong variant
    envs = {
        label: solution_namespace(solutions[label], preamble, q.setup)
        for label, q in graded.items()
    }
    for q in graded.values():
        sol = solutions[q.label]
        if q.function not in sol.functions:
            raise ValueError(f"{q.label}: the solution defines no {q.function}")
        if wrong and wrong == q.function and q.wrong:
            for c in sol.cells:
                if (
                    c["cell_type"] == "code"
                    and q.function in Solution("", [c]).functions
                ):
                    c["source"] = wrong_code(q, c["source"])
                    break

    moved: dict[int, list[Solution]] = {}
    positions = {id(item): i for i, item in enumerate(items)}
    for q in graded.values():
        sol = solutions[q.label]
        first = (
            next(
                (
                    i
                    for i, c in enumerate(items)
                    if isinstance(c, dict)
                    and c["cell_type"] == "code"
                    and c is not sol.check
                    and c is not colab
                    and re.search(rf"\b(?:{'|'.join(q.package)})\(", c["source"])
                ),
                None,
            )
            if q.package
            else None
        )
        if first is not None and first < positions[id(sol)]:
            moved.setdefault(first, []).append(sol)
    moved_labels = {s.label for group in moved.values() for s in group}

    cells: list[dict] = []
    config = {
        "name": chapter,
        "init_cell": False,
        "export_cell": False,
        "check_all_cell": False,
        "run_tests": False,
        "solutions_pdf": False,
        "generate": {"pdf": False, "filtering": False, "show_stdout": True},
        "tests": {"files": True, "ok_format": False},
        "requirements": "requirements.txt",
        "overwrite_requirements": True,
    }
    cells.append(raw("# ASSIGNMENT CONFIG\n" + yaml.safe_dump(config, sort_keys=False)))

    tainted: set[str] = set()
    # before its exercise, the student's function may be a stub: what calls it may fail
    routed_names = {
        f"_{name}_routed"
        for q in graded.values()
        if q.label in moved_labels
        for name in q.package
    }

    def question_cells(sol: Solution, moved_here: bool) -> list[dict]:
        out = []
        q = graded.get(sol.label)
        if moved_here and sol.prompt_index is not None:
            # the exercise text moves up with its question
            i = sol.prompt_index
            while items[i] is not sol:
                out.append(items[i])
                i += 1
        if q is None:
            name = sol.label.replace("-", "_")
            out.append(raw(f"# BEGIN QUESTION\nname: {name}\nmanual: true\npoints: 0"))
            out.append(raw("# BEGIN SOLUTION"))
            for c in sol.cells:
                c = copy.deepcopy(c)
                if c["cell_type"] == "code":
                    # functions keep their headers (a stub to complete), other code goes
                    functions = Solution(sol.label, [c]).functions
                    c["source"] = (
                        mark_solution(c["source"])
                        if functions and _only_definitions(c["source"])
                        else whole_solution(c["source"])
                    )
                out.append(c)
            if _checks_solution_code(sol):
                # its check reads what the solution computed: solution notebook only
                check = copy.deepcopy(sol.check)
                check["source"] = whole_solution(check["source"])
                out.append(check)
            out.append(raw("# END SOLUTION"))
            out.append(raw("# END QUESTION"))
            return out
        out.append(raw(f"# BEGIN QUESTION\nname: {q.function}\npoints: {q.points}"))
        if moved_here:
            out.append(
                _markdown(
                    f"*This exercise comes from the end of the chapter: the cells below use "
                    f"your `{q.function}`, so write it here. Until you do, they fail; Run All "
                    "goes on past them.*"
                )
            )
        out.append(_markdown(graded_note(q)))
        out.append(raw("# BEGIN SOLUTION"))
        for c in sol.cells:
            c = copy.deepcopy(c)
            if c["cell_type"] == "code":
                c["source"] = (
                    mark_solution(c["source"])
                    if q.function in Solution(sol.label, [c]).functions
                    else whole_solution(c["source"])
                )
            out.append(c)
        out.append(raw("# END SOLUTION"))
        out.append(raw("# BEGIN TESTS"))
        out.extend(test_cells(q, envs[sol.label]))
        out.append(raw("# END TESTS"))
        out.append(raw("# END QUESTION"))
        return out

    skip_prompt: set[int] = set()
    for sol in solutions.values():
        if sol.label in moved_labels and sol.prompt_index is not None:
            i = sol.prompt_index
            while items[i] is not sol:
                skip_prompt.add(i)
                i += 1

    checks = {id(solutions[label].check) for label in graded if solutions[label].check}
    checks |= {
        id(sol.check)
        for sol in solutions.values()
        if sol.label not in graded and _checks_solution_code(sol)
    }
    for i, item in enumerate(items):
        if moved.get(i):
            # before the section that holds the cell: after the last heading of the text
            if cells and cells[-1]["cell_type"] == "markdown":
                lines = cells[-1]["source"].splitlines(keepends=True)
                heads = [k for k, line in enumerate(lines) if line.startswith("#")]
                if heads and heads[-1] > 0:
                    text = cells.pop()
                    cells.append(
                        _markdown("".join(lines[: heads[-1]]).strip("\n"), text)
                    )
                    tail = _markdown("".join(lines[heads[-1] :]).strip("\n"), text)
                else:
                    tail = None
            else:
                tail = None
            for sol in moved[i]:
                cells.extend(question_cells(sol, True))
            if tail is not None:
                cells.append(tail)
        if i in skip_prompt:
            continue
        if isinstance(item, Solution):
            if item.label in moved_labels:
                cells.append(
                    _markdown(
                        f"*Exercise {item.label} is above, where the chapter first needs "
                        "your function.*"
                    )
                )
                continue
            cells.extend(question_cells(item, False))
            continue
        if id(item) in checks:
            continue  # the check against the package: the question's tests replace it
        cell = copy.deepcopy(item)
        if cell is not None and item is colab:
            visible = visible_test_files(graded, envs)
            cells.append(colab_cell(cell, visible))
            cells.append(nbformat.v4.new_code_cell(OTTER_INIT))
            continue
        if cell["cell_type"] == "code":
            for q in graded.values():
                if q.package and _names_used(cell["source"], q.package):
                    cell["source"] = route_cell(cell["source"], q)
            failing, tainted = propagate(cell["source"], tainted, routed_names)
            if failing:
                tags = cell["metadata"].setdefault("tags", [])
                if RAISES not in tags:
                    tags.append(RAISES)
        cells.append(cell)

    master = copy.deepcopy(nb)
    master.cells = [nbformat.from_dict(c) for c in cells]
    for i, c in enumerate(master.cells):
        c["id"] = f"cell-{i}"
    master.metadata.pop("jupytext", None)
    return master, graded


# ---------------------------------------------------------------------------------------------
# the student notebook may not reach the solution

MIN_NODES = 10  # the smallest expression of a solution that counts as its code


def student_code(master: nbformat.NotebookNode) -> list[str]:
    """The code cells of the student notebook that ``otter assign`` makes of ``master``:
    the test cells dropped, solution lines inside a cell replaced by ``...``."""
    out, tests = [], False
    for cell in master.cells:
        text = cell.source.strip()
        if cell.cell_type == "raw":
            tests = text == "# BEGIN TESTS" or (tests and text != "# END TESTS")
            continue
        if tests or cell.cell_type != "code":
            continue
        lines, inside = [], False
        for line in cell.source.splitlines():
            if line.strip() == "# BEGIN SOLUTION":
                inside = True
                lines.append(line.replace("# BEGIN SOLUTION", "..."))
            elif line.strip() == "# END SOLUTION":
                inside = False
            elif not inside:
                lines.append(line)
        out.append("\n".join(lines))
    return out


def _shape(node: ast.AST) -> str:
    """An expression with its names abstracted (attributes and constants kept)."""

    class Abstract(ast.NodeTransformer):
        def visit_Name(self, n):
            return ast.Name(id="_", ctx=ast.Load())

        def visit_arg(self, n):
            return ast.arg(arg="_")

    return ast.dump(Abstract().visit(copy.deepcopy(node)), include_attributes=False)


def _expressions(tree: ast.AST) -> set[str]:
    return {
        _shape(n)
        for n in ast.walk(tree)
        if isinstance(n, ast.expr)
        and sum(isinstance(m, ast.expr) for m in ast.walk(n)) >= MIN_NODES
    }


def solution_leaks(
    code: list[str], question: Question, solution: Solution
) -> list[str]:
    """How the student's code cells ``code`` reach the answer of ``question``, if they do.

    Outside the answer cell (the one that defines ``question.function``), no cell may name a
    ``package`` function (what the exercise asks the student to write; the builder routes
    the chapter's calls of it to the student's function), define a function of the solution,
    or contain an expression of the solution's code, compared with names abstracted (at
    least ``MIN_NODES`` nodes: a formula, not a call such as ``np.asarray(x, dtype=float)``).
    """
    f = question.function
    answer = [c for c in code if re.search(rf"^def {f}\(", c, re.M)]
    found = []
    if len(answer) != 1:
        found.append(f"{len(answer)} cells define {f}")
    sol_tree = ast.parse(_strip_magics(solution.code))
    shapes = _expressions(sol_tree)
    for i, cell in enumerate(code):
        if cell in answer:
            continue
        try:
            tree = ast.parse(_strip_magics(cell))
        except SyntaxError:
            continue
        for n in ast.walk(tree):
            name = (
                n.id
                if isinstance(n, ast.Name)
                else n.attr
                if isinstance(n, ast.Attribute)
                else n.name
                if isinstance(n, (ast.FunctionDef, ast.alias))
                else None
            )
            if isinstance(n, ast.alias):
                name = (n.asname or n.name).split(".")[-1]
            if name in question.package:
                found.append(f"cell {i} names {name}")
            if isinstance(n, ast.FunctionDef) and n.name in solution.functions:
                found.append(f"cell {i} defines {n.name}")
        same = _expressions(tree) & shapes
        if same:
            found.append(f"cell {i} computes the solution's {len(same)} expression(s)")
    return found


def graded_note(q: Question) -> str:
    """What the student notebook does with a graded answer (a line before the answer cell)."""
    visible = sum(p for kind, p, _ in q.tests if kind == "visible")
    names = ", ".join(f"`{n}`" for n in q.forbid)
    barred = (
        f" It may not use {names}: every hidden test fails a function that does."
        if names
        else ""
    )
    return (
        f'*Write `{q.function}` in the cell below. `grader.check("{q.function}")` after '
        f"it runs the visible tests ({visible} of {q.points} points); the autograder adds "
        f"hidden tests of properties and of values at fixed inputs.{barred}*"
    )


def visible_test_files(graded: dict[str, Question], envs: dict) -> dict[str, str]:
    """The student's test files (tests/NAME.py), as otter writes them, for the Colab cell."""
    from jinja2 import Template  # noqa: F401 (otter's own dependency)
    from otter.assign.tests_manager import EXCEPTION_BASED_TEST_FILE_TEMPLATE
    from otter.test_files.abstract_test import TestCase

    files = {}
    for q in graded.values():
        cases = []
        for cell, (kind, points, _) in zip(
            test_cells(q, envs[q.label]), q.tests, strict=True
        ):
            if kind != "visible":
                continue
            src = cell["source"].split('""" # END TEST CONFIG\n', 1)[1]
            body = ast.unparse(ast.parse(src).body[0])
            cases.append(TestCase("", body, False, points, None, None))
        if cases:
            files[f"{q.function}.py"] = EXCEPTION_BASED_TEST_FILE_TEMPLATE.render(
                name=q.function,
                points=sum(c.points for c in cases),
                all_or_nothing=False,
                test_cases=cases,
                OK_FORMAT_VARNAME="OK_FORMAT",
            )
    return files


# ---------------------------------------------------------------------------------------------
# building


def requirements() -> str:
    """What the grading environment installs (Docker grading only): the pinned stack."""
    url = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))["repository"]["url"]
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if line and not line.startswith("#")
    ]
    keep = ("torch", "numpy", "scipy", "matplotlib", "tqdm", "pandas", "otter-grader")
    lines = [p for p in pins if p.split("==")[0] in keep]
    return "\n".join(lines + [f"mtgmm @ git+{url}"]) + "\n"


def otter() -> str:
    here = Path(sys.executable).parent / "otter"
    return str(here) if here.exists() else "otter"


def build(chapter: str, out: Path, wrong: str | None = None) -> Path:
    master, graded = master_notebook(chapter, wrong)
    folder = out / chapter
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "master").mkdir(parents=True)
    path = folder / "master" / f"{chapter}.ipynb"
    nbformat.write(master, path)
    (folder / "master" / "requirements.txt").write_text(
        requirements(), encoding="utf-8"
    )
    cmd = [otter(), "assign", "--no-pdfs", str(path), str(folder)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder / "master")
    if proc.returncode:
        raise RuntimeError(f"otter assign failed:\n{proc.stdout}\n{proc.stderr}")
    # the solution notebook without otter's marker comments
    solution = folder / "autograder" / f"{chapter}.ipynb"
    nb = nbformat.read(solution, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.source = "\n".join(
                line
                for line in cell.source.splitlines()
                if line.strip() not in ("# BEGIN SOLUTION", "# END SOLUTION")
            )
    nbformat.write(nb, solution)
    for zip_path in (folder / "autograder").glob(f"{chapter}-autograder_*.zip"):
        zip_path.rename(zip_path.with_name(f"{chapter}-autograder.zip"))
    summary = {
        "chapter": chapter,
        "questions": {q.function: q.points for q in graded.values()},
        "points": sum(q.points for q in graded.values()),
    }
    (folder / "questions.json").write_text(json.dumps(summary, indent=1) + "\n")
    return folder


def chapters_with_exercises() -> list[str]:
    """Every chapter whose notebook has a gated solution: each becomes an assignment."""
    return sorted(
        p.stem
        for p in BOOK.glob("*.ipynb")
        if "{solution-start}" in p.read_text(encoding="utf-8")
    )


def chapters_with_questions() -> list[str]:
    return sorted(
        p.stem
        for p in QUESTION_DIR.glob("*.py")
        if not p.name.startswith("_") and (BOOK / f"{p.stem}.ipynb").exists()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("chapters", nargs="*", help="chapter names (default: all)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--wrong", help="QUESTION: build its wrong variant")
    args = parser.parse_args(argv)
    names = args.chapters or chapters_with_exercises()
    for name in names:
        folder = build(name, args.out, args.wrong)
        print(f"build_assignments.py: {name} -> {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
