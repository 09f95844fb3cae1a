"""Issue 19: hostile or careless input. A license is never laundered into an open one, and one bad
record is quarantined with its reason while the rest of its file ingests (items 1, 4, 7, 8)."""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import catalog_rows
from opencanvas.catalog.records import Rejected, as_int, as_tags, clean_text
from opencanvas.catalog.sources.folder import folder_id
from opencanvas.catalog.subset import make_subset
from opencanvas.licenses import normalize
from opencanvas.workspace import Workspace
from tests.test_catalog_sources import (
    ingested,
    jpeg_bytes,
    openverse_record,
    quarantined,
    wikimedia_page,
    write_commoncatalog,
    write_jsonl,
    write_yfcc,
    yfcc_fields,
)

BY_URL = "https://creativecommons.org/licenses/by/2.0/"


def reasons(ws: Workspace, source: str) -> dict[str, str]:
    """record_no or raw -> reason of the source's quarantined records."""
    return {str(q["record_no"] if q["record_no"] is not None else q["raw"]): q["reason"]
            for q in quarantined(ws, source)}


# ---- item 1: laundering, source by source -------------------------------------------


def test_openverse_repro_never_reaches_the_commercial_subset(ws: Workspace, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ov.jsonl", [
        openverse_record(0, license="all rights reserved", license_version=None, license_url=BY_URL),
        openverse_record(1, license="by-nc", license_version="2.0", license_url=BY_URL),
        openverse_record(2, license="by", license_version="2.0", license_url="https://evilcreativecommons.org/licenses/by/2.0/"),
        openverse_record(3, license="by", license_version="2.0", license_url=BY_URL),
        openverse_record(4, license="sampling+", license_version="1.0", license_url=BY_URL),
    ])
    stats = ingest(ws, "openverse", [path])
    assert (stats.ingested, stats.quarantined) == (1, 4)
    assert reasons(ws, "openverse") == {"1": "license:conflict", "2": "license:conflict", "3": "license:conflict",
                                        "5": "license:conflict"}
    detail = next(q["detail"] for q in quarantined(ws, "openverse") if q["record_no"] == 1)
    assert "'all rights reserved'" in detail and repr(BY_URL) in detail
    subset = pq.read_table(make_subset(ws, "commercial", "c"))
    assert subset["key"].to_pylist() == ["openverse:ov-3"]


def test_yfcc_name_and_url_must_agree(ws: Workspace, tmp_path: Path) -> None:
    t = "\t".join
    lines = [
        t(yfcc_fields(0, license_name=quote_plus("Attribution-NonCommercial License"),
                      license_url="http://creativecommons.org/licenses/by/2.0/")),
        t(yfcc_fields(1, license_name=quote_plus("All Rights Reserved"),
                      license_url="http://creativecommons.org/licenses/by/2.0/")),
        t(yfcc_fields(2, license_name=quote_plus("Attribution License"),
                      license_url="http://evilcreativecommons.org/licenses/by/2.0/")),
        t(yfcc_fields(3, license_name=quote_plus("Attribution License"),
                      license_url="http://creativecommons.org/licenses/by/2.0/")),
    ]
    stats = ingest(ws, "yfcc100m", [write_yfcc(tmp_path / "yfcc100m_dataset", lines)])
    assert (stats.ingested, stats.quarantined) == (1, 3)
    assert set(ingested(ws, "yfcc100m")) == {"yfcc100m:5000003"}
    assert sorted(reasons(ws, "yfcc100m").values()) == ["license:conflict"] * 3
    detail = next(q["detail"] for q in quarantined(ws, "yfcc100m") if q["record_no"] == 0)
    assert "Attribution-NonCommercial License" in detail and "licenses/by/2.0/" in detail


