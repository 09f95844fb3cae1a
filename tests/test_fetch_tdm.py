"""TDMRep (header and /.well-known/tdmrep.json) and ai.txt opt-outs, against the local fault server."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.tdm import header_reservation, parse_ai_txt, parse_tdmrep
from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

HTTP = HttpConfig(timeout=2, retries=0, backoff=0.01, allow_private_addresses=True, domain_rps=0)


def test_tdmrep_rules_first_match_applies():
    rules = parse_tdmrep(json.dumps([
        {"location": "/img/free*", "tdm-reservation": 0},
        {"location": "/img/*", "tdm-reservation": 1, "tdm-policy": "https://example.org/policy.json"},
    ]).encode())
    assert rules.reason("/img/free-cat.jpg") is None
    assert rules.reason("/img/cat.jpg") == "tdmrep-json: reserved for /img/*"
    assert rules.reason("/other/cat.jpg") is None
    assert parse_tdmrep(b"not json").reason("/img/cat.jpg") is None  # a broken file reserves nothing
    assert header_reservation("1") == "tdm-reservation: header 1"
    assert header_reservation("0") is None and header_reservation(None) is None


def test_ai_txt_groups_and_longest_pattern():
    text = (b"# Spawning ai.txt\nUser-Agent: *\nDisallow: *.png\nDisallow: /private/\nAllow: /private/ok/\n\n"
            b"User-Agent: someotherbot\nDisallow: /\n")
    rules = parse_ai_txt(text, "opencanvas")
    assert rules.reason("/img/a.png") == "ai-txt: disallowed by '*.png'"
    assert rules.reason("/img/a.jpg") is None
    assert rules.reason("/private/x.jpg") == "ai-txt: disallowed by '/private/'"
    assert rules.reason("/private/ok/x.jpg") is None
    assert parse_ai_txt(b"User-Agent: opencanvas\nDisallow: /\n", "OpenCanvas").reason("/a.jpg") is not None
    assert parse_ai_txt(b"", "opencanvas").reason("/a.jpg") is None


def test_fetch_skips_each_signal_and_records_which(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    state = ServerState(
        tdmrep=json.dumps([{"location": "/img/reserved*", "tdm-reservation": 1}]).encode(),
        ai_txt=b"User-Agent: *\nDisallow: *.png\n")
    with image_server(state) as (url, state):
        names = {"free.jpg": "img", "reserved.jpg": "img", "header.jpg": "tdm", "pic.png": "img",
                 "other.jpg": "noai"}
        rows = []
        for i, (name, route) in enumerate(names.items()):
            state.images[name] = (noise_image(i, (300, 300)), "image/jpeg")
            row = catalog_row(f"{i:04d}", name)
            row["download_url"] = f"{url}/{route}/{name}"
            rows.append(row)
        write_catalog_subset(ws, "s", rows)
        stats = fetch(ws, "s", options=FetchOptions(http=HTTP, threads=4))
        assert state.hits["/.well-known/tdmrep.json"] == 1 and state.hits["/ai.txt"] == 1  # cached per origin
    index = {r["key"]: r for p in ws.images_dir("s").glob("shard-*.parquet") for r in pq.read_table(p).to_pylist()}
    by_name = {rows[int(k.split(":")[1])]["title"]: (r["status"], r["reason"]) for k, r in index.items()}
    assert by_name == {
        "free.jpg": ("ok", ""),
        "reserved.jpg": ("skipped", "tdmrep-json: reserved for /img/reserved*"),
        "header.jpg": ("skipped", "tdm-reservation: header 1"),
        "pic.png": ("skipped", "ai-txt: disallowed by '*.png'"),
        "other.jpg": ("skipped", "x-robots-tag: noai"),
    }
    # The per-signal counts the data card lists ("status: reason family").
    assert {k: v for k, v in stats.reasons.items() if k.startswith("skipped")} == {
        "skipped: tdmrep-json": 1, "skipped: tdm-reservation": 1, "skipped: ai-txt": 1, "skipped: x-robots-tag": 1}
