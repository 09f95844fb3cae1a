"""The Ray engine runs the same per-shard function on Ray actors of a local instance (CI-sized: one CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest

from opencanvas.caption.captioners import GenerationSettings
from opencanvas.caption.stage import caption
from opencanvas.caption.tiny_models import save_tiny_blip2
from opencanvas.captions import read_captions
from opencanvas.workspace import Workspace
from tests.factories import make_image_subset

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _rows(ws: Workspace, name: str) -> list[dict]:
    table = read_captions(ws, name).select(["key", "caption", "flagged", "model_revision"])
    return sorted(table.to_pylist(), key=lambda r: r["key"])


def test_ray_engine_matches_local_engine(ws: Workspace, tmp_path: Path, local_ray) -> None:
    keys = make_image_subset(ws, n=18, shard_size=4)
    stats = caption(ws, "shapes", "metadata", engine="ray")
    assert (stats.shards_done, stats.images) == (5, 18)
    ray_rows = _rows(ws, "metadata")
    assert [r["key"] for r in ray_rows] == sorted(keys)

    local = Workspace.open(tmp_path / "local")
    make_image_subset(local, n=18, shard_size=4)
    caption(local, "shapes", "metadata")
    assert ray_rows == _rows(local, "metadata")
    assert caption(ws, "shapes", "metadata", engine="ray").shards_skipped == 5  # resume through Ray too


@pytest.mark.slow
def test_blip2_on_a_ray_actor_equals_local(ws: Workspace, tmp_path: Path, local_ray) -> None:
    """The model is built inside the actor (once) and gives the local engine's captions."""
    model = save_tiny_blip2(tmp_path / "tiny-blip2")
    make_image_subset(ws, n=8, shard_size=2)
    settings = dict(model=str(model), batch_size=2, loader_workers=0,
                    generation=GenerationSettings(max_new_tokens=6))
    stats = caption(ws, "shapes", "blip2", name="on-ray", engine="ray", ray_actors=1, **settings)
    assert (stats.shards_done, stats.images) == (4, 8)
    caption(ws, "shapes", "blip2", name="local", **settings)
    assert _rows(ws, "on-ray") == _rows(ws, "local")
