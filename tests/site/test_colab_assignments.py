"""The assignments' student notebooks in Colab's way (``make test-colab``).

Each student notebook of ``make assignments`` (tools/build_assignments.py), alone in Colab's
empty working directory, runs top to bottom in the Colab-like environment of test_colab.py:
its first cell installs ``otter-grader`` and ``mtgmm`` (from this checkout) and writes the
visible tests, so ``grader.check`` works without the ``tests/`` folder. Only the cells tagged
``raises-exception`` (those that use the student's still blank function) may fail.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
from helpers import ROOT, config
from test_colab import colab, run  # noqa: F401 (the fixture)

sys.path.insert(0, str(ROOT / "tools"))
pytest.importorskip("otter", reason="otter-grader (the assign extra) not installed")
import build_assignments as ba  # noqa: E402

CHAPTERS = ba.chapters_with_questions()


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("assignments")
    return {chapter: ba.build(chapter, out) for chapter in CHAPTERS}


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_assignment_runs_in_colab(colab, built, chapter, tmp_path):  # noqa: F811
    cwd = tmp_path / "content"
    cwd.mkdir()
    notebook = cwd / f"{chapter}.ipynb"
    shutil.copy(built[chapter] / "student" / notebook.name, notebook)
    url = config()["repository"]["url"].rstrip("/")
    cmd = [colab["python"], Path(__file__).with_name("colab_run.py"), notebook]
    cmd += ["--url", url, "--source", colab["source"], "--cwd", cwd]
    out = run(cmd, env=colab["env"], cwd=cwd)
    report = json.loads(out.strip().splitlines()[-1])
    assert report["in_colab"] is True
    assert report["torch"] == colab["torch"], "the install changed torch"
    for q in ba.load_questions(chapter).values():
        assert (cwd / "tests" / f"{q.function}.py").is_file(), (
            "visible tests not written"
        )
