"""Does the content fit the page? Equations, tables, code and figure text (``make test-site``).

CONTENT CHECKS: these test what the chapters write (their equations, tables, code cells and
figures), so a failure names the page and the element to fix in that chapter's ``book/X.md``;
the site's own part (``_static/book.css``: scrolling equation boxes, the code font that fits 88
columns) is tested by them too. Each test reports every failing element of its page.

- (a) Equations: at 1280 px no display equation is wider than its column; at 390 px every
  display equation wider than its column sits in a container that scrolls sideways
  (``overflow-x: auto``) with a visible scrollbar (a ``scrollbar-color`` set, as
  ``_static/book.css`` does), so nothing is cut off unseen.
- (b) Tables and code: at 1280 px no table is clipped (wider than its column or than a box
  that hides or scrolls its overflow); at most ``MAX_SCROLLING_CODE`` code or output blocks of
  a page need horizontal scrolling.
- (c) Figures: the smallest text of every figure, at its rendered size at 1280 px, is at least
  ``MIN_TEXT_PX`` CSS px. It is computed as ``points × dpi / 72 × rendered width / image
  width``: the dpi from the PNG's pHYs chunk (matplotlib writes it), the smallest point size
  as the least of the book style's sizes (``mtgmm.plotting.BOOK_STYLE``) and of every size the
  figure's cell sets (``fontsize=8``, ``labelsize=``, ``set_fontsize(9)``, ``"small"``…), the
  cell being found by the image's content hash in the committed notebook.

All folded content (solutions, hidden inputs) is unfolded before measuring.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import struct
from pathlib import Path

import nbformat
import pytest
from helpers import (
    GENERATED_PAGES,
    ROOT,
    SCREENSHOTS,
    TIMEOUT_MS,
    WAIT_FOR_IMAGES,
    WAIT_FOR_MATHJAX,
    is_chapter,
    toc_docnames,
)

pytestmark = pytest.mark.content
PAGES = toc_docnames()
MAX_SCROLLING_CODE = 2  # code or output blocks per page that may scroll sideways
MIN_TEXT_PX = 9.0
SLACK_PX = 1.0  # sub-pixel rounding

UNFOLD = """
() => {
  document.querySelectorAll('.toggle-hidden').forEach(el => el.classList.remove('toggle-hidden'));
  document.querySelectorAll('details').forEach(el => { el.open = true; });
}
"""

# For each display equation: its typeset width, its column's content width, and the nearest
# ancestor (itself included) that scrolls sideways and actually has overflow to scroll.
EQUATIONS = """
() => [...document.querySelectorAll('main div.math')].map((el, i) => {
  const math = el.querySelector('mjx-container mjx-math') || el.querySelector('mjx-container');
  const col = el.parentElement, cs = getComputedStyle(col);
  const column = col.clientWidth - parseFloat(cs.paddingLeft) - parseFloat(cs.paddingRight);
  const width = math ? math.getBoundingClientRect().width : 0;
  let node = math, scroller = null;
  while (node && node !== col.parentElement) {
    const o = getComputedStyle(node).overflowX;
    const visible = getComputedStyle(node).scrollbarColor !== 'auto';  // a scrollbar shown
    if ((o === 'auto' || o === 'scroll') && visible && node.scrollWidth > node.clientWidth) {
      scroller = node; break;
    }
    node = node.parentElement;
  }
  const heading = (() => {
    let n = el; while (n && !(n.tagName === 'SECTION' && n.id)) n = n.parentElement;
    return n ? '#' + n.id : '';
  })();
  return {index: i, id: el.id || heading, width, column,
          tex: [...el.childNodes].filter(n => !(n.classList && n.classList.contains('eqno')))
            .map(n => n.textContent).join('').replace(/\\s+/g, ' ').trim().slice(0, 70),
          scrolls: !!scroller};
})
"""

TABLES = """
() => {
  const article = document.querySelector('article.bd-article') || document.querySelector('main');
  const ar = article.getBoundingClientRect(), acs = getComputedStyle(article);
  const right = ar.right - parseFloat(acs.paddingRight) + 1;
  return [...document.querySelectorAll('main table')].map((t, i) => {
    const r = t.getBoundingClientRect();
    const problems = [];
    if (r.width && r.right > right) {
      problems.push(`reaches ${Math.round(r.right - right)} px past the column`);
    }
    for (let n = t.parentElement; n && n !== article; n = n.parentElement) {
      const o = getComputedStyle(n).overflowX;
      if (o !== 'visible' && n.scrollWidth > n.clientWidth + 1) {
        const box = n.className || n.tagName;
        problems.push(`${n.scrollWidth - n.clientWidth} px hidden in a ${o} box (${box})`);
        break;
      }
    }
    const caption = t.querySelector('caption');
    const head = t.querySelector('thead') || t.querySelector('tr');
    return {index: i, id: t.id || (t.closest('[id]') || {}).id || '',
            what: (caption ? caption.textContent : head ? head.textContent : '')
              .replace(/\\s+/g, ' ').trim().slice(0, 60), problems};
  }).filter(t => t.problems.length);
}
"""

CODE = """
() => [...document.querySelectorAll('main pre')]
  .filter(p => p.scrollWidth > p.clientWidth + 1)
  .map(p => ({over: p.scrollWidth - p.clientWidth,
              line: p.textContent.split('\\n').reduce((a, b) => b.length > a.length ? b : a, '')
                .trim().slice(0, 60)}))
