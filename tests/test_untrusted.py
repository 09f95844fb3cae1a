"""Escaping of catalog text (issue 19, item 2): every variant renders as itself and nothing more.

Markdown is rendered with markdown-it (CommonMark, raw HTML allowed, GitHub tables and
strikethrough on), so an escape that lets a tag, comment, link, heading, list or table cell
through fails here.
"""

from __future__ import annotations

import csv
import io
import re
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from opencanvas.untrusted import (
    _PLAIN_HTTP_URL,
    _parsed_url,
    csv_cell,
    html_text,
    markdown_link,
    markdown_text,
    plain_text,
    safe_url,
)

MD = MarkdownIt("commonmark", {"html": True}).enable("table").enable("strikethrough")

HOSTILE = [
    "<script>alert(1)</script>", '<img src=x onerror="alert(1)">', "title <!--", "-->", "a\n# heading",
    "a\n| x | y |", "b\r\nc", "x\x00y", "\x1b[31mred", "\u202eevil.exe", "[click](javascript:alert(1))",
    "![img](http://x/y.png)", "*bold* _em_ `code` ~~gone~~", "1. list", "- item", "+ item", "> quote", "---",
    "===", "    code", "&lt;script&gt;", "&#60;b&#62;", "<http://autolink>", "\\", "a  \nb", "| pipe |",
    "=cmd|' /C calc'!A0", "+1", "-2", "@SUM(A1)", "\ufe64x\ufe65", "\ud800", "\u2028x\u2029", "\U000e0041",
    "# h", "#1", "[ref]: http://x", "<a href='http://x'>x</a>", "\t=1+1", "\uff1d1+1",
]
TEXT = st.one_of(st.text(), st.sampled_from(HOSTILE),
                 st.lists(st.one_of(st.sampled_from(HOSTILE), st.text(max_size=5)), max_size=6).map("".join))


def _rendered_text(plain: str) -> str:
    """What markdown-it writes for literal text: & < > " as entities, nothing else."""
    return plain.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


@pytest.mark.parametrize("value", HOSTILE)
def test_plain_text_is_one_line_without_controls(value: str) -> None:
    text = plain_text(value)
    assert "\n" not in text and "\r" not in text and text == text.strip()
    assert not any(unicodedata.category(c) in ("Cc", "Cs") for c in text)
    assert not set(text) & set("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f")


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_plain_text_properties(value: str) -> None:
    text = plain_text(value)
    assert plain_text(text) == text
    assert not any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in text)
    assert "  " not in text


@given(TEXT)
@settings(max_examples=400, deadline=None)
def test_markdown_text_renders_as_itself_in_a_paragraph(value: str) -> None:
    plain = plain_text(value)
    out = MD.render(markdown_text(value))
    assert out == (f"<p>{_rendered_text(plain)}</p>\n" if plain else "")


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_markdown_text_stays_in_its_heading_list_item_and_table_cell(value: str) -> None:
    plain, md = plain_text(value), markdown_text(value)
    expected = _rendered_text(plain)
    assert MD.render(f"## Author {md} (2)\n") == f"<h2>Author {expected} (2)</h2>\n"
    assert MD.render(f"- \"{md}\" by x\n- next\n") == (
        f"<ul>\n<li>&quot;{expected}&quot; by x</li>\n<li>next</li>\n</ul>\n")
    table = MD.render(f"| a | b |\n|---|---|\n| {md} | z |\n| after | row |\n")
    assert table.count("<tr>") == 3 and table.count("<td>") == 4
    assert f"<td>{expected}</td>" in table or (not plain and "<td></td>" in table)


@given(TEXT)
@settings(max_examples=300, deadline=None)
def test_html_text_has_no_markup(value: str) -> None:
    out = html_text(value)
    assert "<" not in out and ">" not in out and '"' not in out and "'" not in out
    assert re.sub(r"&(amp|lt|gt|quot|#x27);", "", out).count("&") == 0


URLS = st.one_of(
    st.sampled_from(["javascript:alert(1)", "JaVaScRiPt:alert(1)", " javascript:alert(1)", "data:text/html,<b>",
                     "vbscript:x", "file:///etc/passwd", "//evil.org/x", "/relative", "http://", "https:///path",
                     "http://[::1", "ftp://x.org/a", "https://x.org/a b", "https://x.org/\u202ecod.exe",
                     "https://x.org/a)](javascript:alert(1)", "https://x.org/\"onmouseover=\"x", "http:\\\\evil",
                     "https://x.org/a|b", "https://x.org/<script>", "https://example.org/ok?a=1&b=2#frag"]),
    st.text(), st.text().map(lambda t: "https://example.org/" + t), st.text().map(lambda t: "javascript:" + t))


@given(URLS, TEXT)
@settings(max_examples=400, deadline=None)
def test_only_http_links_survive(url: str, label: str) -> None:
    href = safe_url(url)
    out = MD.render(markdown_link(label, url))
    links = re.findall(r"<a href=\"([^\"]*)\"", out)
    assert out.count("<") == len(links) * 2 + 2 * bool(out)   # <p>, </p> and <a>, </a> only
    if href is None or not plain_text(label):
        assert links == []
    else:
        assert len(links) == 1 and re.match(r"https?://", links[0], re.IGNORECASE)


@given(st.from_regex(_PLAIN_HTTP_URL, fullmatch=True))
@settings(max_examples=300, deadline=None)
def test_the_plain_url_shortcut_agrees_with_the_full_check(url: str) -> None:
    assert _parsed_url(url) == url


def test_safe_url_examples() -> None:
    assert safe_url("https://example.org/a(b)") == "https://example.org/a%28b%29"
    assert safe_url("HTTP://Example.org/x") == "HTTP://Example.org/x"
    for bad in ("javascript:alert(1)", "data:,x", "mailto:a@b", "//x.org", "", None, b"https://x.org"):
        assert safe_url(bad) is None


@given(TEXT)
@settings(max_examples=400, deadline=None)
def test_csv_cells_never_start_a_formula(value: str) -> None:
    cell = csv_cell(value)
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20"))
    assert cell.removeprefix("'") == plain_text(value) or cell == plain_text(value)
    buf = io.StringIO()
    csv.writer(buf).writerow([cell, "next"])
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [[cell, "next"]]   # one row, two cells


@pytest.mark.parametrize("value", ["=1+1", "+1", "-1", "@SUM(A1)", "\t=1", "\r=1", " =1", "\uff1d1"])
def test_csv_formula_prefixes_get_a_quote(value: str) -> None:
    assert csv_cell(value) == "'" + plain_text(value)
