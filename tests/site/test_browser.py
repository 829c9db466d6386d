"""The book as a reader sees it: every page opened in headless Chromium (``make test-site``).

The built site is served on 127.0.0.1; the MathJax that the pages load from their CDN is
answered from the local npm copy in ``tools/site/node_modules`` (the built pages keep their
CDN link), and every other request off this machine is refused. For each page the test checks
that the math is typeset (no raw TeX left in the text, a MathJax container in every math
element, no MathJax error), that every image loads, that the theorem, proof, exercise and
solution boxes its source declares are rendered, that a chapter page (a notebook) has working
launch buttons, and that no script fails; it saves a full-page screenshot in
``_build/screenshots/`` (a CI artifact).
"""

from __future__ import annotations

import re
from collections import Counter

import pytest
from helpers import (
    GENERATED_PAGES,
    MATHJAX,
    MATHJAX_CDN,
    is_chapter,
    source_of,
    toc_docnames,
)

PAGES = toc_docnames() + GENERATED_PAGES
VIEWPORT = {"width": 1280, "height": 900}
TIMEOUT_MS = 30_000
DIRECTIVE = re.compile(
    r"^\s*(?:`{3,}|:{3,})\{(prf:[a-z]+|exercise(?:-start)?|solution(?:-start)?)\}"
)
# sphinx-thebe 0.3.1 under Sphinx 7.4 writes its config script twice into every page; the
# second copy fails to redeclare a const. Harmless here: the book does not enable Thebe.
KNOWN_SCRIPT_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}
# What raw TeX left in a page's text looks like (code blocks and typeset math are removed).
RAW_TEX = [
    (re.compile(r"\$\$"), "$$"),
    (re.compile(r"\\begin\{"), "\\begin{"),
    (re.compile(r"\\[()\[\]]"), "\\( \\) \\[ \\]"),
    (re.compile(r"\$\s*\\[A-Za-z]+"), "$\\macro"),
]

WAIT_FOR_MATHJAX = """
async (timeout) => {
  const math = [...document.querySelectorAll('.math')];
  if (!math.length) return {math: 0};
  const t0 = Date.now();
  while (!(window.MathJax && MathJax.startup && MathJax.startup.promise)) {
    if (Date.now() - t0 > timeout) return {math: math.length, loaded: false};
    await new Promise(r => setTimeout(r, 50));
  }
  await MathJax.startup.promise;
  const items = [...MathJax.startup.document.math];
  const errors = items
    .filter(m => /<merror|mathcolor="red"/.test(MathJax.startup.toMML(m.root)))
    .map(m => m.math);
  const untypeset = math
    .filter(el => !el.querySelector('mjx-container'))
    .map(el => el.textContent.slice(0, 100));
  return {math: math.length, loaded: true, items: items.length, errors, untypeset};
}
"""

VISIBLE_TEXT = """
() => {
  const root = document.querySelector('main') || document.body;
  const clone = root.cloneNode(true);
  clone.querySelectorAll('pre, code, script, style, textarea, mjx-container, .highlight')
    .forEach(el => el.remove());
  return clone.textContent;
}
"""

WAIT_FOR_IMAGES = """
async (timeout) => {
  const images = [...document.images];
  images.forEach(img => { img.loading = 'eager'; });
  const settle = img => img.complete ? null : new Promise(r => {
    img.addEventListener('load', r); img.addEventListener('error', r);
  });
  await Promise.race([
    Promise.all(images.map(settle)),
    new Promise(r => setTimeout(r, timeout)),
  ]);
  return images.map(img => ({src: img.getAttribute('src'), width: img.naturalWidth}));
}
"""

BOXES = """
(selector) => [...document.querySelectorAll(selector)].map(el => {
  const title = el.querySelector('.admonition-title');
  const box = el.getBoundingClientRect();
  return {title: title ? title.textContent.trim() : '', height: box.height};
})
"""


def expected_boxes(docname: str) -> Counter:
    """How many boxes of each kind the page's source declares."""
    source = source_of(docname)
    if source is None or source.suffix != ".md":
        return Counter()
    counts: Counter = Counter()
    for line in source.read_text(encoding="utf-8").splitlines():
        if m := DIRECTIVE.match(line):
            counts[m.group(1).removesuffix("-start")] += 1
    return counts


