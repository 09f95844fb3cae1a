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

import functools
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
_URL_REJECT = re.compile(_UNSAFE.pattern[:-1] + r"\s]")
# An http(s) URL with a plain host whose characters all stay as they are: returned unchanged without parsing.
_PLAIN_HTTP_URL = re.compile(r"(?i:https?)://[A-Za-z0-9.\-]+(?::[0-9]{1,5})?(?:[/?#][A-Za-z0-9\-._~:/?#\[\]@!$&*+,;=%]*)?")
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
    text = str(value)
    # Fast path (most catalog text): printable ASCII has no controls, and " " is its only whitespace.
    if text.isascii() and text.isprintable() and "  " not in text and text[:1] != " " and text[-1:] != " ":
        return text
    return " ".join(_UNSAFE.sub(" ", text).split())


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
    return _safe_url(str(value).strip())


@functools.lru_cache(maxsize=65_536)   # creator and license URLs repeat across millions of rows
def _safe_url(text: str) -> str | None:
    return text if _PLAIN_HTTP_URL.fullmatch(text) else _parsed_url(text)


def _parsed_url(text: str) -> str | None:
    """The full check; `_PLAIN_HTTP_URL` is a shortcut that must agree with it (tests/test_untrusted.py)."""
    if not text or _URL_REJECT.search(text):
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
