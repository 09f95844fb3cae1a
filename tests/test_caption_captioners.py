"""Unit tests of the caption building blocks: flags, text captioners, preprocessing."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from opencanvas.caption.captioners import (
    CaptionInput,
    CommonCatalogCaptioner,
    GenerationSettings,
    MetadataCaptioner,
    degeneracy,
    metadata_caption,
)
from opencanvas.caption.loader import ImageRecords, center_crop_resize, collate
from opencanvas.fetch.decode import load_rgb


@pytest.mark.parametrize("text, flag", [
    ("", "empty"), ("   ", "empty"), ("...", "empty"),
    ("on on on on on", "repetitive"), ("a a red red red", "repetitive"),
    ("a cat on a mat a cat on a mat a cat on a mat", "repetitive"),
    ("a red circle on a white background", ""), ("a red red bus", ""), ("the cat and the dog", ""),
])
def test_degeneracy_flags(text: str, flag: str) -> None:
    assert degeneracy(text) == flag


def test_metadata_caption_joins_title_description_tags() -> None:
    meta = {"title": "red_apple.svg", "description": "A shiny  red apple\non a table.",
            "tags": ["fruit", "apple", "food", "fruit"]}
    # title cleaned, whitespace collapsed, tags already in the title and repeats dropped
    assert metadata_caption(meta) == "red apple. A shiny red apple on a table. fruit, food"
    assert metadata_caption({"title": "Tree", "description": "tree", "tags": []}) == "Tree"
    long = metadata_caption({"title": "x", "description": "word " * 200}, max_chars=50)
    assert len(long) < 60 and long.endswith("…")


def test_metadata_captioner_flags_empty_metadata() -> None:
    out = MetadataCaptioner().caption([CaptionInput("a", {"title": "a blue square"}),
                                       CaptionInput("b", {"title": "", "description": None, "tags": None})])
    assert out == [("a blue square", ""), ("", "empty")]


def test_title_and_title_tags_captioners_keep_only_their_fields() -> None:
    meta = {"title": "red_apple.svg", "description": "A shiny red apple.", "tags": ["fruit", "apple", "food"]}
    assert MetadataCaptioner("title").caption([CaptionInput("a", meta)]) == [("red apple", "")]
    assert MetadataCaptioner("title-tags").caption([CaptionInput("a", meta)]) == [("red apple. fruit, food", "")]
    assert MetadataCaptioner("title-tags").provenance.generation == json.dumps({"fields": ["title", "tags"]})


def test_commoncatalog_captioner_reads_shipped_caption_or_flags_missing() -> None:
    items = [CaptionInput("a", {"extra": json.dumps({"blip2_caption": " a dog on grass "})}),
             CaptionInput("b", {"extra": {"blip2_caption": "a cat"}}),
             CaptionInput("c", {"extra": "{}"}), CaptionInput("d", {"extra": "not json"})]
    assert CommonCatalogCaptioner().caption(items) == [("a dog on grass", ""), ("a cat", ""),
                                                       ("", "missing"), ("", "missing")]


def test_generation_settings_json_and_kwargs() -> None:
    greedy = GenerationSettings()
    assert "temperature" not in greedy.generate_kwargs()
    sampled = GenerationSettings(do_sample=True, temperature=0.7, seed=3)
    assert sampled.generate_kwargs()["temperature"] == 0.7
    assert json.loads(sampled.to_json())["seed"] == 3


def test_center_crop_resize_takes_the_middle_square() -> None:
    img = Image.new("RGB", (300, 100), (255, 0, 0))
    img.paste((0, 0, 255), (100, 0, 200, 100))  # blue middle third
    out = center_crop_resize(img, 64)
    assert out.size == (64, 64)
    assert out.getpixel((32, 32)) == (0, 0, 255) and out.getpixel((1, 1))[2] > 200
    assert center_crop_resize(img, 0).size == (300, 100)


def test_decode_puts_transparency_on_white_and_collate_keeps_failures() -> None:
    rgba = Image.new("RGBA", (20, 20), (0, 0, 0, 0))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    assert load_rgb(buf.getvalue()).getpixel((5, 5)) == (255, 255, 255)
    records = ImageRecords([buf.getvalue(), b"not an image"], crop_size=16)
    batch = collate([records[0], records[1]])
    assert batch.indices == [0] and batch.failed[0][0] == 1 and batch.failed[0][1].startswith("unreadable")
    assert batch.pixels[0].size == (16, 16)
