"""What a reader does with a page, on a phone and on a laptop (``make test-site``).

- Navigation: at 390 px a tap on the visible ☰ opens the primary sidebar (the book's contents)
  and a tap on the page-contents button opens the secondary sidebar; at 1280 px a click on ☰
  collapses the primary sidebar. (pydata-sphinx-theme 0.17 binds the toggles to a hidden copy
  of the button, upstream issue 2451; ``_static/book.js`` forwards the visible ones.)
- Solutions: at 390 px a tap on a solution's title opens the solution, the page does not jump
  to the exercise linked in the title, and no script fails.
- Figures: a tap on a figure image opens the full-size image.

Screenshots of each state go to ``_build/screenshots/reader/``.
"""

from __future__ import annotations

import re

import pytest
from helpers import SCREENSHOTS, is_chapter, toc_docnames

KNOWN_SCRIPT_ERRORS = {"Identifier 'THEBE_JS_URL' has already been declared"}
CHAPTERS = [d for d in toc_docnames() if is_chapter(d)]
NAV_PAGE = "book/mixture"  # any chapter with a table of contents and sections


def first_with(site, selector_text: str) -> str:
    """The first chapter whose built page contains ``selector_text``."""
    for docname in CHAPTERS:
        if selector_text in (site / f"{docname}.html").read_text(encoding="utf-8"):
            return docname
    pytest.skip(f"no chapter has {selector_text!r}")


def shot(page, name: str) -> None:
    folder = SCREENSHOTS / "reader"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"))


def script_errors(errors: list[str]) -> list[str]:
    return [e for e in errors if e not in KNOWN_SCRIPT_ERRORS]


SIDEBAR_STATE = """
() => {
  const dialog = document.getElementById('pst-primary-sidebar-modal');
  const side = document.getElementById('pst-primary-sidebar');
  const dialog2 = document.getElementById('pst-secondary-sidebar-modal');
  const links = dialog ? dialog.querySelectorAll('a[href]').length : 0;
  const visible = dialog && dialog.open ? [...dialog.querySelectorAll('a[href]')]
    .filter(a => a.getBoundingClientRect().width > 0).length : 0;
  return {
    primaryOpen: !!(dialog && dialog.open), primaryLinks: links, primaryVisible: visible,
    secondaryOpen: !!(dialog2 && dialog2.open),
    secondaryLinks: dialog2 ? dialog2.querySelectorAll('a[href]').length : 0,
    collapsed: side.classList.contains('pst-sidebar-hidden'),
    sidebarWidth: side.getBoundingClientRect().width,
  };
}
"""


def test_phone_menu_opens_the_contents(site, page_of, screenshots):
    page, errors = page_of(NAV_PAGE, phone=True)
    toggle = page.locator("button.primary-toggle:visible")
    assert toggle.count() == 1, f"{toggle.count()} visible ☰ buttons at 390 px"
    toggle.tap()
    page.wait_for_timeout(400)
    state = page.evaluate(SIDEBAR_STATE)
    shot(page, "phone-menu")
    assert state["primaryOpen"], f"a tap on ☰ at 390 px opens nothing: {state}"
    assert state["primaryVisible"] > 5, f"the opened menu shows no links: {state}"
    page.keyboard.press("Escape")
    page.wait_for_timeout(200)
    assert not page.evaluate(SIDEBAR_STATE)["primaryOpen"], "Escape does not close it"
    assert not script_errors(errors), errors


def test_phone_page_contents_button_opens(site, page_of, screenshots):
    page, errors = page_of(NAV_PAGE, phone=True)
    toggle = page.locator("button.secondary-toggle:visible")
    assert toggle.count() == 1, f"{toggle.count()} visible contents buttons at 390 px"
    toggle.tap()
    page.wait_for_timeout(400)
    state = page.evaluate(SIDEBAR_STATE)
    shot(page, "phone-page-contents")
    assert state["secondaryOpen"] and state["secondaryLinks"] > 1, (
        f"a tap on the page-contents button at 390 px opens nothing: {state}"
    )
    assert not script_errors(errors), errors


def test_laptop_menu_collapses_the_sidebar(site, page_of, screenshots):
    page, errors = page_of(NAV_PAGE)
    before = page.evaluate(SIDEBAR_STATE)
    assert not before["collapsed"] and before["sidebarWidth"] > 100, before
    page.locator("button.primary-toggle:visible").click()
    page.wait_for_timeout(600)
    after = page.evaluate(SIDEBAR_STATE)
    shot(page, "laptop-menu-collapsed")
    assert after["collapsed"] and not after["primaryOpen"], (
        f"☰ at 1280 px does not collapse the sidebar: {after}"
    )
    page.locator("button.primary-toggle:visible").click()
    page.wait_for_timeout(600)
    assert not page.evaluate(SIDEBAR_STATE)["collapsed"], (
        "a second click does not reopen"
    )
    assert not script_errors(errors), errors


@pytest.mark.parametrize("phone", [True, False], ids=["390px-tap", "1280px-click"])
def test_solution_title_opens_the_solution(site, page_of, screenshots, phone):
    docname = first_with(site, 'class="solution dropdown')
    page, errors = page_of(docname, phone=phone)
    solution = page.locator("div.solution.dropdown").first
    title = solution.locator(".admonition-title")
    link = title.locator("a")
    assert link.count(), (
        "the solution title has no link to its exercise (test is vacuous)"
    )
    assert "toggle-hidden" in (solution.get_attribute("class") or ""), "not folded"
    title.scroll_into_view_if_needed()
    url = page.url
    # the tap lands on the link text, where the reader's finger goes (by position: the
    # fix makes the title, not the link, take it)
    box = link.bounding_box()
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    (page.touchscreen.tap if phone else page.mouse.click)(x, y)
    page.wait_for_timeout(400)
    shot(page, f"solution-{'phone' if phone else 'laptop'}")
    problems = []
    if "toggle-hidden" in (solution.get_attribute("class") or ""):
        problems.append("the solution did not open")
    if page.url != url:
        problems.append(f"the page jumped to {page.url}")
    problems += [f"script error: {e}" for e in script_errors(errors)]
    assert not problems, f"{docname}: " + "; ".join(problems)
    (title.tap if phone else title.click)(position={"x": 8, "y": 8})
    page.wait_for_timeout(300)
    assert "toggle-hidden" in (solution.get_attribute("class") or ""), "does not close"


def test_figure_tap_opens_the_full_image(site, page_of, screenshots):
    docname = first_with(site, "<figure")
    page, errors = page_of(docname, phone=True)
    img = page.locator("main figure img").first
    img.scroll_into_view_if_needed()
    src = img.evaluate("el => el.currentSrc || el.src")
    with page.context.expect_page(timeout=5_000) as new:
        img.tap()
    opened = new.value
    opened.wait_for_load_state()
    assert opened.url == src, f"{docname}: the tap opened {opened.url}, not {src}"
    assert re.search(r"\.(png|svg|jpe?g)$", opened.url)
    assert not script_errors(errors), errors
