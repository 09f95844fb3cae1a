"""Untrusted text into HTML: links only to http(s) addresses, Markdown without raw HTML.

Jinja2 autoescaping escapes every string put into a page; what it cannot judge is whether an escaped
string is a safe *address* (`javascript:` survives escaping), so links from catalog records pass here.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from markupsafe import Markup


def safe_url(url: object) -> str | None:
    """The address when it is an absolute http(s) URL, else None (rendered as plain text, not a link)."""
    if not isinstance(url, str) or not url.strip():
        return None
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    if any(c in text for c in "\x00\r\n\t<>\"'` "):
        return None
    return text


def markdown_html(text: str) -> Markup:
    """CommonMark + tables; raw HTML in the source is escaped, and unsafe link schemes are dropped."""
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")
    return Markup(md.render(text))  # noqa: S704 - markdown-it escapes the source (html=False)
