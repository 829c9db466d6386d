"""Sphinx extension for the book's site (loaded from _config.yml, ``sphinx.local_extensions``).

- The landing page's ``<title>`` is the book's title once (Sphinx writes "page — project",
  and the landing page's heading is the project's title; ``templates/layout.html``), and
  every page carries a
  ``<meta name="description">``: the landing page the book's ``book_description``, any other
  page the first paragraph of its text.
- Bibliography: the pybtex style ``authoryear`` (``bibtex_default_style``) labels entries
  "Ho et al. 2020", as the citations in the text read (``bibtex_reference_style:
  author_year``), sorts them by author and year, and gives an arXiv preprint one link (the
  ``url`` field is dropped when it is the same arXiv abstract as the ``eprint``).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.style.formatting.unsrt import Style as UnsrtStyle
from pybtex.style.labels import BaseLabelStyle
from pybtex.style.template import optional, sentence

DESCRIPTION_CHARS = 160
TEMPLATES = Path(__file__).resolve().parent / "templates"


def _last_names(person) -> str:
    return " ".join(person.last_names) or " ".join(person.first_names)


class AuthorYearLabelStyle(BaseLabelStyle):
    """Labels such as "Efron 2011", "Nichol and Dhariwal 2021", "Ho et al. 2020"."""

    def format_labels(self, sorted_entries):
        for entry in sorted_entries:
            people = entry.persons.get("author") or entry.persons.get("editor") or []
            names = [_last_names(p) for p in people]
            if not names:
                who = entry.fields.get("key", entry.key)
            elif len(names) == 1:
                who = names[0]
            elif len(names) == 2:
                who = f"{names[0]} and {names[1]}"
            else:
                who = f"{names[0]} et al."
            who = re.sub(r"[{}]", "", who)
            yield f"{who} {entry.fields.get('year', 'n.d.')}"


class AuthorYearStyle(UnsrtStyle):
    """unsrt, with author-year labels, sorted by author and year, one link per preprint."""

    default_label_style = "authoryear"
    default_sorting_style = "author_year_title"

    def format_web_refs(self, e):
        eprint = e.fields.get("eprint", "")
        url = e.fields.get("url", "")
        same = eprint and re.fullmatch(
            rf"https?://arxiv\.org/(abs|pdf)/{re.escape(eprint)}(v\d+)?(\.pdf)?/?", url
        )
        if not same:
            return super().format_web_refs(e)
        return sentence[
            optional[self.format_eprint(e)],
            optional[self.format_pubmed(e)],
            optional[self.format_doi(e)],
        ]


register_plugin("pybtex.style.labels", "authoryear", AuthorYearLabelStyle)
register_plugin("pybtex.style.formatting", "authoryear", AuthorYearStyle)


def _first_paragraph(doctree) -> str:
    for para in doctree.findall(nodes.paragraph):
        if any(
            isinstance(a, (nodes.admonition, nodes.Admonition))
            for a in _ancestors(para)
        ):
            continue
        text = " ".join(para.astext().split())
        if len(text) > 40:
            return text
    return ""


def _ancestors(node):
    node = node.parent
    while node is not None:
        yield node
        node = node.parent


def _shorten(text: str) -> str:
    if len(text) <= DESCRIPTION_CHARS:
        return text
    cut = text[: DESCRIPTION_CHARS - 1].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + "…"


def page_context(app, pagename, templatename, context, doctree):
    project = (
        app.config.html_title or app.config.project
    )  # Jupyter Book sets html_title
    if pagename == app.config.root_doc or (
        context.get("title") and html.unescape(context["title"]) == project
    ):
        context["book_root_title"] = project  # _ext/templates/layout.html
        description = app.config.book_description or project
    else:
        description = _first_paragraph(doctree) if doctree is not None else ""
    if description:
        tag = f'<meta name="description" content="{html.escape(_shorten(description))}" />\n'
        context["metatags"] = context.get("metatags", "") + tag


def add_templates(app, config):
    config.templates_path = [*config.templates_path, str(TEMPLATES)]


def setup(app):
    app.add_config_value("book_description", "", "html")
    app.connect("config-inited", add_templates)
    app.connect("html-page-context", page_context)
    return {"version": "1.0", "parallel_read_safe": True, "parallel_write_safe": True}