def test_wikimedia_and_commoncatalog_name_and_url_must_agree(ws: Workspace, tmp_path: Path) -> None:
    ingest(ws, "wikimedia", [write_jsonl(tmp_path / "c.jsonl", [
        wikimedia_page(0, short="CC BY-NC 4.0", url="https://creativecommons.org/licenses/by/4.0/"),
        wikimedia_page(1, short="CC BY 4.0", url="https://creativecommons.org/licenses/by/4.0/"),
    ])])
    assert set(ingested(ws, "wikimedia")) == {"wikimedia:Tower_1.jpg"}
    assert [q["reason"] for q in quarantined(ws, "wikimedia")] == ["license:conflict"]
    path = write_commoncatalog(tmp_path / "cc.parquet", 3)
    table = pq.read_table(path)
    names = ["Attribution-NonCommercial License", "Attribution License", "Attribution License"]
    urls = [BY_URL, BY_URL, "http://creativecommons.org.evil.com/licenses/by/2.0/"]
    table = table.set_column(table.schema.get_field_index("licensename"), "licensename", pa.array(names))
    table = table.set_column(table.schema.get_field_index("licenseurl"), "licenseurl", pa.array(urls))
    pq.write_table(table, path)
    ingest(ws, "commoncatalog", [path])
    assert set(ingested(ws, "commoncatalog")) == {"commoncatalog:7001"}
    assert reasons(ws, "commoncatalog") == {"0": "license:conflict", "2": "license:conflict"}


def _xmp(license_url: str, rights: str | None = None, web: str | None = None) -> str:
    rights_xml = f"<dc:rights><rdf:Alt><rdf:li>{rights}</rdf:li></rdf:Alt></dc:rights>" if rights else ""
    web_xml = f"<xmpRights:WebStatement>{web}</xmpRights:WebStatement>" if web else ""
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns:cc="http://creativecommons.org/ns#" xmlns:dc="http://purl.org/dc/elements/1.1/" '
            'xmlns:xmpRights="http://ns.adobe.com/xap/1.0/rights/">'
            f'<rdf:Description><cc:license rdf:resource="{license_url}"/>{rights_xml}{web_xml}'
            '</rdf:Description></rdf:RDF></x:xmpmeta>')


def _png_with_xmp(path: Path, xmp: str) -> None:
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(path, pnginfo=info)


