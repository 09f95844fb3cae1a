"""`train --caption-mix`: a weighted, deterministic caption draw that resumes bit-identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from opencanvas.cli import app
from opencanvas.encode import LatentLoader, open_latents
from opencanvas.encode.loader import caption_slots
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.train import loop
from opencanvas.train.config import caption_mix_text, parse_caption_mix
from tests.factories import kill_train_and_resume
from tests.test_train_pipeline import trained  # noqa: F401  (the tiny trained run, a module fixture)

CAPTIONERS = ("metadata", "blip2")
MIX = {"metadata": 0.05, "blip2": 0.95}


@pytest.fixture
def lat(ws):
    write_random_latents(ws, "lat", 24, resolution=64, text_len=8, text_dim=32, captioners=CAPTIONERS,
                         shard_size=8, missing_every=3)
    return ws


def test_parse_caption_mix_reads_weights_and_rejects_bad_parts() -> None:
    assert parse_caption_mix("metadata=0.05, blip2=0.95") == MIX
    assert parse_caption_mix("blip2=3,metadata=1") == {"blip2": 3.0, "metadata": 1.0}
    for bad in ["", "blip2", "blip2=x", "=1", "blip2=-1", "blip2=nan", "blip2=inf"]:
        with pytest.raises(ValueError, match="caption-mix"):
            parse_caption_mix(bad)
    with pytest.raises(ValueError, match="twice"):
        parse_caption_mix("blip2=1,blip2=2")
    assert caption_mix_text(MIX) == "blip2 95%, metadata 5%"


def test_weighted_draw_follows_the_mix_and_is_deterministic_per_seed_and_epoch() -> None:
    available = np.ones((20000, 3), bool)
    available[::4, 1] = False           # only captioners 0 and 2
    available[7, :2] = False            # only captioner 2, which has weight 0 -> the empty prompt
    idx = np.arange(len(available))
    weights = np.array([0.05, 0.95, 0.0])
    slots = caption_slots(available, seed=3, epoch=0, indices=idx, weights=weights)
    assert np.array_equal(slots, caption_slots(available, seed=3, epoch=0, indices=idx, weights=weights))
    assert not (slots == 2).any(), "a captioner with weight 0 is never drawn"
    assert slots[7] == -1
    both = available[:, :2].all(axis=1)
    assert 0.04 < (slots[both] == 0).mean() < 0.06  # 5% metadata where both are there
    assert (slots[~available[:, 1] & available[:, 0]] == 0).all()  # renormalised: metadata alone gets 100%
    other = caption_slots(available, seed=3, epoch=1, indices=idx, weights=weights)
    reseeded = caption_slots(available, seed=4, epoch=0, indices=idx, weights=weights)
    assert (other != slots).any() and (reseeded != slots).any()


def test_loader_with_a_one_captioner_mix_yields_only_that_captioners_text(lat) -> None:
    latents = open_latents(lat, "lat")
    only_blip2 = LatentLoader(latents, batch_size=4, seed=0, caption_weights=np.array([0.0, 1.0]))
    has_blip2 = latents.available_captions()[:, 1]
    keys = latents.keys()
    for batch in only_blip2:
        for b, key in enumerate(batch["keys"]):
            i = keys.index(key)
            want = latents.gather(np.array([i]), np.array([1 if has_blip2[i] else -1]))["text"][0]
            assert np.array_equal(batch["text"][b].numpy(), want)
    with pytest.raises(ValueError, match="one weight per captioner"):
        LatentLoader(latents, batch_size=4, seed=0, caption_weights=np.array([1.0]))


@pytest.mark.parametrize("mix, message", [
    ({"metadata": 1.0, "llava": 1.0}, "'llava' that the latent set does not have"),
    ({"metadata": 0.0, "blip2": 0.0}, "at least one positive weight"),
])
def test_bad_mix_errors_before_any_work(lat, mix, message) -> None:
    with pytest.raises(ValueError, match=message):
        loop.train(lat, "lat", "tiny", "bad", images=8, batch=8, caption_mix=mix)
    assert not (lat.run_dir("bad") / "config.json").exists()


def test_cli_errors_in_one_line(lat) -> None:
    for mix in ["metadata=0.05,llava=0.95", "metadata=zero"]:
        result = CliRunner().invoke(app, ["train", "--latents", "lat", "--run", "bad", "--images", "8",
                                          "--caption-mix", mix, "-w", str(lat.root)])
        assert result.exit_code != 0
        assert "caption-mix" in result.output and "Traceback" not in result.output
    assert not (lat.run_dir("bad") / "config.json").exists()


def test_mix_is_recorded_and_cannot_change_on_resume(lat) -> None:
    loop.train(lat, "lat", "tiny", "mixed", images=8, batch=8, caption_mix=MIX, checkpoint_every=0)
    assert json.loads((lat.run_dir("mixed") / "config.json").read_text())["caption_mix"] == MIX
    with pytest.raises(ValueError, match="caption_mix"):
        loop.train(lat, "lat", "tiny", "mixed", images=16, batch=8, caption_mix={"blip2": 1.0})


def _model_card_with(ws, **changes) -> str:
    """MODEL_CARD.md of the cards golden run, with `changes` applied to its stored config."""
    from opencanvas.cards.writer import write_cards
    from tests.factories import make_captions, make_image_subset
    from tests.test_cards_golden import _relicense, _run

    make_image_subset(ws, "shapes", n=40, size=16, shard_size=20)
    make_captions(ws, "shapes", "metadata")
    _relicense(ws)
    _run(ws)
    config_path = ws.run_dir("r1") / "config.json"
    config = json.loads(config_path.read_text())
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key].update(value)
        else:
            config[key] = value
    config_path.write_text(json.dumps(config))
    return (write_cards(ws, "r1") / "MODEL_CARD.md").read_text()


def test_model_card_has_a_caption_mix_line(ws) -> None:
    model = _model_card_with(ws, caption_mix=MIX)
    assert "| caption mix | blip2 95%, metadata 5% |" in model


@pytest.mark.slow
def test_sigkill_and_resume_with_a_mix_is_bit_identical(lat) -> None:
    args = dict(images=64, batch=8, checkpoint_every=16, keep=2, caption_mix=MIX)
    resumed, full, _ = kill_train_and_resume(lat, "lat", ["--caption-mix", "metadata=0.05,blip2=0.95"], args, 32)
    uniform = loop.train(lat, "lat", "tiny", "uniform", **{**args, "caption_mix": None})
    assert resumed["weights_sha256"] == full["weights_sha256"]
    assert uniform["weights_sha256"] != full["weights_sha256"], "the mix changed nothing"


def test_export_readme_states_the_mix(trained) -> None:  # noqa: F811
    from opencanvas.model_license import model_license
    from opencanvas.train.pipeline import load_pipeline
    from opencanvas.train.to_diffusers import model_card

    ws, _ = trained
    pipe = load_pipeline(ws, "demo")
    lic = model_license({"cc0"}, "commercial")
    assert "(drawn" not in model_card(ws, "demo", pipe, "-", {}, lic, has_cards=False)
    pipe.config["caption_mix"] = {"metadata": 1.0}  # as a run trained with --caption-mix metadata=1 records it
    assert "- Captions from: metadata (drawn metadata 100%)." in model_card(ws, "demo", pipe, "-", {}, lic,
                                                                             has_cards=False)


def test_model_card_names_the_conditioning(ws) -> None:
    """Multi-caption, two encoders and class labels each get a row in the card's training table (issue 14)."""
    model = _model_card_with(ws, conditioning="multi-caption", max_captions=2, slot_dropout=0.2,
                             class_column="extra.category", class_names=["animals", "food", "people"],
                             text_encoders=0, data={"text_encoders": ["clip-a", "clip-b"]})
    assert "| conditioning | multi-caption: up to 2 captions per image at once, each dropped with p=0.2 |" in model
    assert "| text encoders | two, concatenated along the feature axis" in model
    assert "| class labels | catalog column extra.category, 3 classes" in model
