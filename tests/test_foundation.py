from __future__ import annotations

import os
import re
import subprocess
import sys

import pyarrow as pa
import pytest

from opencanvas.engines import map_shards, shard_share
from opencanvas.shards import iter_shard, key_from_stem, member_stem, read_index
from opencanvas.storage import atomic_write_parquet, parquet_metadata, read_parquet_files
from tests.factories import make_image_subset


def test_member_stem_round_trips_keys_with_separators() -> None:
    key = "openclipart:animals/cat.v2_01"
    stem = member_stem(key)
    assert "/" not in stem and "." not in stem and ":" not in stem
    assert key_from_stem(stem) == key


def test_shards_written_by_factory_read_back(ws) -> None:
    keys = make_image_subset(ws, n=20, shard_size=8)
    index = read_index(ws.images_dir("shapes"))
    assert sorted(index.column("key").to_pylist()) == sorted(keys)
    assert index.column("shard").to_pylist().count("shard-00002") == 4
    images = list(iter_shard(ws.images_dir("shapes") / "shard-00000.tar"))
    assert [im.key for im in images] == keys[:8]
    assert images[0].ext == "png" and images[0].meta["key"] == keys[0]


def test_atomic_parquet_keeps_metadata_and_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "a" / "t.parquet"
    atomic_write_parquet(path, pa.table({"x": [1, 2]}), metadata={"policy": "commercial"})
    assert parquet_metadata(path) == {"policy": "commercial"}
    assert [p.name for p in path.parent.iterdir()] == ["t.parquet"]
    assert read_parquet_files([path]).num_rows == 2


def test_shard_share_partitions_every_task_once() -> None:
    tasks = list(range(11))
    shares = [shard_share(tasks, r, 3) for r in range(3)]
    assert sorted(sum(shares, [])) == tasks
    with pytest.raises(ValueError):
        shard_share(tasks, 3, 3)


def _square(x: int) -> int:
    return x * x


def test_map_shards_process_pool_matches_serial() -> None:
    assert sorted(map_shards(_square, [1, 2, 3], workers=2)) == [1, 4, 9]


# Every verb of docs/architecture.md's pipeline, plus the component trainers, export, the demo,
# studies, human evaluation and the web app.
STAGE_VERBS = {"catalog", "fetch", "caption", "autoencoder", "clip", "encode", "train", "export", "sample", "eval",
               "card", "demo", "humaneval", "serve", "study", "verify", "takedown", "trace", "publish", "c2pa",
               "distill"}


def test_cli_help_lists_stage_verbs() -> None:
    env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "opencanvas", "--help"], capture_output=True, text=True, check=True,
                         env=env).stdout
    commands = out.split("Commands")[1]
    listed = set(re.findall(r"^\W\s(\w+)\s{2,}", commands, flags=re.MULTILINE))
    assert listed == STAGE_VERBS


def test_cli_help_imports_no_torch() -> None:
    """`opencanvas --help` stays fast: no stage may import torch (or the models) at CLI registration."""
    script = "import sys\nimport opencanvas.cli\nprint(sorted(m for m in ('torch', 'diffusers', 'transformers') " \
             "if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_keep_freed_memory_reuses_large_blocks() -> None:
    """After `keep_freed_memory`, freeing and reallocating a 16 MB block causes no page faults."""
    script = (
        "import resource, sys\n"
        "from opencanvas.allocator import keep_freed_memory\n"
        "assert keep_freed_memory()\n"
        "b = b'x' * (16 << 20); del b\n"
        "f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
        "for _ in range(20):\n"
        "    b = b'x' * (16 << 20); del b\n"
        "print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)\n"
    )
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert int(out) < 100  # 16 MB is 4,096 pages: each fresh one would fault


def test_flatten_alpha_whitens_every_kind_of_transparency() -> None:
    """One flattening for the fetch decoder and the CLIP evaluator: alpha channels and tRNS colour keys alike."""
    import io

    from PIL import Image

    from opencanvas.fetch.decode import load_rgb
    from opencanvas.pixels import flatten_alpha

    grey = Image.new("L", (4, 4), 30)
    grey.info["transparency"] = 30  # a PNG tRNS key: every pixel of grey 30 is transparent
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    la = Image.new("LA", (4, 4), (0, 128))
    for img in (grey, rgba, la):
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        assert flatten_alpha(img).mode == "RGB"
        assert flatten_alpha(img).getpixel((0, 0)) == load_rgb(buf.getvalue()).getpixel((0, 0))
    assert flatten_alpha(grey).getpixel((0, 0)) == (255, 255, 255)
    assert flatten_alpha(la).getpixel((0, 0)) == (127, 127, 127)
    rgb = Image.new("RGB", (4, 4), (1, 2, 3))
    assert flatten_alpha(rgb) is rgb
def test_accelerate_is_pinned_and_installed() -> None:
    """Without accelerate, diffusers prints a large warning on every model load."""
    import re
    import tomllib
    from importlib.metadata import version
    from pathlib import Path

    from diffusers.utils import is_accelerate_available

    deps = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["dependencies"]
    pinned = [d for d in deps if re.match(r"accelerate==", d)]
    assert pinned and is_accelerate_available()
    assert pinned[0].split("==")[1] == version("accelerate")
