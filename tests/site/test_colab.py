"""The Colab install path (``make test-colab``): each chapter notebook runs as it would in Colab.

A fresh virtual environment holds only what Colab preinstalls that matters here (torch, numpy,
matplotlib, and ipykernel/nbclient to run notebooks) and a stand-in ``google.colab`` module.
Each committed ``book/X.ipynb`` then runs top to bottom in a kernel of that environment, in an
empty working directory, with its Colab cell's ``%pip install "mtgmm @ git+URL"`` pointed at a
copy of this checkout (the files git would push: tracked and untracked-but-not-ignored), since
GitHub is out of reach. The test checks that the cell installed ``mtgmm`` into the environment,
that every cell ran, and that the install kept Colab's torch (same version before and after).
It executes every chapter again: minutes (see the Makefile).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, config, is_chapter, toc_docnames

CHAPTERS = [d for d in toc_docnames() if is_chapter(d)]
# What Colab has preinstalled that the chapters rely on (versions from constraints.txt), and
# what runs a notebook; mtgmm's other requirements (scipy, tqdm) come with the install cell.
PREINSTALLED = ["torch", "numpy", "matplotlib", "ipykernel", "nbclient", "nbformat"]
FIND_LINKS = ["--find-links", "/opt/wheels"] if Path("/opt/wheels").is_dir() else []
STUB = '"""Stand-in for Colab\'s google.colab module (tests only): importable, does nothing."""\n'


def run(cmd: list, **kw) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    if proc.returncode:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n"
            f"{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
        )
    return proc.stdout


def repository_files() -> list[str]:
    out = run(["git", "ls-files", "-z", "-c", "-o", "--exclude-standard"], cwd=ROOT)
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


@pytest.fixture(scope="session")
def colab(tmp_path_factory):
    """The Colab-like environment: (python, env for its kernels, source copy, cwd, torch)."""
    base = tmp_path_factory.mktemp("colab")
    venv = base / "venv"
    run([sys.executable, "-m", "venv", venv])
    python = venv / "bin" / "python"
    pip = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    run(pip + FIND_LINKS + ["-c", ROOT / "constraints.txt"] + PREINSTALLED)
    torch_before = run([python, "-c", "import torch; print(torch.__version__)"]).strip()
    probe = "import importlib.util as u; print(u.find_spec('mtgmm') is None)"
    assert run([python, "-c", probe], cwd=base).strip() == "True", (
        "mtgmm is preinstalled"
    )

    stub = base / "stub" / "google" / "colab"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text(STUB, encoding="utf-8")
    source = base / "repository"
    for rel in repository_files():
        (source / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, source / rel)
    # pins for what the install cell brings in (not torch: the install must keep Colab's)
    pins = [
        line
        for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines()
        if not line.strip().startswith("torch")
    ]
    (base / "pins.txt").write_text("\n".join(pins) + "\n", encoding="utf-8")
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("MTGMM_", "PYTHON"))
    }
    env.update(
        PYTHONPATH=str(base / "stub"),
        PIP_CONSTRAINT=str(base / "pins.txt"),
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        CUDA_VISIBLE_DEVICES="",
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
    )
    if FIND_LINKS:
        env["PIP_FIND_LINKS"] = FIND_LINKS[1]
    cwd = base / "content"  # Colab's empty working directory
    cwd.mkdir()
    return {
        "python": python,
        "env": env,
        "source": source,
        "cwd": cwd,
        "torch": torch_before,
    }


def test_there_are_chapters():
    assert CHAPTERS


@pytest.mark.parametrize("docname", CHAPTERS)
def test_chapter_runs_in_colab(colab, docname):
    url = config()["repository"]["url"].rstrip("/")
    cmd = [
        colab["python"],
        Path(__file__).with_name("colab_run.py"),
        ROOT / f"{docname}.ipynb",
    ]
    cmd += ["--url", url, "--source", colab["source"], "--cwd", colab["cwd"]]
    out = run(cmd, env=colab["env"], cwd=colab["cwd"])
    report = json.loads(out.strip().splitlines()[-1])
    assert report["in_colab"] is True, "the stand-in google.colab was not importable"
    assert report["python"].startswith(str(colab["python"].parent.parent))
    site_packages = str(colab["python"].parent.parent / "lib")
    assert report["mtgmm"].startswith(site_packages), (
        f"mtgmm imported from {report['mtgmm']}"
    )
    assert report["torch"] == colab["torch"], "the notebook's kernel has another torch"
    after = run(
        [colab["python"], "-c", "import torch; print(torch.__version__)"]
    ).strip()
    assert after == colab["torch"], (
        f"the install changed torch: {colab['torch']} -> {after}"
    )