"""

IMAGES = """
() => [...document.querySelectorAll('main img')].map(img => ({
  src: img.getAttribute('src'), natural: img.naturalWidth,
  rendered: img.getBoundingClientRect().width,
  id: (img.closest('figure[id]') || {}).id || '',
}))
"""


def opened(page_of, docname: str, phone: bool = False):
    page, _ = page_of(docname, phone=phone)
    math = page.evaluate(WAIT_FOR_MATHJAX, TIMEOUT_MS)
    if math["math"] and not math.get("loaded"):
        pytest.fail(f"{docname}: MathJax never started")
    page.evaluate(UNFOLD)
    page.wait_for_timeout(100)
    return page


_MEASURED: dict[str, dict] = {}


def measured_at_1280(page_of, docname: str) -> dict:
    """Equations, tables, code and images of a page at 1280 px, measured once per page (one
    page load serves the three 1280-px tests), with the page's full screenshot."""
    if docname not in _MEASURED:
        page = opened(page_of, docname)
        page.evaluate(WAIT_FOR_IMAGES, TIMEOUT_MS)
        _MEASURED[docname] = {
            "equations": page.evaluate(EQUATIONS),
            "tables": page.evaluate(TABLES),
            "code": page.evaluate(CODE),
            "images": page.evaluate(IMAGES),
        }
        shots = SCREENSHOTS / "layout"
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(
            path=str(shots / (docname.replace("/", "__") + ".png")), full_page=True
        )
    return _MEASURED[docname]


def built(site: Path, docname: str) -> None:
    if not (site / f"{docname}.html").is_file():
        pytest.fail(f"{docname}.html was not built")


def report(docname: str, what: str, problems: list[str]) -> str:
    return f"{docname}: {len(problems)} {what}:\n  " + "\n  ".join(problems)


# --- (a) display equations -----------------------------------------------------------------


@pytest.mark.parametrize("docname", PAGES)
def test_equations_fit_the_column_at_1280(site, page_of, docname):
    built(site, docname)
    wide = [
        f"{eq['id'] or 'equation ' + str(eq['index'] + 1)}: {eq['width']:.0f} px wide in a "
        f"{eq['column']:.0f} px column: {eq['tex']!r}"
        for eq in measured_at_1280(page_of, docname)["equations"]
        if eq["width"] > eq["column"] + SLACK_PX
    ]
    assert not wide, report(docname, "display equation(s) wider than the column", wide)


@pytest.mark.parametrize("docname", PAGES)
def test_wide_equations_scroll_on_a_phone(site, page_of, docname):
    built(site, docname)
    page = opened(page_of, docname, phone=True)
    cut = [
        f"{eq['id'] or 'equation ' + str(eq['index'] + 1)}: {eq['width']:.0f} px in "
        f"{eq['column']:.0f} px and no sideways scrolling: {eq['tex']!r}"
        for eq in page.evaluate(EQUATIONS)
        if eq["width"] > eq["column"] + SLACK_PX and not eq["scrolls"]
    ]
    assert not cut, report(docname, "display equation(s) cut off at 390 px", cut)


# --- (b) tables and code -------------------------------------------------------------------


@pytest.mark.parametrize("docname", PAGES)
def test_tables_and_code_fit_at_1280(site, page_of, docname):
    built(site, docname)
    measured = measured_at_1280(page_of, docname)
    problems = [
        f"table {t['id'] or t['index'] + 1} ({t['what']!r}): "
        + "; ".join(t["problems"])
        for t in measured["tables"]
    ]
    code = measured["code"]
    if len(code) > MAX_SCROLLING_CODE:
        problems.append(
            f"{len(code)} code/output blocks scroll sideways (at most "
            f"{MAX_SCROLLING_CODE}):"
        )
        problems += [f"  +{c['over']} px: {c['line']!r}" for c in code]
    assert not problems, report(docname, "table/code problem(s)", problems)


# --- (c) figure text -------------------------------------------------------------------------

