"""Each source adapter on fixture files the tests write (plus the file writers other catalog tests use)."""

from __future__ import annotations

import bz2
import io
import json
from pathlib import Path
from urllib.parse import quote_plus

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import catalog_rows, query
from opencanvas.catalog.sources import InputFormatError
from opencanvas.catalog.sources.folder import folder_id
from opencanvas.catalog.sources.wikimedia import strip_html
from opencanvas.catalog.sources.yfcc100m import COLUMNS
from opencanvas.workspace import Workspace

# ---- fixture writers -----------------------------------------------------------


def yfcc_fields(i: int, **overrides: str) -> list[str]:
    """One YFCC100M line's 25 fields, URL-encoded like the real file."""
    photo_id = str(5_000_000 + i)
    fields = {
        "line_number": str(i), "photo_id": photo_id, "photo_hash": f"{i:032x}", "user_nsid": f"{1000 + i}@N00",
        "user_nickname": quote_plus(f"Jane Doe {i}"), "date_taken": "2010-07-04 12:00:00.0",
        "date_uploaded": "1278252000", "capture_device": quote_plus("Canon EOS 5D"),
        "title": quote_plus(f"Red barn #{i}"), "description": quote_plus("A barn, 100% red & tall"),
        "user_tags": ",".join(quote_plus(t) for t in ("barn", "new york", "a,b")), "machine_tags": "",
        "longitude": "-73.9", "latitude": "40.7", "accuracy": "16",
        "page_url": f"http://www.flickr.com/photos/{1000 + i}@N00/{photo_id}/",
        "download_url": f"http://farm1.staticflickr.com/1/{photo_id}_abc.jpg",
        "license_name": quote_plus("Attribution-ShareAlike License"),
        "license_url": "http://creativecommons.org/licenses/by-sa/2.0/", "server_id": "1", "farm_id": "1",
        "secret": "abc", "original_secret": "", "extension": "jpg", "marker": "0",
    }
    fields.update(overrides)
    assert list(fields) == list(COLUMNS)
    return list(fields.values())


def write_yfcc(path: Path, lines: list[str | bytes]) -> Path:
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode()) + b"\n" for ln in lines)
    path.write_bytes(bz2.compress(data) if path.suffix == ".bz2" else data)
    return path


def yfcc_mixed(start: int = 0) -> list[str | bytes]:
    """8 lines: 3 good photos, a video, a short line, a GPL-ish license, bad %-encoding, raw non-UTF-8."""
    t = "\t".join
    return [
        t(yfcc_fields(start + 0)),
        t(yfcc_fields(start + 1, license_name=quote_plus("Attribution-NonCommercial-NoDerivs License"),
                      license_url="http://creativecommons.org/licenses/by-nc-nd/2.0/")),
        t(yfcc_fields(start + 2, marker="1")),
        "\t".join(yfcc_fields(start + 3)[:10]),
        t(yfcc_fields(start + 4, license_name="All+Rights+Reserved", license_url="")),
        t(yfcc_fields(start + 5, title="%FF%FE")),
        t(yfcc_fields(start + 6, title="caf\udce9")).encode("utf-8", "surrogateescape"),
        t(yfcc_fields(start + 7, license_url="", license_name=quote_plus("Attribution License"))),
    ]


def write_jsonl(path: Path, records: list[dict | str]) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records))
    return path


def openverse_record(i: int, **overrides) -> dict:
    rec = {"id": f"ov-{i}", "title": f"Cat {i}", "tags": [{"name": "cat"}, {"name": "pet"}], "creator": "Ann",
           "creator_url": "https://example.org/ann", "foreign_landing_url": f"https://example.org/p/{i}",
           "url": f"https://example.org/{i}.jpg", "license": "by-sa", "license_version": "2.0",
           "license_url": "https://creativecommons.org/licenses/by-sa/2.0/", "width": 640, "height": 480,
           "provider": "flickr", "source": "flickr"}
    rec.update(overrides)
    return rec