def test_folder_license_statements_must_agree(ws: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    _png_with_xmp(root / "a_rights_reserved.png", _xmp(BY_URL, "All rights reserved"))
    _png_with_xmp(root / "b_nc_rights.png", _xmp(BY_URL, "CC BY-NC 2.0"))
    _png_with_xmp(root / "c_notice.png", _xmp(BY_URL, "(c) 2020 Jane Doe. Some rights reserved."))  # a notice
    _png_with_xmp(root / "d_lookalike.png", _xmp("https://creativecommons.org.evil.com/licenses/by/2.0/"))
    (root / "e_sidecar.jpg").write_bytes(jpeg_bytes())
    (root / "e_sidecar.jpg.json").write_text(json.dumps({"license": "CC BY-NC 4.0", "license_url": BY_URL}))
    (root / "f_exif.jpg").write_bytes(jpeg_bytes(exif_copyright=f"Not {BY_URL}"))
    _png_with_xmp(root / "g_web_nc.png", _xmp(BY_URL, web="https://creativecommons.org/licenses/by-nc/2.0/"))
    _png_with_xmp(root / "h_web_page.png", _xmp(BY_URL, web="https://janedoe.example/terms"))
    ingest(ws, "folder", [root])
    assert sorted(r.split("/")[-1] for r in ingested(ws, "folder")) == ["c_notice.png", "h_web_page.png"]
    assert reasons(ws, "folder") == {"1": "license:conflict", "2": "license:conflict", "4": "license:other",
                                     "5": "license:conflict", "6": "license:other", "7": "license:conflict"}


def _clipart_tree(tmp_path: Path, items: dict[str, str]) -> Path:
    """A minimal Open Clip Art Library tree: svg/<cat>/<name>.svg with metadata, png/<cat>/<name>.png."""
    lib = tmp_path / "openclipart"
    for name, svg in items.items():
        (lib / "svg" / "cat").mkdir(parents=True, exist_ok=True)
        (lib / "png" / "cat").mkdir(parents=True, exist_ok=True)
        (lib / "svg" / "cat" / f"{name}.svg").write_text(svg)
        Image.new("RGB", (5, 5)).save(lib / "png" / "cat" / f"{name}.png")
    return lib


def _svg(license_url: str, title: str = "A cat", doctype: str = "") -> str:
    return (f'<?xml version="1.0"?>{doctype}<svg xmlns="http://www.w3.org/2000/svg" '
            'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" xmlns:cc="http://web.resource.org/cc/" '
            'xmlns:dc="http://purl.org/dc/elements/1.1/"><metadata><rdf:RDF><cc:Work rdf:about="">'
            f'<dc:title>{title}</dc:title><cc:license rdf:resource="{license_url}"/></cc:Work></rdf:RDF>'
            '</metadata></svg>')


def test_openclipart_lookalike_license_and_xml_entities(ws: Workspace, tmp_path: Path) -> None:
    lib = _clipart_tree(tmp_path, {
        "a_good": _svg("http://web.resource.org/cc/PublicDomain"),
        "b_lookalike": _svg("http://evilcreativecommons.org/licenses/publicdomain/"),
        "c_entity": _svg("http://web.resource.org/cc/PublicDomain", title="&lol;",
                         doctype='<!DOCTYPE svg [<!ENTITY lol "lol">]>'),
    })
    stats = ingest(ws, "openclipart", [lib / "svg" / "cat"])
    assert (stats.read, stats.ingested, stats.quarantined) == (3, 1, 2)
    assert set(ingested(ws, "openclipart")) == {"openclipart:cat/a_good"}
    assert reasons(ws, "openclipart") == {"2": "license:other", "3": "malformed"}


# ---- item 4: one bad record never aborts an ingest -------------------------------------


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_folder_decoder_limits_quarantine_one_image(ws: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    sidecar = json.dumps({"license": "CC BY 4.0"})
    bomb = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)) \
        + _png_chunk(b"IDAT", zlib.compress(b"")) + _png_chunk(b"IEND", b"")
    (root / "a_bomb.png").write_bytes(bomb)
    info = PngInfo()
    info.add_text("Comment", "x" * (3 << 20), zip=True)  # ~3 KB compressed, 3 MB inflated
    Image.new("RGB", (4, 4)).save(root / "b_text.png", pnginfo=info)
    (root / "c_sidecar_types.jpg").write_bytes(jpeg_bytes())
    (root / "c_sidecar_types.jpg.json").write_text(json.dumps({"license": "CC BY 4.0", "tags": 5}))
    (root / "d_deep.jpg").write_bytes(jpeg_bytes())
    (root / "d_deep.jpg.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "e_good.jpg").write_bytes(jpeg_bytes())
    for name in ("a_bomb.png", "b_text.png", "e_good.jpg"):
        (root / f"{name}.json").write_text(sidecar)
    stats = ingest(ws, "folder", [root])
    assert (stats.read, stats.ingested, stats.quarantined) == (5, 1, 4)
    assert reasons(ws, "folder") == {"1": "image:too-large", "2": "unreadable", "3": "malformed", "4": "malformed"}


def test_json_fields_of_the_wrong_type(ws: Workspace, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ov.jsonl", [
        openverse_record(0, tags=5),
        openverse_record(1, tags="cat, small dog"),
        '{"id": "ov-2", "url": "https://example.org/2.jpg", "title": "\\ud800", "license": "by", '
        '"license_version": "2.0", "license_url": "https://creativecommons.org/licenses/by/2.0/"}',
        openverse_record(3, width=3.7),
        openverse_record(4, width=640.0, title=["a", "list"]),
        openverse_record(5, width="640"),
        openverse_record(6, license_url=5),
        openverse_record(7, tags=[{"name": 5}]),
    ])
    stats = ingest(ws, "openverse", [path])
    assert stats.read == 8
    assert reasons(ws, "openverse") == {"1": "malformed", "3": "encoding", "4": "malformed", "5": "malformed",
                                        "7": "license:conflict", "8": "malformed"}
    rows = ingested(ws, "openverse")
    assert rows["openverse:ov-1"]["tags"] == ["cat", "small dog"]  # not split into characters
    assert rows["openverse:ov-5"]["width"] == 640
    assert "\\ud800" in next(q["raw"] for q in quarantined(ws, "openverse") if q["record_no"] == 3)
    ingest(ws, "wikimedia", [write_jsonl(tmp_path / "c.jsonl", [
        {**wikimedia_page(0), "imageinfo": ["oops"]},
        {**wikimedia_page(1), "imageinfo": 5},
        {**wikimedia_page(2), "imageinfo": [{**wikimedia_page(2)["imageinfo"][0], "width": "wide"}]},
        wikimedia_page(3),
    ])])
    assert set(ingested(ws, "wikimedia")) == {"wikimedia:Tower_3.jpg"}
    assert reasons(ws, "wikimedia") == {"1": "malformed", "2": "missing:imageinfo", "3": "malformed"}


