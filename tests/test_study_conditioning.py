"""The study tool's conditioning axis (issue 14): one caption, multi-caption, two text encoders, text+image and
text+class as cells of one study at equal compute, read from one latent set that holds what every cell needs.

Offline and tiny: 32 shape images, a random AutoencoderKL, two random tiny CLIPs, captions `metadata` and
`title-tags` (the factory writes the title for both; what matters here is that each mode reads its share).
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from opencanvas.study.cells import study_cells
from opencanvas.study.runner import run_study
from opencanvas.study.spec import StudyError, check_workspace, conditioning_options, parse_study
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

STUDY = """\
[study]
name = "cond"
subset = "c"
captioner = "metadata"
extra_captioners = ["title-tags"]
resolution = 64
autoencoder = "ae"
text_encoder = "clip"
text_encoder2 = "clip2"
class_column = "license_id"

[axes]
conditioning = ["caption", "multi-caption", "two-encoders", "text+image", "text+class"]

[train]
images = 16
batch = 8

[eval]
n = 2
steps = 2
guidance = [3.0]
metrics = ["clip", "memorization"]
bootstrap = 20
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    import torch
    from diffusers import AutoencoderKL

    from opencanvas.sample.tiny import write_tiny_clip

    ws = Workspace.open(tmp_path_factory.mktemp("cond") / "ws")
    make_image_subset(ws, "c", n=32, size=64, shard_size=32)
    make_captions(ws, "c", "metadata")
    make_captions(ws, "c", "title-tags")
    torch.manual_seed(0)
    AutoencoderKL(block_out_channels=(8, 8, 8, 16), down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8,
                  layers_per_block=1, sample_size=64).save_pretrained(ws.autoencoder_dir("ae"))
    write_tiny_clip(ws.clip_dir("clip"))
    write_tiny_clip(ws.clip_dir("clip2"), seed=3)
    return ws


def test_each_mode_reads_its_share_of_one_latent_set() -> None:
    spec = parse_study(STUDY, "cond.toml")
    cells = study_cells(spec)
    assert [c.conditioning for c in cells] == ["caption", "multi-caption", "two-encoders", "text+image", "text+class"]
    assert len({c.run_name(spec) for c in cells}) == 5
    options = [conditioning_options(spec, c.conditioning) for c in cells]
    assert options[0] == {"caption_mix": {"metadata": 1.0}, "text_encoders": 1}
    assert options[1] == {"conditioning": "multi-caption", "text_encoders": 1}
    assert options[2]["text_encoders"] == 2 and "conditioning" not in options[2]
    assert options[3]["conditioning"] == "text+image" and options[4]["class_column"] == "license_id"
    # Without the axis nothing changes: no options, and the latent set keeps its old name.
    plain = parse_study(STUDY.replace('conditioning = ["caption", "multi-caption", "two-encoders", "text+image", '
                                      '"text+class"]', 'seed = [0]'), "plain.toml")
    assert conditioning_options(plain, None) == {} and study_cells(plain)[0].conditioning is None
    from opencanvas.study.shared import latents_name

    assert latents_name(plain, "metadata") != latents_name(spec, "metadata")


@pytest.mark.parametrize(("edit", "message"), [
    (('"text+class"]', '"text+sound"]'), "[axes] conditioning = 'text+sound': allowed are caption, multi-caption"),
    (('extra_captioners = ["title-tags"]\n', ''), "'multi-caption' needs [study] extra_captioners"),
    (('text_encoder2 = "clip2"\n', ''), "'two-encoders' needs [study] text_encoder2"),
    (('batch = 8', 'batch = 8\nconditioning = "text+image"'), "[train] conditioning is set per cell by [axes]"),
    (('[axes]', '[axes]\ncaptioner = ["metadata", "title"]'), "conditioning and captioner cannot both vary"),
    (('extra_captioners = ["title-tags"]', 'extra_captioners = ["metadata"]'), "must be distinct captioner names"),
])
def test_bad_conditioning_studies_fail_in_one_line(edit: tuple[str, str], message: str) -> None:
    text = STUDY.replace(*edit)
    assert text != STUDY
    with pytest.raises(StudyError) as err:
        parse_study(text, "bad.toml")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(("edit", "message"), [
    (('text_encoder2 = "clip2"', 'text_encoder2 = "clip3"'), "[study] text_encoder2 = 'clip3' does not exist"),
    (('class_column = "license_id"', 'class_column = "colour"'), "[study] class_column: unknown --class-column"),
    (('["title-tags"]', '["no-such-captions"]'), "captioner 'no-such-captions' is unknown"),
])
def test_conditioning_names_are_checked_against_the_workspace(ws: Workspace, edit: tuple[str, str],
                                                              message: str) -> None:
    with pytest.raises(StudyError) as err:
        check_workspace(ws, parse_study(STUDY.replace(*edit), "bad.toml"))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_a_tiny_conditioning_study_runs_every_mode_at_equal_compute(ws: Workspace) -> None:
    spec = parse_study(STUDY, "cond.toml")
    out = run_study(ws, spec)
    assert {r["status"] for r in out["cells"].values()} == {"ok"}, [r["reason"] for r in out["cells"].values()]
    root = ws.root / "studies" / "cond"
    rows = pq.read_table(root / "results.parquet").to_pylist()
    assert [r["conditioning"] for r in rows] == ["caption", "multi-caption", "two-encoders", "text+image", "text+class"]
    assert {r["train_images"] for r in rows} == {16} and len({r["latents"] for r in rows}) == 1
    assert all(r["memorization_lo"] <= r["memorization"] <= r["memorization_hi"] for r in rows)
    configs = [json.loads((ws.run_dir(r["run"]) / "config.json").read_text()) for r in rows]
    assert [c["conditioning"] for c in configs] == ["text", "multi-caption", "text", "text+image", "text"]
    assert [c["text_encoders"] for c in configs] == [1, 1, 2, 1, 1]
    assert configs[4]["class_column"] == "license_id" and configs[4]["class_names"] == ["cc0"]
    assert configs[0]["caption_mix"] == {"metadata": 1.0} and configs[1]["caption_mix"] is None
    assert (root / "conditioning.png").read_bytes()[:4] == b"\x89PNG"
    assert "Conditioning side by side" in (root / "REPORT.md").read_text()
