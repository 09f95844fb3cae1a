"""CLIP training on the synthetic shapes workspace: tokenizer, loss, records, loaders, retrieval metrics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from opencanvas.components.clip import build_clip, clip_pixels, contrastive_loss, read_caption_lists, train_clip
from opencanvas.components.images import load_subset_images
from opencanvas.components.loading import load_clip_evaluator, load_text_encoder
from opencanvas.components.metrics import chance_recall_at_k, recall_at_k
from opencanvas.components.presets import CLIP_PRESETS
from opencanvas.components.tokenizer import BOS_ID, EOS_ID, PAD_ID, train_caption_tokenizer
from opencanvas.pixels import to_pil
from tests.factories import make_captions, make_image_subset

FAST = dict(batch_size=16, holdout=0.25)


def test_caption_tokenizer_specials_and_truncation():
    tok = train_caption_tokenizer(["a red circle", "a blue square", "a red square"] * 4, vocab_size=100,
                                  max_length=8, min_frequency=1)
    ids = tok(["A RED circle!", "a red circle " * 10], padding="max_length", truncation=True, max_length=8)
    assert ids["input_ids"][0][0] == BOS_ID and ids["input_ids"][0][5] == EOS_ID and ids["input_ids"][0][6] == PAD_ID
    assert tok.decode(ids["input_ids"][0], skip_special_tokens=True).replace(" ", "") == "aredcircle!"
    assert ids["input_ids"][1][-1] == EOS_ID and sum(ids["attention_mask"][1]) == 8  # truncated, eos kept


def test_recall_counts_duplicate_captions_and_ties():
    sim = np.eye(4)
    assert recall_at_k(sim, (1,)) == {1: 1.0}
    assert recall_at_k(np.ones((4, 4)), (1, 3)) == {1: 0.0, 3: 0.0}  # collapsed model: no credit for ties
    texts = ["red", "red", "blue", "green"]
    relevant = np.array([[a == b for b in texts] for a in texts])
    swapped = np.eye(4)[[1, 0, 2, 3]]  # rows 0 and 1 retrieve each other's (identical) caption
    assert recall_at_k(swapped, (1,)) == {1: 0.5}
    assert recall_at_k(swapped, (1,), relevant) == {1: 1.0}
    assert chance_recall_at_k(np.eye(10, dtype=bool), (1, 5)) == pytest.approx({1: 0.1, 5: 0.5})


def test_tiny_clip_overfits_a_fixed_batch(ws):
    make_image_subset(ws, "shapes", n=12, size=32, shard_size=12)
    make_captions(ws, "shapes")
    captions = read_caption_lists(ws, "metadata", "shapes")
    images = load_subset_images(ws, "shapes", 32)
    spec = dataclasses.replace(CLIP_PRESETS["tiny"], image_size=32, vision_layers=2, text_layers=2)
    tok = train_caption_tokenizer([c for cs in captions.values() for c in cs], min_frequency=1)
    model = build_clip(spec, tok, seed=0).train()
    enc = tok([captions[k][0] for k in images.keys], padding="max_length", truncation=True, max_length=77,
              return_tensors="pt")
    pixels = clip_pixels(images.pixels)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = contrastive_loss(model, enc["input_ids"], enc["attention_mask"], pixels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > 2.0 and np.mean(losses[-3:]) < 0.5 * losses[0], losses
    with torch.no_grad():  # matching pairs now score above non-matching ones
        out = model.eval()(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pixels)
    sim = out.logits_per_image.numpy()
    same = np.array([[a == b for b in enc["input_ids"].tolist()] for a in enc["input_ids"].tolist()])
    assert sim[same].mean() > sim[~same].mean() + 1.0


def test_train_clip_serves_as_text_encoder_and_evaluator(ws):
    make_image_subset(ws, "shapes", n=48, size=64)
    make_captions(ws, "shapes")
    report = train_clip(ws, "shapes", "metadata", "clip", steps=3, **FAST)
    out = ws.clip_dir("clip")
    for name in ("config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json",
                 "report.md", "similarity.png"):
        assert (out / name).exists(), name
    record = json.loads((out / "opencanvas.json").read_text())
    assert record["finished"] and record["captioner"] == "metadata" and record["text_layer"] == "last"
    assert report["images_train"] + report["images_heldout"] == 48 and report["steps"] == 3
    assert 0 <= report["image_to_text_recall@5"] <= 1 and report["chance_recall@1"] > 0

    te = load_text_encoder(ws, "clip")
    assert te.max_length == 77 and te.hidden_size == CLIP_PRESETS["tiny"].text_width
    hidden, mask = te.encode(["a red circle", "a blue square"])
    assert hidden.shape == (2, 77, te.hidden_size) and mask[:, 0].all() and not mask[:, -1].any()
    assert te.provenance["subset"] == "shapes" and te.provenance["origin"] == "workspace"

    ev = load_clip_evaluator(ws, "clip")
    images = load_subset_images(ws, "shapes", 64, max_images=4)
    pil = to_pil(images.pixels.float() / 127.5 - 1)
    feats = ev.image_features(pil)
    # same numbers as the trained model on the same preprocessing: the save/load round trip is exact
    from opencanvas.training.checkpoint import latest_checkpoint, load_checkpoint

    trained = load_checkpoint(latest_checkpoint(out)).model
    for key, value in ev.model.state_dict().items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)
    with torch.no_grad():
        direct = ev.model.get_image_features(pixel_values=clip_pixels(images.pixels)).pooler_output
    np.testing.assert_allclose(feats, torch.nn.functional.normalize(direct, dim=-1).numpy(), atol=1e-5)
    assert ev.clip_score(pil, ["a red circle"] * 4).shape == (4,)


def test_clip_bad_input(ws):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    make_image_subset(ws, "shapes", n=48, size=64)
    with pytest.raises(FileNotFoundError, match="opencanvas caption --subset shapes --captioner metadata"):
        train_clip(ws, "shapes", "metadata", "clip", steps=1)
    result = CliRunner().invoke(app, ["clip", "train", "-w", str(ws.root), "--subset", "shapes",
                                      "--captioner", "blip2", "--name", "clip", "--steps", "1"])
    assert result.exit_code == 2 and "no caption table 'blip2'" in result.output
    make_captions(ws, "shapes", captioner="other")
    with pytest.raises(ValueError, match="unknown CLIP preset"):
        train_clip(ws, "shapes", "other", "clip", preset="huge", steps=1)
