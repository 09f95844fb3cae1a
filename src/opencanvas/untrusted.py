"""Catalog text is written by strangers: make it inert wherever it lands.

Titles, authors, URLs, keys and quarantine reasons come from sources nobody
here controls. Every card, CSV file and web page writes them through these
functions, never raw (issue 19, item 2):

- `plain_text`: one line; newlines, control characters, bidi overrides
  (the RLO trick), lone surrogates and invisible tag characters folded away.
- `markdown_text`: plain text that renders as exactly itself in Markdown
  (CommonMark and GitHub's tables): HTML metacharacters become entities,
  Markdown punctuation is backslash-escaped, so no tag, comment, link,
  heading, list or table cell can start inside it.
- `html_text`: plain text escaped for HTML text and quoted attributes.
- `safe_url` / `markdown_link`: only absolute http(s) URLs are kept as links;
  anything else (`javascript:`, `data:`, relative, malformed) is dropped.
- `csv_cell`: plain text with spreadsheet formula prefixes (= + - @, and
  their full-width forms) neutralised by a leading `'`, as OWASP recommends
  against CSV injection.

Foundation layer: imports no other part of OpenCanvas.
"""

from __future__ import annotations

import html
import re
from urllib.parse import quote, urlsplit

# C0/C1 controls, line/paragraph separators, bidi embeddings/overrides/isolates and marks,
# lone surrogates, and Unicode tag characters (invisible text): none belongs in a credit line.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff\ufff9-\ufffb\U000e0000-\U000e007f]")
# Markdown punctuation that can open inline syntax anywhere in a line (emphasis, code, links,
# images, headings, tables, strikethrough); backslash-escaping ASCII punctuation is CommonMark.
_MARKDOWN_INLINE = re.compile(r"([\\`*_\[\]{}()#!|~])")
# Block syntax that only counts at the start of a line: bullets, setext underlines, ordered lists.
_MARKDOWN_BULLET = re.compile(r"^[+\-=]")
_MARKDOWN_ORDERED = re.compile(r"^(\d{1,9})\.")
_HTML_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
_FORMULA_PREFIXES = ("=", "+", "-", "@", "\uff1d", "\uff0b", "\uff0d", "\uff20")
# Characters left as they are in a link destination; everything else is percent-encoded, so a URL
# cannot close the link, start a title or split a table cell.
_URL_SAFE = "-._~:/?#[]@!$&*+,;=%"


def plain_text(value: object) -> str:
    """`value` as one line of text: unsafe characters and runs of whitespace become one space."""
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    return " ".join(_UNSAFE.sub(" ", str(value)).split())


def markdown_text(value: object) -> str:
    """Plain text that Markdown renders literally (inside a paragraph, heading, list item or table cell)."""
    text = _MARKDOWN_INLINE.sub(r"\\\1", plain_text(value))
    text = _MARKDOWN_ORDERED.sub(r"\1\\.", _MARKDOWN_BULLET.sub(r"\\\g<0>", text))
    # Entities last: the '#' of '&#39;' must not be escaped again.
    return "".join(_HTML_ENTITIES.get(c, c) for c in text)


def html_text(value: object) -> str:
    """Plain text escaped for HTML element content and quoted attribute values."""
    return html.escape(plain_text(value), quote=True)


def safe_url(value: object) -> str | None:
    """An absolute http(s) URL with a host, percent-encoded for Markdown/HTML; None for anything else."""
    if value is None or isinstance(value, bytes):
        return None
    text = str(value).strip()
    if not text or _UNSAFE.search(text) or any(c.isspace() for c in text):
        return None
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError:   # e.g. an unbalanced IPv6 bracket
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    return quote(text, safe=_URL_SAFE)


def markdown_link(label: object, url: object) -> str:
    """`[label](url)` when `url` is a safe http(s) URL, else the label alone; both escaped."""
    text = markdown_text(label)
    href = safe_url(url)
    return f"[{text}]({href})" if href and text else text


def csv_cell(value: object) -> str:
    """Plain text for a CSV cell that no spreadsheet evaluates as a formula (OWASP: prefix with `'`)."""
    text = plain_text(value)
    return "'" + text if text.startswith(_FORMULA_PREFIXES) else text
