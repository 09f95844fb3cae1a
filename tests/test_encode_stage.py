"""The encode stage on tiny random-weight models (real AutoencoderKL, CLIPTextModel, tokenizer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from opencanvas.encode import encode, open_latents
from opencanvas.shards import INDEX_SCHEMA, index_paths, iter_shard
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

# Original sizes the index claims (the stored pixels stay 64x64): key number % 4 ->
SMALL, WIDE = 1, 2          # 48x48 (too small for 64 px), 160x64 (wide: its own aspect bucket)


def write_tiny_models(path: Path) -> Path:
    """An SD2-layout folder (vae/, text_encoder/, tokenizer/) of tiny random models."""
    from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_vae

    tiny_vae().save_pretrained(path / "vae")
    tiny_text_model().save_pretrained(path / "text_encoder")
    tiny_tokenizer().save_pretrained(path / "tokenizer")
    return path


def make_encode_workspace(root: Path, n: int = 24, shard_size: int = 8) -> Workspace:
    """Shapes subset with varied original sizes, one failed row per shard, and a second captioner."""
    ws = Workspace.open(root)
    make_image_subset(ws, "shapes", n=n, size=64, shard_size=shard_size)
    make_captions(ws, "shapes", "metadata")
    make_captions(ws, "shapes", "second")
    for idx in index_paths(ws.images_dir("shapes")):
        rows = pq.read_table(idx).to_pylist()
        for r in rows:
            kind = int(r["key"].split(":")[1]) % 4
            if kind == SMALL:
                r["original_width"] = r["original_height"] = 48
            elif kind == WIDE:
                r["original_width"], r["original_height"] = 160, 64
        failed = {**rows[0], "key": f"synthetic:failed-{idx.stem}", "status": "failed", "reason": "http-404"}
        atomic_write_parquet(idx, pa.Table.from_pylist([*rows, failed], schema=INDEX_SCHEMA))
    part = next(ws.captions_dir("second").glob("part-*.parquet"))
    table = pq.read_table(part)
    # The second captioner flags its first caption: that slot must be left empty.
    flagged = pa.array(["empty"] + [""] * (len(table) - 1))
    atomic_write_parquet(part, table.set_column(table.schema.get_field_index("flagged"), "flagged", flagged))
    return ws


@pytest.fixture(scope="module")
def encoded(tmp_path_factory):
    root = tmp_path_factory.mktemp("encode")
    ws = make_encode_workspace(root / "ws")
    models = write_tiny_models(root / "models")
    summary = encode(ws, "shapes", str(models), str(models), ["metadata", "second"], "lat", resolutions=(32, 64))
    return ws, models, summary


def ok_keys(ws: Workspace) -> list[str]:
    return [r["key"] for idx in index_paths(ws.images_dir("shapes"))
            for r in pq.read_table(idx).to_pylist() if r["status"] == "ok"]


def test_every_ok_image_once_per_qualifying_resolution(encoded):
    ws, _, summary = encoded
    keys = ok_keys(ws)
    at32, at64 = open_latents(ws, "lat", 32), open_latents(ws, "lat", 64)
    assert sorted(at32.keys()) == sorted(keys)  # all ok images, no failed ones, no duplicates
    expected64 = sorted(k for k in keys if int(k.split(":")[1]) % 4 != SMALL)
    assert sorted(at64.keys()) == expected64 and len(set(at64.keys())) == len(expected64)
    assert summary["latents_encoded"] == {"32": 24, "64": 18}
    assert at32.meta["latent_size"] == 16 and at64.meta["latent_size"] == 32
    assert at64.meta["policy"] == "commercial" and at64.meta["captioners"] == ["metadata", "second"]
    with pytest.raises(ValueError, match="pass resolution"):
        open_latents(ws, "lat")


def test_latents_and_text_round_trip(encoded):
    from opencanvas.components.loading import load_autoencoder, load_text_encoder
    from opencanvas.fetch.decode import load_rgb
    from opencanvas.pixels import center_crop_resize, to_uint8_chw

    ws, models, _ = encoded
    ae, te = load_autoencoder(ws, str(models)), load_text_encoder(ws, str(models))
    lat = open_latents(ws, "lat", 32)
    images = {im.key: im for tar in ws.images_dir("shapes").glob("shard-*.tar") for im in iter_shard(tar)}
    for i in (0, 5, len(lat) - 1):
        rec = lat.get(i)
        pixels = torch.from_numpy(to_uint8_chw(center_crop_resize(load_rgb(images[rec.key].data), 32)))
        mean, std = ae.encode(pixels[None].float() / 127.5 - 1)  # (1, 4, 16, 16)
        np.testing.assert_allclose(rec.mean.astype(np.float32), mean[0].numpy(), rtol=2e-3, atol=2e-3)
        np.testing.assert_allclose(rec.std.astype(np.float32), std[0].numpy(), rtol=2e-3, atol=2e-3)
        hidden, mask = te.encode([rec.captions[0]])
        np.testing.assert_allclose(rec.text[0].astype(np.float32), hidden[0].numpy(), rtol=2e-3, atol=2e-3)
        assert np.array_equal(rec.mask[0], mask[0].numpy())
    null_text, null_mask = lat.null_text()
    hidden, mask = te.encode([""])
    np.testing.assert_allclose(null_text.astype(np.float32), hidden[0].numpy(), rtol=2e-3, atol=2e-3)


def test_flagged_caption_is_left_empty(encoded):
    ws, _, summary = encoded
    lat = open_latents(ws, "lat", 32)
    records = [lat.get(i) for i in range(len(lat))]
    empty = [r for r in records if r.captions[1] == ""]
    assert len(empty) == 1 and not empty[0].mask[1].any() and empty[0].captions[0]
    assert summary["missing_captions"] == {"metadata": 0, "second": 1}


def test_rerun_skips_and_changed_settings_fail(encoded):
    ws, models, _ = encoded
    again = encode(ws, "shapes", str(models), str(models), ["metadata", "second"], "lat", resolutions=(32, 64))
    assert again["shards_encoded"] == 0 and again["shards_already_done"] == 3
    with pytest.raises(ValueError, match="other settings.*captioners"):
        encode(ws, "shapes", str(models), str(models), ["metadata"], "lat", resolutions=(32, 64))


def test_buckets_keep_aspect_ratio(encoded, tmp_path):
    ws, models, _ = encoded
    encode(ws, "shapes", str(models), str(models), ["metadata"], "bk", resolutions=(64,), buckets=True)
    lat = open_latents(ws, "bk", 64)
    # 48x48 originals are too small; 160x64 ones go to the 48x80 bucket (latent 24x40), the rest 64x64.
    assert lat.meta["bucket_counts"] == {"48x80": 6, "64x64": 12}
    wide = [lat.get(i) for i in range(len(lat)) if int(lat.key(i).split(":")[1]) % 4 == WIDE]
    assert {r.mean.shape for r in wide} == {(4, 24, 40)}


def test_ranks_encode_disjoint_shards_that_cover_the_subset(encoded):
    ws, models, _ = encoded
    shards = []
    for rank in (0, 1):
        out = encode(ws, "shapes", str(models), str(models), ["metadata"], "ranked", resolutions=(32,),
                     rank=rank, world=2)
        shards.append(out["shards_encoded"])
    assert shards == [2, 1]  # 3 shards: ranks take shard 0, 2 and shard 1
    lat = open_latents(ws, "ranked", 32)
    assert sorted(lat.keys()) == sorted(ok_keys(ws)) and len(set(lat.keys())) == len(lat)


def test_missing_captions_fail_before_any_work(ws, tmp_path):
    make_image_subset(ws, "shapes", n=4, shard_size=4)
    with pytest.raises(FileNotFoundError, match="opencanvas caption --subset shapes --captioner metadata"):
        encode(ws, "shapes", "unused", "unused", ["metadata"], "lat")
    assert not ws.latents_dir("lat").exists()


def _stored(ws: Workspace, name: str, res: int) -> dict[str, np.ndarray]:
    lat = open_latents(ws, name, res)
    return {lat.key(i): lat.get(i).mean for i in range(len(lat))}


@pytest.mark.slow
def test_sigkill_and_resume_encodes_each_image_once(tmp_path):
    ws = make_encode_workspace(tmp_path / "ws", n=48, shard_size=4)  # 12 shards
    models = write_tiny_models(tmp_path / "models")
    args = ["encode", "-w", str(ws.root), "--subset", "shapes", "--autoencoder", str(models),
            "--text-encoder", str(models), "--captioners", "metadata", "--name", "lat", "--resolution", "32,64",
            "--batch-size", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "opencanvas", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    res_dir = ws.latents_dir("lat") / "res-64"
    deadline = time.time() + 120
    while not any(res_dir.glob("shard-*/done.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_at_kill = len(list(res_dir.glob("shard-*/done.json")))
    assert 1 <= done_at_kill < 12, f"the kill should land mid-run ({done_at_kill} parts done)"

    # The same command again (in-process, to spare a second interpreter start).
    from typer.testing import CliRunner

    from opencanvas.cli import app

    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    reference = Workspace.open(tmp_path / "ws")
    encode(reference, "shapes", str(models), str(models), ["metadata"], "ref", resolutions=(32, 64), batch_size=2)
    for res in (32, 64):
        got, want = _stored(ws, "lat", res), _stored(reference, "ref", res)
        lat = open_latents(ws, "lat", res)
        assert len(lat) == len(set(lat.keys())) == len(want)  # exactly once
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_allclose(got[key].astype(np.float32), want[key].astype(np.float32), atol=2e-3)


def test_cli_says_what_to_do(ws):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    make_image_subset(ws, "shapes", n=4, shard_size=4)
    args = ["encode", "-w", str(ws.root), "--subset", "shapes", "--autoencoder", "x", "--text-encoder", "x",
            "--captioners", "metadata", "--name", "lat"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "opencanvas caption" in result.output
    result = CliRunner().invoke(app, [*args, "--resolution", "256,abc"])
    assert result.exit_code == 2 and "comma-separated integers" in result.output
