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
    MATHJAX_CDN,
    PHONE,
    ROOT,
    SCREENSHOTS,
    STUDENT_HTML,
    TIMEOUT_MS,
    VIEWPORT,
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


@pytest.fixture
def page_of(browser, server):
    """Open a page of the served book; yields the function ``open(docname, phone=False)``.

    It returns (page, list of script errors). The MathJax that the pages load from their CDN is
    answered from the local npm copy; every other request off this machine is refused. With
    ``phone=True`` the page is opened 390 px wide with touch (``page.tap`` works).
    """
    contexts = []

    def route(route):
        url = route.request.url
        if url.startswith(server):
            return route.continue_()
        if url.startswith(MATHJAX_CDN):
            rel = url[len(MATHJAX_CDN) :].split("?")[0].split("#")[0]
            path = (MATHJAX / rel).resolve()
            if path.is_file() and MATHJAX.resolve() in path.parents:
                return route.fulfill(path=str(path))
            return route.fulfill(status=404, body=f"not in the local MathJax: {rel}")
        return route.abort()  # nothing else off this machine: the test needs no network

    def open_page(docname: str, phone: bool = False, hash: str = ""):  # noqa: A002
        if phone:
            context = browser.new_context(
                viewport=PHONE, has_touch=True, is_mobile=True, device_scale_factor=2
            )
        else:
            context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server}{docname}.html{hash}", wait_until="load")
        return page, errors

    yield open_page
    for context in contexts:
        context.close()


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "content: checks of what the chapters write (equations, tables, code, figures); "
        "a failure names the chapter element to fix",
    )
