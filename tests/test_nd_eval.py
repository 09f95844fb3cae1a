"""The nd-eval policy: ND images selected for captioning and evaluation; every training stage refuses them."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.subset import make_subset
from opencanvas.licenses import POLICIES, DerivativesForbidden
from opencanvas.storage import atomic_write_json
from opencanvas.workspace import Workspace
from tests.test_catalog_gpic import gpic_json, jpeg, write_tar

ND = {"CC BY-ND 2.0": "https://creativecommons.org/licenses/by-nd/2.0/",
      "CC BY-NC-ND 2.0": "https://creativecommons.org/licenses/by-nc-nd/2.0/",
      "CC BY 2.0": "https://creativecommons.org/licenses/by/2.0/",
      "CC BY-NC 2.0": "https://creativecommons.org/licenses/by-nc/2.0/"}


@pytest.fixture
def ws(tmp_path) -> Workspace:
    """A GPIC catalog with one image per license above; an nd-eval subset, fetched."""
    from opencanvas.fetch.stage import fetch

    ws = Workspace.open(tmp_path / "ws")
    members = []
    for i, (name, url) in enumerate(ND.items()):
        members += [(f"k{i}.json", gpic_json(f"k{i}", license=name, license_url=url)), (f"k{i}.jpg", jpeg(seed=i))]
    ingest(ws, "gpic", [write_tar(tmp_path / "g.tar", members)])
    make_subset(ws, "nd-eval", "nd")
    fetch(ws, "nd", min_side=16, max_side=0)
    return ws


def subset_keys(ws: Workspace, name: str) -> list[str]:
    return pq.read_table(ws.subset_path(name)).column("key").to_pylist()


def test_nd_eval_selects_only_no_derivatives_images_and_training_policies_none(ws):
    assert POLICIES["nd-eval"] == {"cc-by-nd", "cc-by-nc-nd"}
    assert subset_keys(ws, "nd") == ["gpic:k0", "gpic:k1"]
    make_subset(ws, "noncommercial", "nc")
    assert subset_keys(ws, "nc") == ["gpic:k2", "gpic:k3"]
    assert pq.read_metadata(ws.subset_path("nd")).metadata[b"policy"] == b"nd-eval"


def _assert_refused(excinfo: pytest.ExceptionInfo, stage: str) -> None:
    message = str(excinfo.value)
    assert message.startswith(f"{stage} refuses subset 'nd'") and "forbids derivatives" in message
    assert "nd-eval subsets are for captioning and evaluation only" in message and "\n" not in message


def test_encode_autoencoder_and_clip_training_refuse_an_nd_subset(ws):
    from opencanvas.components.autoencoder import train_autoencoder
    from opencanvas.components.clip import train_clip
    from opencanvas.encode import encode

    with pytest.raises(DerivativesForbidden) as e:
        encode(ws, "nd", "unused", "unused", ["gpic-short"], "nd-latents", resolutions=(16,))
    _assert_refused(e, "encode")
    with pytest.raises(DerivativesForbidden) as e:
        train_autoencoder(ws, "nd", "ae", steps=1)
    _assert_refused(e, "autoencoder train")
    with pytest.raises(DerivativesForbidden) as e:
        train_clip(ws, "nd", "gpic-short", "clip", steps=1)
    _assert_refused(e, "clip train")
    assert not ws.latents_dir("nd-latents").exists()


def test_train_refuses_latents_made_from_an_nd_subset(ws):
    from opencanvas.encode.store import META_FILE
    from opencanvas.encode.synthetic import write_random_latents
    from opencanvas.train.loop import train

    root = write_random_latents(ws, "nd-latents", 8, resolution=16, text_len=8, text_dim=32)
    meta = json.loads((root / META_FILE).read_text())
    atomic_write_json(root / META_FILE, {**meta, "subset": "nd", "policy": "nd-eval"})  # as an older encode wrote
    with pytest.raises(DerivativesForbidden) as e:
        train(ws, "nd-latents", "tiny", "nd-run", images=8, batch=4)
    _assert_refused(e, "train")
    assert not (ws.run_dir("nd-run") / "checkpoints").exists()


def test_eval_reference_accepts_an_nd_subset_and_its_shipped_captions(ws):
    from opencanvas.caption.stage import caption
    from opencanvas.captions import read_captions
    from opencanvas.sample.evalsets import load_reference

    reference = load_reference(ws, "nd", limit=10)
    assert sorted(reference.names) == ["gpic:k0", "gpic:k1"] and reference.source == "subset:nd"
    caption(ws, "nd", "gpic-short")  # captioning an nd-eval subset is allowed: the evaluation prompts
    assert sorted(read_captions(ws, "gpic-short")["key"].to_pylist()) == ["gpic:k0", "gpic:k1"]


def test_cli_prints_the_refusal_as_one_line(ws):
    from typer.testing import CliRunner

    from opencanvas.cli import app

    result = CliRunner().invoke(app, ["encode", "--subset", "nd", "--autoencoder", "x", "--text-encoder", "x",
                                      "--captioners", "gpic-short", "--name", "l", "-w", str(ws.root)])
    assert result.exit_code != 0
    assert "forbids derivatives" in result.output and "Traceback" not in result.output
