"""The Ray engine runs the same per-shard function on a local Ray instance (CI-sized: one CPU)."""

from __future__ import annotations

import pytest

from opencanvas.caption.stage import caption, read_captions
from opencanvas.workspace import Workspace
from tests.factories import make_image_subset

ray = pytest.importorskip("ray")


@pytest.fixture
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_engine_matches_local_engine(ws: Workspace, tmp_path, local_ray) -> None:
    keys = make_image_subset(ws, n=18, shard_size=4)
    stats = caption(ws, "shapes", "metadata", engine="ray")
    assert (stats.shards_done, stats.images) == (5, 18)
    ray_rows = sorted(read_captions(ws, "metadata").select(["key", "caption", "flagged"]).to_pylist(),
                      key=lambda r: r["key"])
    assert [r["key"] for r in ray_rows] == sorted(keys)

    local = Workspace.open(tmp_path / "local")
    make_image_subset(local, n=18, shard_size=4)
    caption(local, "shapes", "metadata")
    local_rows = sorted(read_captions(local, "metadata").select(["key", "caption", "flagged"]).to_pylist(),
                        key=lambda r: r["key"])
    assert ray_rows == local_rows
    # resume through Ray too: nothing left to do
    assert caption(ws, "shapes", "metadata", engine="ray").shards_skipped == 5