NAMED_SIZES = {  # matplotlib's font_scalings, relative to font.size
    "xx-small": 0.579,
    "x-small": 0.694,
    "small": 0.833,
    "medium": 1.0,
    "large": 1.2,
    "x-large": 1.44,
    "xx-large": 1.728,
    "smaller": 0.833,
    "larger": 1.2,
}
_VALUE = r"""(?:[0-9]+(?:\.[0-9]+)?|["'][a-z-]+["'])"""
SIZE_SETTING = re.compile(
    # keyword arguments: fontsize=8, labelsize="small", size=9 (not figsize=, capsize=, ms=)
    rf"(?<![A-Za-z_])(?:fontsize|labelsize|titlesize|title_fontsize|size)\s*=\s*(?P<kw>{_VALUE})"
    # rcParams: {"font.size": 8}, rcParams["legend.fontsize"] = "small"
    rf"""|["'][a-z]+\.(?:[a-z]*size)["']\]?\s*[:=]\s*(?P<rc>{_VALUE})"""
    # setters: ax.title.set_fontsize(9), text.set_size(8)
    rf"|set_(?:font)?size\(\s*(?P<set>{_VALUE})"
)


@functools.cache
def book_style() -> dict:
    from mtgmm.plotting import BOOK_STYLE

    return dict(BOOK_STYLE)


def points(value: str) -> float | None:
    value = value.strip("'\"")
    base = float(book_style().get("font.size", 10))
    if value in NAMED_SIZES:
        return NAMED_SIZES[value] * base
    try:
        return float(value)
    except ValueError:
        return None


def smallest_points(cell_source: str) -> float:
    """The least font size, in points, that the book style or the cell's code sets."""
    style = book_style()
    sizes = [
        points(str(v))
        for k, v in style.items()
        if k == "font.size" or k.endswith("size") and not k.endswith("figsize")
    ]
    for m in SIZE_SETTING.finditer(cell_source):
        sizes.append(points(m.group("kw") or m.group("rc") or m.group("set")))
    return min(s for s in sizes if s)


def png_dpi(data: bytes) -> float | None:
    """The dpi in a PNG's pHYs chunk (pixels per metre), if it has one."""
    i = data.find(b"pHYs")
    if i < 0:
        return None
    x, _, unit = struct.unpack(">IIB", data[i + 4 : i + 13])
    return x * 0.0254 if unit == 1 else None


@functools.cache
def figure_cells() -> dict[str, tuple[str, str]]:
    """sha256 of every PNG output of the committed notebooks → (notebook, cell source)."""
    out = {}
    for ipynb in sorted((ROOT / "book").glob("*.ipynb")):
        nb = nbformat.read(ipynb, as_version=4)
        for cell in nb.cells:
            for output in cell.get("outputs", []):
                png = output.get("data", {}).get("image/png")
                if png:
                    digest = hashlib.sha256(base64.b64decode(png)).hexdigest()
                    out[digest] = (ipynb.name, cell.source)
    return out


@pytest.mark.parametrize("docname", [d for d in PAGES if d not in GENERATED_PAGES])
def test_figure_text_is_legible_at_1280(site, page_of, docname):
    built(site, docname)
    problems = []
    for img in measured_at_1280(page_of, docname)["images"]:
        src = img["src"] or ""
        if (
            not src.lower().endswith(".png")
            or not img["natural"]
            or not img["rendered"]
        ):
            continue
        path = (site / docname).parent / src
        data = path.read_bytes()
        dpi = png_dpi(data) or float(book_style().get("figure.dpi", 100))
        cell = figure_cells().get(hashlib.sha256(data).hexdigest())
        if cell is None and is_chapter(docname):
            problems.append(f"{src}: not found among the notebook's outputs")
            continue
        pt = smallest_points(cell[1] if cell else "")
        scale = img["rendered"] / img["natural"]
        px = pt * dpi / 72 * scale
        if px < MIN_TEXT_PX:
            problems.append(
                f"{img['id'] or Path(src).name[:12]}: {pt:g} pt text at {dpi:.0f} dpi, "
                f"{img['natural']} px shown at {img['rendered']:.0f} px → {px:.1f} px "
                f"(< {MIN_TEXT_PX:g})"
            )
    assert not problems, report(docname, "figure(s) with text below 9 px", problems)


def test_figure_text_check_can_fail():
    """The size parser sees the sizes a figure cell sets."""
    style_min = smallest_points("")
    assert smallest_points("ax.legend(fontsize=8)") == 8
    assert smallest_points("ax.title.set_fontsize(7)") == 7
    assert smallest_points("ax.tick_params(labelsize='small')") < style_min
    assert smallest_points('plt.rcParams["legend.fontsize"] = 7') == 7
    assert (
        smallest_points("ax.errorbar(x, y, ms=3, capsize=2, markersize=1)") == style_min
    )
    assert smallest_points("fig, ax = plt.subplots(figsize=(6, 3))") == style_min