def box_selectors(expected: Counter) -> dict[str, tuple[str, int]]:
    """CSS selector and expected count for each kind of box (sphinx-proof, sphinx-exercise)."""
    out = {}
    proofs = sum(n for kind, n in expected.items() if kind.startswith("prf:"))
    if proofs:
        out["prf:* (all)"] = ("div.proof.admonition", proofs)
    for kind, n in expected.items():
        if kind.startswith("prf:") and kind != "prf:proof":
            out[kind] = (f"div.proof.{kind.removeprefix('prf:')}.admonition", n)
        elif kind in ("exercise", "solution"):
            out[kind] = (f"div.{kind}.admonition", n)
    return out


def screenshot_name(docname: str) -> str:
    return docname.replace("/", "__") + ".png"


@pytest.fixture
def page_of(browser, server):
    """Open a page of the served book; yields (open function, list of script errors)."""
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

    def open_page(docname: str):
        context = browser.new_context(viewport=VIEWPORT)
        contexts.append(context)
        context.route("**/*", route)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{server}{docname}.html", wait_until="load")
        return page, errors

    yield open_page
    for context in contexts:
        context.close()


@pytest.mark.parametrize("docname", PAGES)
def test_page(site, page_of, screenshots, docname):
    if not (site / f"{docname}.html").is_file():
        if docname in GENERATED_PAGES:
            pytest.skip(f"{docname}.html is not generated by this build")
        pytest.fail(f"{docname}.html was not built")
    page, errors = page_of(docname)
    problems: list[str] = []

    math = page.evaluate(WAIT_FOR_MATHJAX, TIMEOUT_MS)
    if math["math"]:
        if not math["loaded"]:
            problems.append("the page has math but MathJax never started")
        else:
            problems += [f"MathJax error in: {tex[:100]!r}" for tex in math["errors"]]
            problems += [
                f"math element not typeset: {tex!r}" for tex in math["untypeset"]
            ]
    text = page.evaluate(VISIBLE_TEXT)
    for pattern, what in RAW_TEX:
        for m in pattern.finditer(text):
            context = text[max(0, m.start() - 40) : m.end() + 40].replace("\n", " ")
            problems.append(f"raw TeX ({what}) in the text: …{context}…")

    for img in page.evaluate(WAIT_FOR_IMAGES, TIMEOUT_MS):
        if not img["width"]:
            problems.append(f"image does not load: {img['src']}")

    for kind, (selector, n) in box_selectors(expected_boxes(docname)).items():
        boxes = page.evaluate(BOXES, selector)
        if len(boxes) != n:
            problems.append(
                f"{kind}: {n} in the source, {len(boxes)} rendered ({selector})"
            )
        for box in boxes:
            # a plain proof has no title bar (it starts "Proof."): check the others' titles
            if box["height"] <= 0 or not (box["title"] or kind == "prf:* (all)"):
                problems.append(f"{kind}: a box without title or size: {box}")

    if is_chapter(docname):
        launch = page.locator(".dropdown-launch-buttons")
        if launch.count() != 1:
            problems.append("a chapter page without launch buttons")
        else:
            launch.locator("button.dropdown-toggle").click()
            for name, host in (
                ("Colab", "colab.research.google.com"),
                ("Binder", "mybinder"),
            ):
                link = launch.locator(f"a[href*='{host}']")
                try:
                    link.wait_for(state="visible", timeout=5_000)
                except Exception:  # noqa: BLE001 (playwright's TimeoutError)
                    problems.append(
                        f"no visible {name} launch button after opening the menu"
                    )
                    continue
                href = link.get_attribute("href") or ""
                if not href.endswith(f"{docname}.ipynb"):
                    problems.append(f"{name} button opens {href}, not {docname}.ipynb")
            page.keyboard.press("Escape")
            page.mouse.click(5, VIEWPORT["height"] - 5)

    problems += [f"script error: {e}" for e in errors if e not in KNOWN_SCRIPT_ERRORS]
    page.screenshot(path=str(screenshots / screenshot_name(docname)), full_page=True)
    assert not problems, f"{docname}:\n  " + "\n  ".join(problems)
