"""PD12M and any table dump (Parquet, JSON lines, CSV) -> catalog; PD12M's MD5 checked by fetch."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import part_files
from opencanvas.catalog.sources import InputFormatError
from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.testing import image_server, noise_image
from opencanvas.workspace import Workspace

CC0 = "https://creativecommons.org/publicdomain/zero/1.0/"
PDM = "https://creativecommons.org/publicdomain/mark/1.0/"


def pd12m_rows(url: str = "https://example.org") -> list[dict]:
    good = [{"id": f"p{i}", "url": f"{url}/img/p{i}.jpg", "caption": f"caption {i}", "width": 640, "height": 480,
             "mime_type": "image/jpeg", "hash": "0" * 32, "license": CC0 if i % 2 else PDM, "source": "wikimedia"}
            for i in range(4)]
    bad = [{**good[0], "id": "nolicense", "license": "https://example.org/all-rights-reserved"},
           {**good[0], "id": "nd", "license": "https://creativecommons.org/licenses/by-nd/4.0/"},
           {**good[0], "id": "nourl", "url": ""},
           {**good[0], "id": None}]
    return good + bad


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def catalog(ws: Workspace) -> dict[str, dict]:
    return {r["key"]: r for p in part_files(ws) for r in pq.read_table(p).to_pylist()}


def quarantine(ws: Workspace) -> list[dict]:
    return [r for p in sorted(ws.quarantine_dir.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_pd12m_parquet_ingests_open_rows_with_caption_and_md5_and_quarantines_the_rest(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    path = write_parquet(tmp_path / "pd12m" / "part-0.parquet", pd12m_rows())
    stats = ingest(ws, "pd12m", [path])
    rows = catalog(ws)
    assert sorted(rows) == ["pd12m:nd", "pd12m:p0", "pd12m:p1", "pd12m:p2", "pd12m:p3"]
    assert {rows["pd12m:p0"]["license_id"], rows["pd12m:p1"]["license_id"]} == {"pdm", "cc0"}
    assert rows["pd12m:nd"]["license_id"] == "cc-by-nd"  # in the catalog; every training policy excludes it
    p1 = rows["pd12m:p1"]
    assert p1["download_url"] == "https://example.org/img/p1.jpg" and (p1["width"], p1["height"]) == (640, 480)
    assert json.loads(p1["extra"]) == {"caption": "caption 1", "caption_set": "pd12m", "md5": "0" * 32,
                                       "mime_type": "image/jpeg", "source": "wikimedia"}
    reasons = sorted(r["reason"] for r in quarantine(ws))
    assert reasons == ["license:other", "missing:key", "missing:url"]
    bad = next(r for r in quarantine(ws) if r["reason"] == "license:other")
    assert json.loads(bad["raw"])["id"] == "nolicense" and bad["record_no"] == 5
    assert stats.read == 8 == stats.ingested + stats.quarantined
    assert ingest(ws, "pd12m", [path]).resumed == 1 and len(catalog(ws)) == 5  # idempotent


def test_pd12m_without_its_columns_is_a_one_line_error(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    path = write_parquet(tmp_path / "x.parquet", [{"id": "a", "url": "https://e.org/a.jpg"}])
    with pytest.raises(InputFormatError, match=r"no column\(s\) caption, hash, height, license, mime_type"):
        ingest(ws, "pd12m", [path])


def test_table_jsonl_and_csv_with_a_column_map_and_a_caption_set(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    records = [{"uid": "a", "src": "https://e.org/a.jpg", "lic": "CC0 1.0", "name": "Cat", "who": "Ann",
                "text": "a cat on a mat"},
               {"uid": "b", "src": "https://e.org/b.jpg", "lic": "CC BY 4.0", "name": "Dog", "who": "Bo",
                "text": "a dog"},
               {"uid": "c", "src": "https://e.org/c.jpg", "lic": "Copyright, all rights reserved", "name": "X",
                "who": "C", "text": "x"}]
    jsonl = tmp_path / "dump.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    csv = tmp_path / "dump.csv"
    csv.write_text("uid,src,lic,name,who,text\n" + "".join(
        f"{r['uid']}2,{r['src']},{r['lic'].replace(',', '')},{r['name']},{r['who']},{r['text']}\n" for r in records))
    mapping = "key=uid,url=src,license=lic,title=name,author=who,caption=text"
    stats = ingest(ws, "table", [jsonl, csv], options={"map": mapping, "captions": "mydump"})
    rows = catalog(ws)
    assert sorted(rows) == ["table:a", "table:a2", "table:b", "table:b2"]
    assert rows["table:b"]["license_id"] == "cc-by" and rows["table:b"]["creator"] == "Bo"
    assert rows["table:a2"]["title"] == "Cat"
    assert json.loads(rows["table:a"]["extra"]) == {"caption": "a cat on a mat", "caption_set": "mydump"}
    assert stats.quarantined == 2 and {r["reason"] for r in quarantine(ws)} == {"license:other"}


def test_table_map_errors_are_one_line_and_name_the_column(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    path = tmp_path / "d.csv"
    path.write_text("id,link,license\n1,https://e.org/1.jpg,CC0\n")
    with pytest.raises(InputFormatError, match=r"no column\(s\) url; it has id, license, link"):
        ingest(ws, "table", [path], options={"map": "key=id,url=url,license=license"})
    with pytest.raises(InputFormatError, match="FIELD=COLUMN"):
        ingest(ws, "table", [path], options={"map": "key=id,url"})
    with pytest.raises(InputFormatError, match="'colour' is not one of"):
        ingest(ws, "table", [path], options={"map": "key=id,url=link,license=license,colour=x"})
    with pytest.raises(InputFormatError, match="needs --map"):
        ingest(ws, "table", [path])


def test_fetch_checks_pd12m_md5_and_fails_a_mismatch_with_its_reason(tmp_path):
    from opencanvas.catalog.subset import make_subset

    ws = Workspace.open(tmp_path / "ws")
    with image_server() as (url, state):
        good, other = noise_image(1, (300, 300)), noise_image(2, (300, 300))
        state.images["p0.jpg"] = (good, "image/jpeg")
        state.images["p1.jpg"] = (other, "image/jpeg")
        rows = [{**r, "url": f"{url}/img/{r['id']}.jpg"} for r in pd12m_rows(url)[:2]]
        rows[0]["hash"] = hashlib.md5(good).hexdigest()
        rows[1]["hash"] = hashlib.md5(good).hexdigest()  # the listed MD5 is not that of the served bytes
        ingest(ws, "pd12m", [write_parquet(tmp_path / "pd.parquet", rows)])
        make_subset(ws, "commercial", "pd")
        http = HttpConfig(timeout=2, retries=0, backoff=0.01, allow_private_addresses=True, domain_rps=0)
        stats = fetch(ws, "pd", options=FetchOptions(http=http))
    index = {r["key"]: r for p in ws.images_dir("pd").glob("shard-*.parquet") for r in pq.read_table(p).to_pylist()}
    assert index["pd12m:p0"]["status"] == "ok"
    assert index["pd12m:p1"]["status"] == "failed" and index["pd12m:p1"]["reason"].startswith("md5-mismatch:")
    assert stats.counts == {"ok": 1, "failed": 1}


def test_megalith_takes_the_high_resolution_url_and_needs_a_license_column(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    page = "https://www.flickr.com/photos/someone/{}/"
    rows = [{"url": "https://live.staticflickr.com/1/11_a_b.jpg",
             "url_highres": "https://live.staticflickr.com/1/11_x_o.jpg", "url_source": page.format(11),
             "license": "CC0 1.0"},
            {"url": "https://live.staticflickr.com/1/12_a_b.jpg", "url_highres": None,
             "url_source": page.format(12), "license": "Public Domain Mark 1.0"},
            {"url": "https://live.staticflickr.com/1/13_a_b.jpg", "url_highres": "",
             "url_source": page.format(13), "license": "No known copyright restrictions"},
            {"url": "https://live.staticflickr.com/1/14_a_b.jpg", "url_highres": None,
             "url_source": "https://example.org/not-a-flickr-page", "license": "CC0 1.0"}]
    stats = ingest(ws, "megalith", [write_parquet(tmp_path / "m.parquet", rows)])
    got = catalog(ws)
    assert sorted(got) == ["megalith:11", "megalith:12"]
    assert got["megalith:11"]["download_url"].endswith("11_x_o.jpg")  # high resolution when present
    assert got["megalith:12"]["download_url"].endswith("12_a_b.jpg")
    assert got["megalith:11"]["landing_url"] == page.format(11) and got["megalith:12"]["license_id"] == "pdm"
    assert sorted(r["reason"] for r in quarantine(ws)) == ["license:other", "missing:key"]
    assert stats.read == 4
    bare = write_parquet(tmp_path / "bare.parquet", [{k: v for k, v in rows[0].items() if k != "license"}])
    with pytest.raises(InputFormatError, match="no license or license_url column"):
        ingest(ws, "megalith", [bare])


def test_cli_ingest_table_and_option_errors(tmp_path):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    path = tmp_path / "d.csv"
    path.write_text("id,link,lic,text\n1,https://e.org/1.jpg,CC0 1.0,a cat\n")
    runner = CliRunner()
    ws = str(tmp_path / "ws")
    ok = runner.invoke(app, ["catalog", "ingest", "table", str(path), "--map",
                             "key=id,url=link,license=lic,caption=text", "--captions", "mine", "-w", ws])
    assert ok.exit_code == 0, ok.output
    assert "ingested 1" in ok.output
    bad = runner.invoke(app, ["catalog", "ingest", "table", str(path), "--map", "key=id,url=url,license=lic",
                              "-w", ws])
    assert bad.exit_code != 0 and "no column(s) url" in " ".join(bad.output.split())
    assert "Traceback" not in bad.output
    wrong = runner.invoke(app, ["catalog", "ingest", "pd12m", str(path), "--split", "nano", "-w", ws])
    assert wrong.exit_code != 0 and "--split filters GPIC's splits" in " ".join(wrong.output.split())
    listed = runner.invoke(app, ["catalog", "sources"])
    assert all(name in listed.output for name in ("gpic", "pd12m", "megalith", "table"))


def test_bad_lines_in_jsonl_and_csv_are_quarantined_and_the_rest_ingests(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    jsonl = tmp_path / "d.jsonl"
    jsonl.write_text('{"id": "a", "u": "https://e.org/a.jpg", "l": "CC0 1.0"}\n{not json\n[1, 2]\n\n'
                     '{"id": "b", "u": "https://e.org/b.jpg", "l": "CC0 1.0", "w": 640}\n')
    csv = tmp_path / "d.csv"
    csv.write_text("id,u,l\nc,https://e.org/c.jpg,CC0 1.0\nbroken\nd,https://e.org/d.jpg,CC0 1.0\ne,x,y,z\n")
    stats = ingest(ws, "table", [jsonl, csv], options={"map": "key=id,url=u,license=l"})
    assert sorted(catalog(ws)) == ["table:a", "table:b", "table:c", "table:d"]
    bad = sorted((Path(r["input_file"]).suffix, r["record_no"], r["reason"], r["raw"]) for r in quarantine(ws))
    assert bad == [(".csv", 2, "malformed", "broken"), (".csv", 4, "malformed", "e,x,y,z"),
                   (".jsonl", 2, "malformed", "{not json"), (".jsonl", 3, "malformed", "[1, 2]")]
    assert stats.read == 8 == stats.ingested + stats.quarantined
