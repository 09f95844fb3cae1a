"""encode with two text encoders and CLIP image embeddings (issue 14), on tiny random-weight models."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from opencanvas.encode import LatentLoader, encode, open_latents
from opencanvas.shards import iter_shard
from opencanvas.workspace import Workspace
from tests.factories import kill_when
from tests.test_encode_stage import make_encode_workspace, write_tiny_models

TEXT2_DIM, TEXT2_LEN = 24, 12  # the second encoder differs from the first (32 wide, 16 long) in both


def write_second_text_encoder(path: Path) -> Path:
    """A second tiny CLIP text tower (another width and length) with the shared word tokenizer."""
    from transformers import CLIPTextConfig, CLIPTextModel

    from opencanvas.sample.tiny import WORDS, tiny_tokenizer

    torch.manual_seed(7)
    config = CLIPTextConfig(vocab_size=len(WORDS) + 4, hidden_size=TEXT2_DIM, intermediate_size=48,
                            num_hidden_layers=1, num_attention_heads=4, max_position_embeddings=TEXT2_LEN,
                            bos_token_id=1, eos_token_id=2, pad_token_id=0)
    CLIPTextModel(config).eval().save_pretrained(path / "text_encoder")
    tiny_tokenizer().save_pretrained(path / "tokenizer")
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    from opencanvas.sample.tiny import write_tiny_clip

    root = tmp_path_factory.mktemp("models")
    return {"first": write_tiny_models(root / "first"), "second": write_second_text_encoder(root / "second"),
            "clip": write_tiny_clip(root / "clip", seed=3)}


@pytest.fixture(scope="module")
def encoded(tmp_path_factory, models):
    ws = make_encode_workspace(tmp_path_factory.mktemp("enc") / "ws", n=12, shard_size=4)
    summary = encode(ws, "shapes", str(models["first"]), [str(models["first"]), str(models["second"])],
                     ["metadata", "second"], "both", resolutions=(32,), image_embeddings=str(models["clip"]))
    return ws, summary


def test_two_encoders_and_image_embeddings_are_stored_and_recorded(encoded, models):
    from opencanvas.components.loading import load_clip_evaluator, load_text_encoder
    from opencanvas.fetch.decode import load_rgb

    ws, summary = encoded
    lat = open_latents(ws, "both", 32)
    assert lat.meta["text_encoders"] == [str(models["first"]), str(models["second"])]
    assert lat.meta["pooled_dims"] == [32, TEXT2_DIM] and lat.meta["image_dim"] == 16
    assert lat.meta["image_embeddings"] == str(models["clip"]) and summary["images_embedded"] == 12
    te1, te2 = load_text_encoder(ws, str(models["first"])), load_text_encoder(ws, str(models["second"]))
    clip = load_clip_evaluator(ws, str(models["clip"]))
    images = {im.key: im for tar in ws.images_dir("shapes").glob("shard-*.tar") for im in iter_shard(tar)}
    for i in (0, len(lat) - 1):
        rec = lat.get(i)
        _, _, pooled1 = te1.encode_pooled([rec.captions[0]])
        hidden2, mask2, pooled2 = te2.encode_pooled([rec.captions[0]])
        assert rec.extra["text2"].shape == (2, TEXT2_LEN, TEXT2_DIM)
        np.testing.assert_allclose(rec.extra["text2"][0].astype(np.float32), hidden2[0].numpy(), atol=2e-3)
        assert np.array_equal(rec.extra["mask2"][0], mask2[0].numpy())
        np.testing.assert_allclose(rec.extra["pooled"][0].astype(np.float32), pooled1[0].numpy(), atol=2e-3)
        np.testing.assert_allclose(rec.extra["pooled2"][0].astype(np.float32), pooled2[0].numpy(), atol=2e-3)
        # The image embedding is CLIP's view of the same decoded pixels (not of the 32 px latent crop).
        want = clip.image_features([load_rgb(images[rec.key].data)])[0]
        np.testing.assert_allclose(rec.image.astype(np.float32), want, atol=2e-3)
    null = lat.null_conditioning()
    hidden2, mask2, pooled2 = te2.encode_pooled([""])
    np.testing.assert_allclose(null["text2"].astype(np.float32), hidden2[0].numpy(), atol=2e-3)
    np.testing.assert_allclose(null["pooled2"].astype(np.float32), pooled2[0].numpy(), atol=2e-3)


def test_gather_returns_the_new_arrays_with_the_empty_prompt_for_dropped_captions(encoded):
    ws, _ = encoded
    lat = open_latents(ws, "both", 32)
    indices = np.array([3, 0, 5])  # out of order: the batch comes back in the caller's order
    batch = lat.gather(indices, np.array([1, -1, 0]))
    assert batch["text2"].shape == (3, TEXT2_LEN, TEXT2_DIM) and batch["mask2"].shape == (3, TEXT2_LEN)
    assert batch["pooled"].shape == (3, 32) and batch["pooled2"].shape == (3, TEXT2_DIM)
    assert batch["image"].shape == (3, 16)
    recs = [lat.get(int(i)) for i in indices]
    assert np.array_equal(batch["text2"][0], recs[0].extra["text2"][1])
    assert np.array_equal(batch["pooled"][2], recs[2].extra["pooled"][0])
    null = lat.null_conditioning()
    for name in ("text", "mask", "text2", "mask2", "pooled", "pooled2"):
        assert np.array_equal(batch[name][1], null[name]), name
    # The image embedding does not depend on the caption drawn (its dropout is the trainer's).
    assert np.array_equal(batch["image"], np.stack([r.image for r in recs]))
    assert np.abs(np.linalg.norm(batch["image"].astype(np.float32), axis=1) - 1).max() < 1e-2
    loaded = next(iter(LatentLoader(lat, batch_size=4, seed=0, workers=1)))
    assert {"text2", "mask2", "pooled", "pooled2", "image"} <= set(loaded)
    assert isinstance(loaded["image"], torch.Tensor) and loaded["pooled2"].shape == (4, TEXT2_DIM)


def test_a_set_written_before_these_fields_still_opens_and_resumes(tmp_path, models):
    ws = make_encode_workspace(tmp_path / "ws", n=8, shard_size=4)
    first = str(models["first"])
    encode(ws, "shapes", first, first, ["metadata"], "old", resolutions=(32,))
    meta_path = ws.latents_dir("old") / "meta.json"
    meta = json.loads(meta_path.read_text())
    for key in ("text_encoders", "image_embeddings"):  # what a set from before issue 14 lacks
        meta.pop(key)
    meta_path.write_text(json.dumps(meta))
    lat = open_latents(ws, "old", 32)
    rec = lat.get(0)
    assert rec.extra == {} and rec.image is None
    assert set(lat.gather(np.array([0, 1]), np.array([0, 0]))) == {"mean", "std", "text", "mask", "keys"}
    again = encode(ws, "shapes", first, [first], ["metadata"], "old", resolutions=(32,))
    assert again["shards_already_done"] == 2
    with pytest.raises(ValueError, match="other settings.*text_encoders"):
        encode(ws, "shapes", first, [first, str(models["second"])], ["metadata"], "old", resolutions=(32,))
    with pytest.raises(ValueError, match="other settings.*image_embeddings"):
        encode(ws, "shapes", first, first, ["metadata"], "old", resolutions=(32,),
               image_embeddings=str(models["clip"]))


def test_cli_refuses_three_text_encoders_before_any_work(tmp_path):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    ws = make_encode_workspace(tmp_path / "ws", n=4, shard_size=4)
    out = CliRunner().invoke(app, ["encode", "-w", str(ws.root), "--subset", "shapes", "--autoencoder", "x",
                                   "--text-encoder", "a", "--text-encoder", "b", "--text-encoder", "c",
                                   "--captioners", "metadata", "--name", "lat"])
    assert out.exit_code != 0 and "one or two distinct encoders" in out.output
    assert not ws.latents_dir("lat").exists()


def _stored(ws: Workspace, name: str) -> dict[str, dict[str, np.ndarray]]:
    lat = open_latents(ws, name, 32)
    out = {}
    for i in range(len(lat)):
        rec = lat.get(i)
        out[rec.key] = {"mean": rec.mean, "image": rec.image, **rec.extra}
    return out


def test_sigkill_and_resume_stores_each_image_once(tmp_path, models):
    ws = make_encode_workspace(tmp_path / "ws", n=16, shard_size=4)  # 4 shards
    args = ["encode", "-w", str(ws.root), "--subset", "shapes", "--autoencoder", str(models["first"]),
            "--text-encoder", str(models["first"]), "--text-encoder", str(models["second"]),
            "--image-embeddings", str(models["clip"]), "--captioners", "metadata,second", "--name", "lat",
            "--resolution", "32", "--batch-size", "2", "--decode-workers", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENCANVAS_PROGRESS": "0"}
    image_dir = ws.latents_dir("lat") / "image"
    kill_when([sys.executable, "-m", "opencanvas", *args], env, lambda: any(image_dir.glob("shard-*/done.json")),
              poll=0.002)
    latents_done = len(list((ws.latents_dir("lat") / "res-32").glob("shard-*/done.json")))
    assert latents_done < 4, "the kill should land mid-run"

    from typer.testing import CliRunner

    from opencanvas.cli import app

    resumed = CliRunner().invoke(app, args)
    assert resumed.exit_code == 0, resumed.output
    reference = Workspace.open(tmp_path / "ws")
    encode(reference, "shapes", str(models["first"]), [str(models["first"]), str(models["second"])],
           ["metadata", "second"], "ref", resolutions=(32,), batch_size=2, image_embeddings=str(models["clip"]))
    got, want = _stored(ws, "lat"), _stored(reference, "ref")
    assert len(open_latents(ws, "lat", 32)) == len(got) == len(want)  # exactly once
    assert got.keys() == want.keys()
    for key in want:
        for name, array in want[key].items():
            np.testing.assert_allclose(got[key][name].astype(np.float32), array.astype(np.float32), atol=2e-3,
                                       err_msg=f"{key} {name}")