def wikimedia_page(i: int, short: str = "CC BY-SA 4.0", url: str | None = None) -> dict:
    ext = {"Artist": {"value": f'<a href="//commons.wikimedia.org/wiki/User:Bob{i}" title="User:Bob">Bob &amp; Co</a>'},
           "LicenseShortName": {"value": short}, "AttributionRequired": {"value": "true"},
           "ImageDescription": {"value": "<p>A <b>tall</b> tower<br/>at night</p>"},
           "Categories": {"value": "Towers|Night"}}
    if url:
        ext["LicenseUrl"] = {"value": url}
    return {"pageid": 100 + i, "title": f"File:Tower {i}.jpg",
            "imageinfo": [{"url": f"https://upload.wikimedia.org/t{i}.jpg", "width": 800, "height": 600,
                           "descriptionurl": f"https://commons.wikimedia.org/wiki/File:Tower_{i}.jpg",
                           "extmetadata": ext}]}


def jpeg_bytes(color=(200, 30, 30), size=(12, 8), exif_copyright: str | None = None) -> bytes:
    img = Image.new("RGB", size, color)
    buf = io.BytesIO()
    exif = Image.Exif()
    if exif_copyright:
        exif[0x8298] = exif_copyright
    img.save(buf, "JPEG", exif=exif.tobytes())
    return buf.getvalue()


def write_commoncatalog(path: Path, n: int, bad_license_at: int | None = None) -> Path:
    rows = []
    for i in range(n):
        rows.append({"key": f"{i:09d}", "photoid": 7_000 + i, "title": f"Boat {i}", "description": "on a lake",
                     "usertags": "boat,lake", "caption": f"Boat {i}", "blip2_caption": f"a small boat number {i}",
                     "licensename": "Attribution License",
                     "licenseurl": "All Rights Reserved" if i == bad_license_at
                     else "http://creativecommons.org/licenses/by/2.0/",
                     "pageurl": f"http://www.flickr.com/photos/99@N00/{7000 + i}/",
                     "downloadurl": f"http://farm1.staticflickr.com/1/{7000 + i}_x.jpg",
                     "width": 12, "height": 8, "original_width": 1200, "original_height": 800,
                     "sha256": "0" * 64, "jpg": jpeg_bytes()})
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def ingested(ws: Workspace, source: str) -> dict[str, dict]:
    return {r["key"]: r for r in query(ws, f"SELECT * FROM {{catalog}} WHERE source = '{source}'").to_pylist()}


def quarantined(ws: Workspace, source: str) -> list[dict]:
    return query(ws, f"SELECT * FROM {{quarantine}} WHERE source = '{source}' ORDER BY reason").to_pylist()