def test_a_row_arrow_refuses_is_quarantined_alone(ws: Workspace, tmp_path: Path) -> None:
    """Values only the Parquet writer can judge (an int64 overflow, a lone surrogate deep in `extra`)."""
    path = write_jsonl(tmp_path / "ov.jsonl", [
        openverse_record(0, width=2**70),
        openverse_record(1, provider="\ud800"),
        openverse_record(2),
    ])
    stats = ingest(ws, "openverse", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (3, 1, 2)
    assert set(ingested(ws, "openverse")) == {"openverse:ov-2"}
    assert sorted(reasons(ws, "openverse").values()) == ["malformed", "malformed"]


def test_commoncatalog_column_types(ws: Workspace, tmp_path: Path) -> None:
    ints = write_commoncatalog(tmp_path / "int-tags.parquet", 3)
    table = pq.read_table(ints)
    table = table.set_column(table.schema.get_field_index("usertags"), "usertags",
                             pa.array([[1, 2], None, [3]], pa.list_(pa.int64())))
    pq.write_table(table, ints)
    binary = write_commoncatalog(tmp_path / "binary-titles.parquet", 2)
    table = pq.read_table(binary)
    table = table.set_column(table.schema.get_field_index("title"), "title",
                             pa.array([b"Boat \xc3\xa9", b"\xff\xfe"], pa.binary()))
    table = table.set_column(table.schema.get_field_index("photoid"), "photoid", pa.array([8000, 8001]))
    pq.write_table(table, binary)
    stats = ingest(ws, "commoncatalog", [ints, binary])
    assert (stats.read, stats.ingested, stats.quarantined) == (5, 2, 3)
    rows = ingested(ws, "commoncatalog")
    assert rows["commoncatalog:7001"]["tags"] == []
    assert rows["commoncatalog:8000"]["title"] == "Boat \u00e9"  # decoded, never "b'...'"
    assert sorted(q["reason"] for q in quarantined(ws, "commoncatalog")) == ["encoding", "malformed", "malformed"]


def test_field_helpers() -> None:
    assert clean_text(b"caf\xc3\xa9 ") == "caf\u00e9" and clean_text(7) == "7" and clean_text("  ") is None
    for bad in (b"\xff", "\ud800", ["a"], {"a": 1}):
        with pytest.raises(Rejected):
            clean_text(bad)
    assert [as_int(v) for v in (None, "", 5, 5.0, "5", "5.0")] == [None, None, 5, 5, 5, 5]
    for bad in (5.5, "5.5", "wide", True, -1, [5], float("nan")):
        with pytest.raises(Rejected):
            as_int(bad, "width")
    assert as_tags("a, b,,c") == ["a", "b", "c"] and as_tags([{"name": "x"}, "y", None]) == ["x", "y"]
    for bad in (5, {"a": 1}, [1], [{"name": 2}]):
        with pytest.raises(Rejected):
            as_tags(bad)


# ---- item 7: folder keys ------------------------------------------------------------


def test_folders_with_the_same_name_do_not_collide(ws: Workspace, tmp_path: Path) -> None:
    roots = [tmp_path / "a" / "imgs", tmp_path / "b" / "imgs"]
    for i, root in enumerate(roots):
        (root / "sub").mkdir(parents=True)
        for name in ("x.jpg", "sub/y.jpg"):
            (root / name).write_bytes(jpeg_bytes((i * 100, 0, 0)))
            (root / f"{name}.json").write_text(json.dumps({"license": "CC0"}))
    stats = ingest(ws, "folder", roots)
    assert (stats.ingested, stats.quarantined) == (4, 0)
    keys = catalog_rows(ws)["key"].to_pylist()
    assert len({k.split("/")[0] for k in keys}) == 2
    assert folder_id(str(roots[0])) != folder_id(str(roots[1]))
    again = ingest(ws, "folder", roots)  # idempotent: nothing new, nothing quarantined as a duplicate
    assert (again.read, again.resumed) == (0, 2)
    other = Workspace.open(tmp_path / "ws2")
    ingest(other, "folder", [roots[1], roots[0]])  # another run, another order: the same keys
    assert sorted(catalog_rows(other)["key"].to_pylist()) == sorted(keys)
    link = tmp_path / "alias"
    link.symlink_to(roots[0])
    assert folder_id(str(link)) == folder_id(str(roots[0]))  # keyed by the resolved folder


def test_float_width_in_a_sidecar_is_not_truncated(ws: Workspace, tmp_path: Path) -> None:
    ingest(ws, "openverse", [write_jsonl(tmp_path / "ov.jsonl", [openverse_record(0, width=1023.9, height=2)])])
    q = quarantined(ws, "openverse")
    assert [r["reason"] for r in q] == ["malformed"] and "1023.9" in q[0]["detail"]


def test_a_malformed_svg_is_quarantined_and_the_rest_ingest(ws: Workspace, tmp_path: Path) -> None:
    lib = _clipart_tree(tmp_path, {"a": _svg("http://web.resource.org/cc/PublicDomain"),
                                   "b": "<svg><metadata><rdf:RDF>unclosed</metadata></svg>"})
    stats = ingest(ws, "openclipart", [lib / "svg" / "cat"])
    assert (stats.ingested, stats.quarantined) == (1, 1)
    assert reasons(ws, "openclipart") == {"2": "malformed"}
    assert (catalog_rows(ws)["width"].to_pylist(), catalog_rows(ws)["height"].to_pylist()) == ([5], [5])


def test_every_name_url_pair_through_openverse(ws: Workspace, tmp_path: Path) -> None:
    """Every pairing of names and URLs (open, restrictive, look-alike): a record enters the catalog only
    when both statements name its license, and every record is accounted for."""
    names = [("by", "2.0"), ("by-nc", "2.0"), ("by-sa", "4.0"), ("cc0", "1.0"), ("pdm", "1.0"),
             ("all rights reserved", None), ("by", None), ("sampling+", "1.0"), ("BY-ND", "2.0"), (None, None)]
    urls = ["https://creativecommons.org/licenses/by/2.0/", "https://creativecommons.org/licenses/by-nc/2.0/",
            "https://creativecommons.org/licenses/by-sa/4.0/deed.de", "https://creativecommons.org/publicdomain/zero/1.0/",
            "https://creativecommons.org/publicdomain/mark/1.0/", "https://evilcreativecommons.org/licenses/by/2.0/",
            "https://creativecommons.org.evil.com/licenses/by-sa/4.0/", "https://creativecommons.org/licenses/by/2.0/?nc",
            "https://creativecommons.org/licenses/by-nd/2.0/", None]
    records = [openverse_record(i * len(urls) + j, license=name, license_version=version, license_url=url)
               for i, (name, version) in enumerate(names) for j, url in enumerate(urls)]
    stats = ingest(ws, "openverse", [write_jsonl(tmp_path / "ov.jsonl", records)])
    assert stats.read == stats.ingested + stats.quarantined == len(records)
    rows = ingested(ws, "openverse")
    for rec in records:
        name = " ".join(x for x in (rec["license"], rec["license_version"]) if x) or None
        by_name, by_url = normalize(name), normalize(rec["license_url"])
        row = rows.get(f"openverse:{rec['id']}")
        if name and rec["license_url"]:
            agree = by_name.is_open and by_url.is_open and by_name.license_id == by_url.license_id
            assert (row is not None) == agree, (name, rec["license_url"])
        else:
            assert (row is not None) == (by_name if name else by_url).is_open, (name, rec["license_url"])
        if row is not None:
            assert row["license_id"] in {by_name.license_id, by_url.license_id} - {"other"}
            assert not row["commercial_ok"] or "cc-by-nc" not in by_name.license_id + by_url.license_id
    assert set(reasons(ws, "openverse").values()) == {"license:conflict", "license:other", "license:missing"}
