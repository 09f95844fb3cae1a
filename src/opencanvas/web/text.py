"""Untrusted Markdown into HTML, without raw HTML.

Jinja2 autoescaping escapes every string put into a page; links from catalog records go through the
shared `opencanvas.untrusted.safe_url` (only http(s) addresses), as in the cards.
"""

from __future__ import annotations

from markupsafe import Markup


def markdown_html(text: str) -> Markup:
    """CommonMark + tables; raw HTML in the source is escaped, and unsafe link schemes are dropped."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return Markup(md.render(text))  # noqa: S704 - markdown-it escapes the source (html=False)
