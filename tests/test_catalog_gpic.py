"""GPIC: WebDataset tars of {key}.json + {key}.jpg|png -> catalog (bytes stay in the tars) -> fetch -> captions.

The tars are written here in GPIC's layout; the end-to-end test takes one through
ingest -> subset -> fetch -> caption (shipped) -> encode -> train with tiny components.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import part_files
from opencanvas.catalog.sources.gpic import parse_attribution
from opencanvas.workspace import Workspace
from tests.factories import COLORS, SHAPES, draw_shape

BY = "https://creativecommons.org/licenses/by/2.0/"


def jpeg(color: str = "red", shape: str = "circle", size: int = 64, seed: int = 0) -> bytes:
    buf = io.BytesIO()
    draw_shape(color, shape, size, np.random.default_rng(seed)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def gpic_json(key: str, *, license: str | None = "CC BY 2.0", license_url: str | None = BY,
              attribution: str = "Photo by Jane Doe (https://www.flickr.com/people/janedoe/)", split: str = "nano",
              caption_type: str = "short", caption: str = "a red circle", size: int = 64) -> bytes:
    return json.dumps({"key": key, "license": license, "license_url": license_url, "attribution": attribution,
                       "img_width": size, "img_height": size, "split": split, "caption_type": caption_type,
                       "caption": caption}).encode()


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def shapes_tar(path: Path, n: int, split: str = "nano", size: int = 64) -> tuple[Path, dict[str, str]]:
    """n well-formed GPIC pairs; returns the tar and each key's caption."""
    members, captions = [], {}
    for i in range(n):
        color, shape = list(COLORS)[i % len(COLORS)], SHAPES[(i // len(COLORS)) % len(SHAPES)]
        key = f"{split}{i:06d}"
        captions[key] = f"a {color} {shape}"
        members += [(f"{key}.json", gpic_json(key, split=split, caption=captions[key], size=size)),
                    (f"{key}.jpg", jpeg(color, shape, size, seed=i))]
    return write_tar(path, members), captions


def catalog(ws: Workspace) -> dict[str, dict]:
    rows = [r for p in part_files(ws) for r in pq.read_table(p).to_pylist()]
    return {r["key"]: r for r in rows}


def quarantine(ws: Workspace) -> list[dict]:
    return [r for p in sorted(ws.quarantine_dir.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def test_attribution_gives_author_and_profile_and_keeps_raw_text():
    assert parse_attribution("Photo by Jane Doe (https://www.flickr.com/people/janedoe/)") == (
        "Jane Doe", "https://www.flickr.com/people/janedoe/")
    assert parse_attribution("Jane Doe, CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0") == (
        "Jane Doe", None)
    assert parse_attribution("By Bob via Wikimedia Commons") == ("Bob", None)
    assert parse_attribution("CC BY 2.0") == (None, None)
    assert parse_attribution(None) == (None, None)


def test_gpic_tar_ingests_good_pairs_and_quarantines_each_bad_member(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    members = [
        ("ok1.json", gpic_json("ok1")), ("ok1.jpg", jpeg()),
        ("nd.json", gpic_json("nd", license="CC BY-ND 2.0",
                              license_url="https://creativecommons.org/licenses/by-nd/2.0/")),
        ("nd.jpg", jpeg("blue")),
        ("arr.json", gpic_json("arr", license="All rights reserved", license_url=None)), ("arr.jpg", jpeg()),
        ("clash.json", gpic_json("clash", license="CC0")), ("clash.jpg", jpeg()),  # name and URL disagree
        ("bad.json", b"{not json"), ("bad.jpg", jpeg()),
        ("broken.json", gpic_json("broken")), ("broken.jpg", b"\xff\xd8 not really a jpeg"),
        ("lonely.json", gpic_json("lonely")),                       # JSON with no image after it
        ("orphan.png", jpeg()),                                     # image with no JSON before it
        ("swap.jpg", jpeg()), ("swap.json", gpic_json("swap")),     # out of order: image first
        ("ok2.json", gpic_json("ok2", attribution="Anna K")), ("ok2.png", jpeg("green")),
    ]
    tar = write_tar(tmp_path / "gpic-00000.tar", members)
    stats = ingest(ws, "gpic", [tar])
    rows = catalog(ws)
    assert sorted(rows) == ["gpic:nd", "gpic:ok1", "gpic:ok2"]  # ND enters the catalog; subsets exclude it
    assert rows["gpic:nd"]["license_id"] == "cc-by-nd" and rows["gpic:ok1"]["license_id"] == "cc-by"
    ok1 = rows["gpic:ok1"]
    assert ok1["creator"] == "Jane Doe" and ok1["creator_url"] == "https://www.flickr.com/people/janedoe/"
    assert ok1["local_path"] == str(tar.resolve()) and ok1["download_url"] is None
    extra = json.loads(ok1["extra"])
    assert extra["attribution"] == "Photo by Jane Doe (https://www.flickr.com/people/janedoe/)"
    assert (extra["caption"], extra["caption_type"], extra["split"]) == ("a red circle", "short", "nano")
    with open(tar, "rb") as f:  # the recorded byte range is the image member, exactly
        f.seek(extra["tar_offset"])
        assert f.read(extra["tar_size"]) == jpeg()
    assert rows["gpic:ok2"]["creator"] == "Anna K"
    reasons = sorted((r["reason"], r["raw"][:14]) for r in quarantine(ws))
    assert [r for r, _ in reasons] == ["license:conflict", "license:other", "malformed", "unpaired", "unpaired",
                                       "unpaired", "unpaired", "unreadable"]
    assert stats.read == stats.ingested + stats.quarantined == 11
    again = ingest(ws, "gpic", [tar])  # idempotent: the done tar is skipped
    assert again.resumed == 1 and again.read == 0 and len(catalog(ws)) == 3


def test_split_filter_and_file_level_errors(tmp_path):
    from opencanvas.catalog.sources import InputFormatError

    ws = Workspace.open(tmp_path / "ws")
    nano, _ = shapes_tar(tmp_path / "in" / "a.tar", 2, split="nano")
    write_tar(tmp_path / "in" / "b.tar", [("l1.json", gpic_json("l1", split="lite")), ("l1.jpg", jpeg())])
    stats = ingest(ws, "gpic", [tmp_path / "in"], options={"split": "lite"})
    assert sorted(catalog(ws)) == ["gpic:l1"] and stats.read == 1 and stats.quarantined == 0
    ingest(ws, "gpic", [tmp_path / "in"], options={"split": "nano"})  # another split: new units, more keys
    assert sorted(catalog(ws)) == ["gpic:l1", "gpic:nano000000", "gpic:nano000001"]
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    with pytest.raises(InputFormatError, match="not a tar archive"):
        ingest(ws, "gpic", [tmp_path / "junk.tar"])
    with pytest.raises(InputFormatError, match="no .tar files"):
        ingest(ws, "gpic", [ws.catalog_dir])


def test_truncated_tar_keeps_the_pairs_before_the_break(tmp_path):
    ws = Workspace.open(tmp_path / "ws")
    tar, _ = shapes_tar(tmp_path / "t.tar", 3)
    with tarfile.open(tar) as t:
        last = t.getmembers()[-1]  # the third image
    tar.write_bytes(tar.read_bytes()[: last.offset_data + 100])  # cut inside its bytes
    stats = ingest(ws, "gpic", [tar])
    assert stats.ingested == 2 and stats.quarantined == 1
    assert any(r["detail"].startswith("tar ends or breaks") for r in quarantine(ws))


def test_gpic_tar_through_subset_fetch_shipped_captions_encode_and_train(tmp_path):
    from opencanvas.caption.stage import caption
    from opencanvas.captions import read_captions
    from opencanvas.catalog.subset import make_subset
    from opencanvas.encode import encode
    from opencanvas.fetch.stage import fetch
    from opencanvas.shards import iter_shard
    from opencanvas.train.loop import train
    from tests.test_train_pipeline import PROMPTS, write_components

    ws = Workspace.open(tmp_path / "ws")
    tar, captions = shapes_tar(tmp_path / "gpic" / "gpic-00000.tar", 8)
    ingest(ws, "gpic", [tar.parent])
    make_subset(ws, "commercial", "gpic8")
    stats = fetch(ws, "gpic8", shard_size=4, min_side=16, max_side=0)
    assert stats.counts.get("ok") == 8, stats.to_dict()
    stored = [img for t in sorted(ws.images_dir("gpic8").glob("shard-*.tar")) for img in iter_shard(t)]
    assert len(stored) == 8
    originals = {k: v for k, v in tarfile_members(tar).items() if k.endswith(".jpg")}
    for img in stored:  # copied from the tar as is: no re-encoding without --max-side
        assert img.data == originals[img.key.removeprefix("gpic:") + ".jpg"]
        assert img.meta["fetched_from"].endswith(".tar#" + img.key.removeprefix("gpic:") + ".jpg")
    caption(ws, "gpic8", "gpic-short")
    table = read_captions(ws, "gpic-short")
    assert {k.removeprefix("gpic:"): c for k, c in zip(table["key"].to_pylist(), table["caption"].to_pylist(),
                                                       strict=True)} == captions
    assert set(table["preprocessing"].to_pylist()) == {"shipped with GPIC, caption_type short"}
    components = write_components(ws.root / "sd2-tiny")
    summary = encode(ws, "gpic8", str(components), str(components), ["gpic-short"], "gpic8-16", resolutions=(16,))
    assert summary["missing_captions"] == {"gpic-short": 0}
    result = train(ws, "gpic8-16", "tiny", "gpic-run", images=8, batch=4, validate_every=0,
                   validation_prompts=tuple(PROMPTS[:1]))
    assert result["images_seen"] == 8


def tarfile_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}


def test_a_tar_changed_after_ingest_fails_the_row_with_its_reason(tmp_path):
    from opencanvas.catalog.subset import make_subset
    from opencanvas.fetch.stage import fetch

    ws = Workspace.open(tmp_path / "ws")
    tar, _ = shapes_tar(tmp_path / "t.tar", 2)
    ingest(ws, "gpic", [tar])
    make_subset(ws, "commercial", "s")
    tar.write_bytes(tar.read_bytes()[:2048])  # truncated after ingest
    stats = fetch(ws, "s", min_side=16, max_side=0)
    index = [r for p in ws.images_dir("s").glob("shard-*.parquet") for r in pq.read_table(p).to_pylist()]
    assert stats.counts.get("ok", 0) + sum(r["status"] == "ok" for r in index) <= 2
    assert any("the tar changed since ingest" in r["reason"] for r in index)