# ---- yfcc100m --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["yfcc100m_dataset", "yfcc100m_dataset.bz2"])
def test_yfcc_decodes_and_quarantines(ws: Workspace, tmp_path: Path, name: str) -> None:
    path = write_yfcc(tmp_path / name, yfcc_mixed())
    stats = ingest(ws, "yfcc100m", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (8, 3, 5)
    rows = ingested(ws, "yfcc100m")
    assert set(rows) == {"yfcc100m:5000000", "yfcc100m:5000001", "yfcc100m:5000007"}
    r = rows["yfcc100m:5000000"]
    assert r["title"] == "Red barn #0" and r["description"] == "A barn, 100% red & tall"
    assert r["tags"] == ["barn", "new york", "a,b"]
    assert r["creator"] == "Jane Doe 0" and r["creator_url"] == "https://www.flickr.com/photos/1000@N00/"
    assert (r["license_id"], r["license_version"], r["commercial_ok"], r["share_alike"]) == \
        ("cc-by-sa", "2.0", True, True)
    assert json.loads(r["extra"])["capture_device"] == "Canon EOS 5D"
    assert rows["yfcc100m:5000001"]["license_id"] == "cc-by-nc-nd"
    assert rows["yfcc100m:5000007"]["license_id"] == "cc-by"  # from the name when the URL is empty
    reasons = sorted(q["reason"] for q in quarantined(ws, "yfcc100m"))
    assert reasons == ["encoding", "encoding", "license:other", "malformed", "video"]
    short = next(q for q in quarantined(ws, "yfcc100m") if q["reason"] == "malformed")
    assert short["raw"] == "\t".join(yfcc_fields(3)[:10])  # the raw line is kept
    video = next(q for q in quarantined(ws, "yfcc100m") if q["reason"] == "video")
    assert video["raw"].split("\t") == yfcc_fields(2, marker="1") and video["record_no"] == 2


def test_yfcc_wrong_format_names_the_file(ws: Workspace, tmp_path: Path) -> None:
    csv = tmp_path / "photos.csv"
    csv.write_text("id,title,license\n1,a,b\n")
    with pytest.raises(InputFormatError, match=r"photos\.csv.*25 tab-separated"):
        ingest(ws, "yfcc100m", [csv])
    fake_bz2 = tmp_path / "yfcc.bz2"
    fake_bz2.write_text("not compressed")
    with pytest.raises(InputFormatError, match=r"yfcc\.bz2"):
        ingest(ws, "yfcc100m", [fake_bz2])
    assert not list(ws.catalog_dir.glob("*/part-*.parquet"))


# ---- commoncatalog ---------------------------------------------------------------


def test_commoncatalog_keeps_blip2_caption_and_jpg_location(ws: Workspace, tmp_path: Path) -> None:
    path = write_commoncatalog(tmp_path / "cc-0000.parquet", 5, bad_license_at=3)
    stats = ingest(ws, "commoncatalog", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (5, 4, 1)
    rows = ingested(ws, "commoncatalog")
    r = rows["commoncatalog:7002"]
    extra = json.loads(r["extra"])
    assert extra["blip2_caption"] == "a small boat number 2"
    assert extra["jpg"] == {"file": str(path), "row": 2}
    jpg = pq.read_table(path, columns=["jpg"])["jpg"][extra["jpg"]["row"]].as_py()
    assert Image.open(io.BytesIO(jpg)).size == (12, 8)
    assert (r["width"], r["height"], r["tags"]) == (1200, 800, ["boat", "lake"])
    assert r["creator_url"] == "http://www.flickr.com/photos/99@N00/"
    q = quarantined(ws, "commoncatalog")[0]
    assert q["reason"] == "license:conflict" and json.loads(q["raw"])["photoid"] == 7003
    assert "jpg" not in json.loads(q["raw"])
    assert "'Attribution License'" in q["detail"] and "'All Rights Reserved'" in q["detail"]  # names both


def test_commoncatalog_rejects_non_parquet(ws: Workspace, tmp_path: Path) -> None:
    bad = tmp_path / "part.parquet"
    bad.write_bytes(b"PAR1 nonsense")
    with pytest.raises(InputFormatError, match=r"part\.parquet.*not a Parquet file"):
        ingest(ws, "commoncatalog", [bad])
    other = tmp_path / "other.parquet"
    pq.write_table(pa.table({"a": [1]}), other)
    with pytest.raises(InputFormatError, match=r"other\.parquet.*id/license columns"):
        ingest(ws, "commoncatalog", [other])


# ---- openverse / wikimedia -------------------------------------------------------


def test_openverse(ws: Workspace, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "ov.jsonl", [
        openverse_record(0),
        openverse_record(1, license="cc0", license_version="1.0",
                         license_url="https://creativecommons.org/publicdomain/zero/1.0/"),
        openverse_record(2, license="by", license_version="4.0"),  # disagrees with its URL
        openverse_record(3, license_url=None, license="by-nc", license_version="3.0"),
        openverse_record(4, url=None),
        "{not json",
        "",
    ])
    stats = ingest(ws, "openverse", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (6, 3, 3)
    rows = ingested(ws, "openverse")
    assert rows["openverse:ov-0"]["tags"] == ["cat", "pet"] and rows["openverse:ov-0"]["width"] == 640
    assert rows["openverse:ov-1"]["license_id"] == "cc0"
    assert rows["openverse:ov-3"]["license_id"] == "cc-by-nc"
    assert json.loads(rows["openverse:ov-0"]["extra"])["provider"] == "flickr"
    assert [q["reason"] for q in quarantined(ws, "openverse")] == ["license:conflict", "malformed", "missing:url"]


def test_strip_html() -> None:
    assert strip_html('<a href="//commons.wikimedia.org/wiki/User:X">X &amp; Y</a> (<i>talk</i>)') == \
        ("X & Y (talk)", "https://commons.wikimedia.org/wiki/User:X")
    assert strip_html(None) == (None, None)


def test_wikimedia(ws: Workspace, tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "commons.jsonl", [
        wikimedia_page(0),
        wikimedia_page(1, short="CC BY 2.0", url="https://creativecommons.org/licenses/by/2.0"),
        wikimedia_page(2, short="GFDL"),
        wikimedia_page(3, short="Public domain"),
    ])
    stats = ingest(ws, "wikimedia", [path])
    assert (stats.read, stats.ingested, stats.quarantined) == (4, 3, 1)
    rows = ingested(ws, "wikimedia")
    r = rows["wikimedia:Tower_0.jpg"]
    assert r["creator"] == "Bob & Co" and r["creator_url"] == "https://commons.wikimedia.org/wiki/User:Bob0"
    assert r["description"] == "A tall tower at night" and r["license_id"] == "cc-by-sa"
    assert r["tags"] == ["Towers", "Night"] and (r["width"], r["height"]) == (800, 600)
    assert rows["wikimedia:Tower_1.jpg"]["license_id"] == "cc-by"
    assert rows["wikimedia:Tower_3.jpg"]["license_id"] == "pdm"
    assert quarantined(ws, "wikimedia")[0]["reason"] == "license:other"


def test_jsonl_wrong_format(ws: Workspace, tmp_path: Path) -> None:
    csv = tmp_path / "results.csv"
    csv.write_text("id,license\n")
    with pytest.raises(InputFormatError, match=r"results\.csv.*not JSON.*Openverse"):
        ingest(ws, "openverse", [csv])
    with pytest.raises(InputFormatError, match=r"ov\.jsonl.*extmetadata"):
        ingest(ws, "wikimedia", [write_jsonl(tmp_path / "ov.jsonl", [openverse_record(0)])])


# ---- folder ------------------------------------------------------------------------


def test_folder_sidecar_xmp_exif(ws: Workspace, tmp_path: Path) -> None:
    root = tmp_path / "photos"
    (root / "trips").mkdir(parents=True)
    (root / "a.jpg").write_bytes(jpeg_bytes())
    (root / "a.jpg.json").write_text(json.dumps({
        "title": "Sunset", "tags": "sky, sun", "creator": "Cleo", "landing_url": "https://example.org/a",
        "license": "https://creativecommons.org/licenses/by/4.0/"}))
    (root / "trips" / "b.jpg").write_bytes(jpeg_bytes(exif_copyright="CC BY-SA 4.0"))
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
           'xmlns:cc="http://creativecommons.org/ns#" xmlns:dc="http://purl.org/dc/elements/1.1/">'
           '<rdf:Description><cc:license rdf:resource="http://creativecommons.org/publicdomain/zero/1.0/"/>'
           '<dc:title><rdf:Alt><rdf:li xml:lang="x-default">Green field</rdf:li></rdf:Alt></dc:title>'
           '</rdf:Description></rdf:RDF></x:xmpmeta>')
    info = PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    Image.new("RGB", (20, 10), (0, 150, 0)).save(root / "c.png", pnginfo=info)
    (root / "d.png").write_bytes(b"\x89PNG truncated")                  # unreadable
    Image.new("RGB", (4, 4)).save(root / "e.png")                       # no license anywhere
    (root / "f.jpg").write_bytes(jpeg_bytes())
    (root / "f.jpg.json").write_text("{broken")                          # bad sidecar
    (root / "notes.txt").write_text("not an image")
    stats = ingest(ws, "folder", [root])
    assert (stats.read, stats.ingested, stats.quarantined) == (6, 3, 3)
    rows = ingested(ws, "folder")
    prefix = f"folder:{folder_id(str(root))}"
    assert prefix.startswith("folder:photos-") and len(prefix) == len("folder:photos-") + 8
    a = rows[f"{prefix}/a.jpg"]
    assert (a["title"], a["tags"], a["creator"], a["license_id"]) == ("Sunset", ["sky", "sun"], "Cleo", "cc-by")
    assert a["local_path"] == str(root / "a.jpg") and (a["width"], a["height"]) == (12, 8)
    b = rows[f"{prefix}/trips/b.jpg"]
    assert (b["license_id"], b["category"], json.loads(b["extra"])["license_from"]) == \
        ("cc-by-sa", "trips", "EXIF Copyright")
    c = rows[f"{prefix}/c.png"]
    assert (c["license_id"], c["title"]) == ("cc0", "Green field")
    assert [q["reason"] for q in quarantined(ws, "folder")] == ["license:missing", "malformed", "unreadable"]


def test_folder_requires_a_folder(ws: Workspace, tmp_path: Path) -> None:
    f = tmp_path / "x.jpg"
    f.write_bytes(jpeg_bytes())
    with pytest.raises(InputFormatError, match=r"x\.jpg: not a folder"):
        ingest(ws, "folder", [f])


def test_catalog_rows_by_key(ws: Workspace, tmp_path: Path) -> None:
    ingest(ws, "openverse", [write_jsonl(tmp_path / "ov.jsonl", [openverse_record(i) for i in range(5)])])
    table = catalog_rows(ws, ["openverse:ov-3", "openverse:ov-1", "openverse:missing"])
    assert table["key"].to_pylist() == ["openverse:ov-1", "openverse:ov-3"]
    assert catalog_rows(ws).num_rows == 5
    assert catalog_rows(Workspace.open(tmp_path / "empty")).num_rows == 0


def test_yfcc_truncated_bz2_names_the_file(ws: Workspace, tmp_path: Path) -> None:
    whole = bz2.compress(("\n".join("\t".join(yfcc_fields(i)) for i in range(2000)) + "\n").encode())
    path = tmp_path / "cut.bz2"
    path.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InputFormatError, match=r"cut\.bz2"):
        ingest(ws, "yfcc100m", [path])
    assert not ws.source_dir("yfcc100m").joinpath("_done").exists()  # nothing half-ingested counts as done


# pyarrow prints the UnicodeDecodeError of its own invalid-row callback before giving up on the chunk
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_yfcc_short_line_with_bad_bytes_and_undecodable_license(ws: Workspace, tmp_path: Path) -> None:
    """A short line that is not UTF-8 (Arrow cannot report it) and a license URL whose %-escapes are
    not UTF-8 are each quarantined with their reason; the rest of the file is ingested."""
    t = "\t".join
    lines: list[str | bytes] = [
        t(yfcc_fields(0)),
        b"caf\xe9\tonly two fields",
        t(yfcc_fields(2, license_url="http://example.com/licence/%FF")),
        t(yfcc_fields(3)),
    ]
    stats = ingest(ws, "yfcc100m", [write_yfcc(tmp_path / "yfcc100m_dataset", lines)])
    assert (stats.read, stats.ingested, stats.quarantined) == (4, 2, 2)
    assert set(ingested(ws, "yfcc100m")) == {"yfcc100m:5000000", "yfcc100m:5000003"}
    lic, short = sorted(quarantined(ws, "yfcc100m"), key=lambda q: q["reason"])
    assert (short["reason"], short["record_no"], short["raw"]) == ("malformed", 2, "caf\ufffd\tonly two fields")
    assert lic["reason"] == "license:other" and "http://example.com/licence/%FF" in lic["detail"]
