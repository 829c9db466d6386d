"""Sphinx extension for the student edition (``make student``): hide the gated solutions too.

sphinx-exercise's ``hide_solutions = True`` drops a ``solution`` directive, but of a gated
solution (``solution-start`` … ``solution-end``) it drops only the opening directive: the
solution's text and code cells, which sit between the two directives, stay on the page. With
this extension loaded and ``hide_solutions`` on, everything from a ``solution-start`` through
its ``solution-end`` is removed from the doctree (so from the HTML and the search index too).
With ``hide_solutions`` off it changes nothing.
"""

from __future__ import annotations

from docutils import nodes
from sphinx.errors import ExtensionError
from sphinx.transforms import SphinxTransform


class removed_solution_start(nodes.Element):  # noqa: N801 (docutils node naming)
    """Marks where a gated solution began; removed with the solution before writing."""


def _solution_start_directive():
    from sphinx_exercise.directive import SolutionStartDirective

    class StudentSolutionStartDirective(SolutionStartDirective):
        def run(self):
            result = (
                super().run()
            )  # also records the gated structure sphinx-exercise checks
            if self.env.app.config.hide_solutions:
                marker = removed_solution_start()
                marker.source, marker.line = self.get_source_info()
                return [marker]
            return result

    return StudentSolutionStartDirective


class RemoveGatedSolutions(SphinxTransform):
    """Remove each hidden gated solution: its start marker, what follows, its end node."""

    default_priority = 5  # before sphinx-exercise merges gated directives (priority 10)

    def apply(self, **kwargs) -> None:
        if not self.config.hide_solutions:
            return
        from sphinx_exercise.nodes import solution_end_node

        for marker in list(self.document.findall(removed_solution_start)):
            parent = marker.parent
            start = parent.index(marker)
            end = next(
                (
                    i
                    for i in range(start + 1, len(parent.children))
                    if isinstance(parent.children[i], solution_end_node)
                ),
                None,
            )
            if end is None:
                raise ExtensionError(
                    f"student_edition: no solution-end after the solution-start at "
                    f"{marker.source}:{marker.line}"
                )
            removed = parent.children[start : end + 1]
            stub = _stub(removed)
            check = parent.children[end + 1] if end + 1 < len(parent.children) else None
            for child in removed:
                parent.remove(child)
            if stub is not None:
                parent.insert(start, stub)
            if _is_cell(check):  # the check cell: drop the full edition's output
                for output in [
                    c for c in check.children if "cell_output" in c["classes"]
                ]:
                    check.remove(output)


def _is_cell(node) -> bool:
    return isinstance(node, nodes.container) and "cell" in node.get("classes", [])


def _stub(removed):
    """A code block with the removed solution's function headers (tools/build_student.py)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from build_student import ANSWER_CELL, stub_for

    code = [
        block.astext()
        for node in removed
        if _is_cell(node)
        for part in node.children
        if "cell_input" in part.get("classes", [])
        for block in part.findall(nodes.literal_block)
    ]
    text = stub_for("\n\n".join(code)) if code else ANSWER_CELL
    if text == ANSWER_CELL:
        return None
    block = nodes.literal_block(text, text, language="ipython3")
    return nodes.container("", block, classes=["student-stub"])


def setup(app):
    app.setup_extension(
        "sphinx_exercise"
    )  # so that the directive below overrides its own
    app.add_directive("solution-start", _solution_start_directive(), override=True)
    app.add_node(removed_solution_start)
    app.add_transform(RemoveGatedSolutions)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
