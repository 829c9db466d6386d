"""Fixtures for the site tests: the built book, a local web server, headless Chromium.

These tests check the book as a reader gets it (``make test-site``, ``make student``,
``make test-colab``); the package tests in ``tests/`` do not collect them (``norecursedirs`` in
pyproject.toml). The built HTML in ``_build/html`` is used when it is newer than every input of
the build; otherwise it is rebuilt from the committed notebooks (``tools/build_book.py
--no-execute``, a few seconds).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import sys
import threading
from pathlib import Path

import pytest
from helpers import (
    CHROMIUM,
    CHROMIUM_ARGS,
    HTML,
    MATHJAX,
    ROOT,
    SCREENSHOTS,
    STUDENT_HTML,
    build,
    is_fresh,
)


@pytest.fixture(scope="session")
def site() -> Path:
    """``_build/html``, rebuilt from the committed notebooks if missing or stale.

    ``SITE_HTML=DIR`` tests the build in DIR as it is instead (another build of the book).
    """
    if os.environ.get("SITE_HTML"):
        return Path(os.environ["SITE_HTML"]).resolve()
    if not is_fresh(HTML, []):
        build([sys.executable, "tools/build_book.py", "--no-execute"])
    return HTML


@pytest.fixture(scope="session")
def student_site() -> Path:
    """``_build/student/html``, rebuilt (``tools/build_student.py``) if missing or stale."""
    tools = [ROOT / "tools" / "build_student.py"]
    tools += list((ROOT / "tools" / "sphinx_ext").glob("*.py"))
    if not is_fresh(STUDENT_HTML, tools):
        build([sys.executable, "tools/build_student.py"])
    return STUDENT_HTML


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="session")
def server(site: Path):
    """Serve the built book on 127.0.0.1 (a free port); yield its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium (the system one: playwright cannot download its own here)."""
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: `make site-deps` installs it")
    if not (MATHJAX / "es5" / "tex-mml-chtml.js").is_file():
        pytest.fail(f"no MathJax in {MATHJAX}: `make site-deps` installs it (npm ci)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """``_build/screenshots/``, emptied once per session (a CI artifact)."""
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    SCREENSHOTS.mkdir(parents=True)
    return SCREENSHOTS
