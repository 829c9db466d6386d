"""Static checks of the built HTML (no browser): launch URLs, internal links, the status page.

Every launch URL (Colab, Binder, download, repository, issues) must lead to the repository
named in ``_config.yml``, on its branch ``main``, and to an ``.ipynb`` that exists there; every
internal link and anchor of every page must resolve inside the built site.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import site_url
from bs4 import BeautifulSoup
from helpers import ROOT, config, is_chapter, toc_docnames

DOCS = toc_docnames()
CHAPTERS = [d for d in DOCS if is_chapter(d)]


def soup(path: Path) -> BeautifulSoup:
    return BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")


def repo() -> tuple[str, str, str]:
    """(url, owner/name, branch) of the repository in _config.yml."""
    r = config()["repository"]
    url = r["url"].rstrip("/")
    return url, url.removeprefix("https://github.com/"), r.get("branch", "")


def launch_links(page: BeautifulSoup) -> dict[str, list[str]]:
    links: dict[str, list[str]] = {
        "colab": [],
        "binder": [],
        "download": [],
        "source": [],
    }
    for a in page.select(".dropdown-launch-buttons a[href]"):
        href = a["href"]
        kind = "colab" if "colab.research.google.com" in href else "binder"
        links[kind].append(href)
    links["download"] = [
        a["href"] for a in page.select(".dropdown-download-buttons a[href]")
    ]
    links["source"] = [
        a["href"] for a in page.select(".dropdown-source-buttons a[href]")
    ]
    return links


def test_repository_and_branch():
    url, name, branch = repo()
    assert re.fullmatch(r"https://github\.com/[^/]+/[^/]+", url), url
    assert branch == "main", (
        "repository.branch must be main (the theme's default, master, 404s)"
    )


def test_there_are_chapters():
    assert CHAPTERS, (
        "no chapter (book/X.md with a jupytext header and book/X.ipynb) in _toc.yml"
    )


@pytest.mark.parametrize("docname", DOCS)
def test_launch_urls(site, docname):
    """Colab and Binder open ``X.ipynb`` on main of the configured repository; downloads exist."""
    url, name, branch = repo()
    page = site / f"{docname}.html"
    assert page.is_file(), f"{docname} was not built"
    links = launch_links(soup(page))
    if not is_chapter(docname):
        assert not links["colab"] and not links["binder"], (
            f"{docname} is no notebook chapter but has launch buttons: {links}"
        )
    else:
        assert len(links["colab"]) == 1 and len(links["binder"]) == 1, links
        colab = links["colab"][0]
        prefix = f"https://colab.research.google.com/github/{name}/blob/{branch}/"
        assert colab.startswith(prefix), colab
        path = colab.removeprefix(prefix)
        assert path == f"{docname}.ipynb", f"Colab opens {path}, not {docname}.ipynb"
        assert (ROOT / path).is_file(), (
            f"Colab opens {path}, which is not in the repository"
        )

        binder = urlsplit(links["binder"][0])
        assert (
            f"{binder.scheme}://{binder.netloc}"
            == config()["launch_buttons"]["binderhub_url"]
        )
        assert binder.path == f"/v2/gh/{name}/{branch}", binder.path
        (target,) = parse_qs(binder.query)["urlpath"]
        path = unquote(target).removeprefix("tree/")
        assert path == f"{docname}.ipynb", f"Binder opens {path}, not {docname}.ipynb"
        assert (ROOT / path).is_file(), path

        downloads = [h for h in links["download"] if h.endswith(".ipynb")]
        assert downloads, f"{docname}: no .ipynb download button"
    for href in links["download"]:
        target = (page.parent / urlsplit(href).path).resolve()
        assert target.is_file(), f"{docname}: download {href} is not in the built site"
        assert target.name in {
            f"{Path(docname).name}{s}" for s in (".md", ".ipynb", ".rst")
        }
    source = links["source"]
    assert url in source, f"{docname}: no repository button to {url}: {source}"
    for href in source:
        assert href == url or href.startswith(f"{url}/issues/new"), href


def _targets(html_root: Path):
    """(page, href) for every internal reference of every built page."""
    for page in sorted(html_root.rglob("*.html")):
        if "_static" in page.relative_to(html_root).parts:
            continue
        doc = soup(page)
        for tag, attr in (
            ("a", "href"),
            ("img", "src"),
            ("link", "href"),
            ("script", "src"),
        ):
            for el in doc.find_all(tag):
                href = el.get(attr)
                if not href or re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", href):
                    continue  # none, or external (http:, mailto:, javascript:, data:)
                yield page, href


def check_internal_links(html_root: Path) -> list[str]:
    ids: dict[Path, set[str]] = {}

    def ids_of(path: Path) -> set[str]:
        if path not in ids:
            doc = soup(path)
            ids[path] = {el["id"] for el in doc.find_all(id=True)}
            ids[path] |= {el["name"] for el in doc.find_all("a", attrs={"name": True})}
        return ids[path]

    broken = []
    for page, href in _targets(html_root):
        parts = urlsplit(href)
        target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
        if target.is_dir():
            target = target / "index.html"
        where = f"{page.relative_to(html_root)}: {href}"
        if not target.is_file():
            broken.append(f"{where} (no file)")
        elif parts.fragment and target.suffix == ".html":
            if unquote(parts.fragment) not in ids_of(target):
                broken.append(f"{where} (no anchor #{parts.fragment})")
    return broken


def test_internal_links_resolve(site):
    broken = check_internal_links(site)
    assert not broken, f"{len(broken)} broken internal link(s):\n" + "\n".join(
        broken[:50]
    )


def test_readme_links_published_book():
    address = site_url.pages_url()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert address in readme, f"README.md does not link the published book at {address}"


def test_pages_address_rule():
    assert (
        site_url.pages_url("https://github.com/Owner/repo")
        == "https://owner.github.io/repo/"
    )
    assert (
        site_url.pages_url("https://github.com/o/o.github.io") == "https://o.github.io/"
    )
    with pytest.raises(ValueError):
        site_url.pages_url("https://gitlab.com/o/r")


def test_status_page_lists_every_chapter(site):
    """``book/status.csv`` has one row per chapter, and the status page shows it with links."""
    import notebooks

    status = ROOT / "book" / "status.csv"
    rows = list(csv.reader(io.StringIO(status.read_text(encoding="utf-8"))))
    assert rows[0] == notebooks.STATUS_HEADER
    assert [r[0] for r in rows[1:]] == [r[0] for r in notebooks.status_rows({})], (
        "book/status.csv does not match the chapters and _toc.yml: run tools/notebooks.py status"
    )
    if "book/status" not in DOCS:
        pytest.skip("book/status is not in _toc.yml")
    table = soup(site / "book" / "status.html").select_one("table#tab-status")
    assert table is not None, "the status page has no table #tab-status"
    linked = {a["href"] for a in table.select("tbody a[href]")}
    in_toc = {Path(d).name for d in CHAPTERS}
    assert linked == {f"{stem}.html" for stem in in_toc}, linked
    assert len(table.select("tbody tr")) == len(rows) - 1


def test_page_titles_and_descriptions(site):
    """The landing page's ``<title>`` is the book's title once; every page has a description."""
    title = config()["title"]
    root = soup(site / f"{DOCS[0]}.html")
    assert root.title.get_text().strip() == title, root.title.get_text()
    missing = []
    for docname in DOCS:
        meta = soup(site / f"{docname}.html").select_one('meta[name="description"]')
        if meta is None or len(meta.get("content", "").strip()) < 40:
            missing.append(docname)
    assert not missing, f"pages without a <meta name='description'>: {missing}"


def test_contents_sidebars_are_not_empty(site):
    """A page that shows a contents sidebar lists at least two sections in it."""
    thin = {}
    for docname in DOCS:
        nav = soup(site / f"{docname}.html").select_one("#pst-page-toc-nav")
        if nav is not None and len(nav.select("li")) < 2:
            thin[docname] = [a.get_text(strip=True) for a in nav.select("a")]
    assert not thin, f"contents sidebars with fewer than two entries: {thin}"


def test_bibliography_is_author_year_with_one_link_per_preprint(site):
    if "book/bibliography" not in DOCS:
        pytest.skip("no bibliography page")
    page = soup(site / "book" / "bibliography.html")
    entries = page.select("div.citation")
    assert entries, "the bibliography is empty"
    problems = []
    for entry in entries:
        label = entry.select_one("span.label").get_text(strip=True).strip("[]")
        if not re.fullmatch(r"[^\d\[\]]+ (\d{4}[a-z]?|n\.d\.)", label):
            problems.append(f"label {label!r} is not author-year like the citations")
        arxiv = [
            re.sub(r"v\d+$", "", urlsplit(a["href"]).path.split("/")[-1])
            for a in entry.select("a[href*='arxiv.org']")
        ]
        text = entry.get_text(" ", strip=True)
        ids = re.findall(r"\b\d{4}\.\d{4,5}\b", text)
        if len(arxiv) != len(set(arxiv)) or any(ids.count(i) > 1 for i in ids):
            problems.append(
                f"{label}: an arXiv identifier appears twice: {text[-120:]!r}"
            )
    assert not problems, "\n".join(problems)


API_MODULES = [
    "schedules",
    "mixture",
    "oracle",
    "attention",
    "objective",
    "best",
    "training",
    "sampling",
    "metrics",
    "theory",
    "bounds",
    "stats",
    "interval",
    "plotting",
    "runtime",
]


def test_api_is_one_page_per_module(site):
    """``book/api`` indexes one page per module; no page repeats torch's ``extra_repr``."""
    index = soup(site / "book" / "api.html")
    linked = {urlsplit(a["href"]).path for a in index.select("main a[href]")}
    problems = []
    for name in API_MODULES:
        page = site / "book" / "api" / f"{name}.html"
        if not page.is_file():
            problems.append(f"no page book/api/{name}")
            continue
        if f"api/{name}.html" not in linked:
            problems.append(f"book/api does not link book/api/{name}")
        doc = soup(page)
        if doc.find(id=f"module-mtgmm.{name}") is None:
            problems.append(f"book/api/{name} does not document mtgmm.{name}")
        if doc.find(id=re.compile(r"\.extra_repr$")) or "extra_repr" in doc.get_text():
            problems.append(f"book/api/{name} documents extra_repr")
    assert not problems, "\n".join(problems)
