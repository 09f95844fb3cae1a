"""Placeholder images ("Linked Image Not Found", one file behind many dead links) never become training images."""

from __future__ import annotations

import io
from collections.abc import Iterator

import pytest
from PIL import Image

from opencanvas.fetch.http import HttpConfig
from opencanvas.fetch.placeholders import placeholder_reason
from opencanvas.fetch.process import process_image
from opencanvas.fetch.stage import FetchOptions, fetch
from opencanvas.fetch.testing import ServerState, image_server, noise_image, write_catalog_subset
from opencanvas.shards import iter_shard, read_index
from opencanvas.workspace import Workspace
from tests.factories import catalog_row

OPTIONS = FetchOptions(threads=2, min_side=64, http=HttpConfig(timeout=0.5, retries=0, allow_private_addresses=True,
                                                               domain_rps=0))
PENGUIN = "png/animals/birds/penguin/tux_didier_fabert_01.png"


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    with image_server(ServerState()) as running:
        yield running


def test_the_debian_linked_image_not_found_png_and_its_copies(ws: Workspace, clipart_root, server) -> None:
    url, state = server
    original = (clipart_root / PENGUIN).read_bytes()
    smaller = io.BytesIO()
    Image.open(io.BytesIO(original)).resize((372, 526)).save(smaller, format="PNG")
    state.images.update({"resized.png": (smaller.getvalue(), "image/png"),
                         "fine.jpg": (noise_image(1, (300, 300)), "image/jpeg")})
    rows = [{**catalog_row("0000", "tux"), "local_path": str(clipart_root / PENGUIN)},
            {**catalog_row("0001", "tux, smaller"), "download_url": f"{url}/img/resized.png"},
            {**catalog_row("0002", "a photo"), "download_url": f"{url}/img/fine.jpg"}]
    write_catalog_subset(ws, "s", rows)
    fetch(ws, "s", options=OPTIONS)
    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    assert index["synthetic:0000"]["status"] == "skipped"
    assert index["synthetic:0000"]["reason"].startswith("placeholder: Debian openclipart-png's 'Linked Image Not")
    assert index["synthetic:0001"]["reason"].startswith("placeholder: looks like")
    assert index["synthetic:0002"]["status"] == "ok"
    # Another clip art drawing of the same subject is not a placeholder.
    other = (clipart_root / "png/animals/birds/penguin/tux_clemente_01.png").read_bytes()
    assert placeholder_reason("", process_image(other, max_side=1024, min_side=64, max_pixels=10**8).phash) is None


def test_the_same_bytes_behind_many_items_are_all_placeholders(ws: Workspace, server) -> None:
    url, state = server
    unavailable, popular = noise_image(7, (300, 300)), noise_image(8, (300, 300))
    state.images.update({"gone.jpg": (unavailable, "image/jpeg"), "pop.jpg": (popular, "image/jpeg")})
    rows = []
    for i in range(14):  # ten dead links answered with one file, and one picture posted three times
        target = "gone.jpg" if i % 3 else "pop.jpg"
        rows.append({**catalog_row(f"{i:04d}", f"item {i}"), "download_url": f"{url}/img/{target}?id={i}"})
    assert sum(1 for r in rows if "gone" in r["download_url"]) == 9
    rows.append({**catalog_row("0014", "item 14"), "download_url": f"{url}/img/gone.jpg?id=14"})
    write_catalog_subset(ws, "s", rows)
    stats = fetch(ws, "s", shard_size=4, options=OPTIONS)
    index = {r["key"]: r for r in read_index(ws.images_dir("s")).to_pylist()}
    gone = [k for k, r in zip(sorted(index), rows, strict=True) if "gone" in r["download_url"]]
    assert len(gone) == 10
    for key in gone:
        assert index[key]["status"] == "skipped", index[key]
        assert index[key]["reason"] == "placeholder: the same bytes as 9 other items (first: synthetic:0001)"
    pop = [k for k, r in zip(sorted(index), rows, strict=True) if "pop" in r["download_url"]]
    assert [index[k]["status"] for k in pop] == ["ok", "skipped", "skipped", "skipped", "skipped"]
    assert index[pop[1]]["reason"] == f"duplicate-of: {pop[0]}"
    stored = {img.key for tar in ws.images_dir("s").glob("shard-*.tar") for img in iter_shard(tar)}
    assert stored == {pop[0]} and stats.reasons["skipped: placeholder"] == 10
