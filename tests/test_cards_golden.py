"""Card wording, checked against golden cards (tests/golden/cards/).

A tiny workspace from the test factories, with licenses rewritten to cover every case the cards
must state: CC BY credits, a collection-origin license, the old web.resource.org PublicDomain
dedication recorded as `pdm`, a held-out split, an autoencoder worse than bicubic and guidance
that lowers the CLIP score. Dates and hashes are normalised before comparing.
Regenerate after an intended wording change with OPENCANVAS_UPDATE_GOLDEN=1.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from opencanvas.cards.source_versions import debian_package_version, source_version
from opencanvas.cards.writer import write_cards
from opencanvas.catalog.schema import CATALOG_SCHEMA, SUBSET_SCHEMA
from opencanvas.model_license import model_license, obligations
from opencanvas.storage import atomic_write_parquet
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset

GOLDEN = Path(__file__).parent / "golden" / "cards"
CARDS = ("DATA_CARD.md", "MODEL_CARD.md", "ATTRIBUTION.md", "attribution.csv")
OLD_PD = "http://web.resource.org/cc/PublicDomain"


def _relicense(ws: Workspace) -> None:
    """Every 3rd image CC BY 4.0 by its own author, every 5th the collection's old PD dedication."""
    part = ws.source_dir("synthetic") / "part-00000.parquet"
    rows = pq.read_table(part).to_pylist()
    for i, r in enumerate(rows):
        if i % 3 == 0:
            r.update(license_id="cc-by", license_version="4.0", attribution_required=True,
                     license_url="https://creativecommons.org/licenses/by/4.0/", creator=f"Author {i % 2}")
        elif i % 5 == 0:
            r.update(license_id="pdm", license_version=None, license_url=OLD_PD, license_origin="collection")
    rows[3].update(title="<script>alert(1)</script>", creator="=cmd|' /C calc'!A0")   # hostile, escaped
    atomic_write_parquet(part, pa.Table.from_pylist(rows, schema=CATALOG_SCHEMA))
    atomic_write_parquet(ws.subset_path("shapes"), pa.Table.from_pylist(
        [{"key": r["key"], "source": "synthetic", "license_id": r["license_id"]} for r in rows], schema=SUBSET_SCHEMA),
        metadata={"policy": "commercial", "catalog_hash": "test",
                  "policy_text": "CommonCatalog-C: cc0, pdm, cc-by, cc-by-sa."})


def _run(ws: Workspace) -> None:
    ae = ws.autoencoder_dir("ae")
    ae.mkdir(parents=True)
    (ae / "opencanvas.json").write_text(json.dumps({"component": "autoencoder", "subset": "shapes",
                                                    "policy": "commercial", "catalog_hash": "test",
                                                    "images_seen": 640}))
    (ae / "report.json").write_text(json.dumps({"heldout_psnr": 18.5, "heldout_bicubic_psnr": 21.25}))
    run = ws.run_dir("r1")
    run.mkdir(parents=True)
    data = {"subset": "shapes", "captioners": ["metadata"], "autoencoder": "ae", "text_encoder": "some/hub-clip",
            "policy": "commercial", "catalog_hash": "test"}
    (run / "config.json").write_text(json.dumps({"preset": "tiny", "holdout": 0.1, "batch": 8, "lr": 1e-4,
                                                 "prediction_type": "epsilon", "data": data}))
    (run / "summary.json").write_text(json.dumps({"images_seen": 960, "steps": 120, "wall_seconds": 90.0,
                                                  "device": "cpu", "world_size": 1, "weights_sha256": "ab" * 32}))
    report = {"prompts": {"source": "heldout captions", "count": 4},
              "reference": {"source": "subset:shapes", "count": 40},
              "memorization_reference": {"source": "subset:shapes", "count": 40, "training_subset": True},
              "settings": {"n": 8, "sampler": "euler", "steps": 10}, "clip_model": "clips/c", "features": "clips/c",
              "fd_metric": "FD-CLIP", "kid_metric": "KID-CLIP", "clip_gain_over_unconditional": -0.5,
              "notes": ["n=8 images per guidance scale is too few: differences below the noise."],
              "memorization_gallery": {"path": "memorization.png", "cosine_threshold": 0.95, "phash_threshold": 4},
              "rows": [{"guidance": 0.0, "baseline": True, "clip_score": 20.5, "FD-CLIP": 10.25, "KID-CLIP": 0.5,
                        "memorization": {"share_cosine_above": 1.0, "share_phash_within": 0.0}},
                       {"guidance": 3.0, "baseline": False, "clip_score": 20.0, "FD-CLIP": 11.0, "KID-CLIP": 0.75,
                        "memorization": {"share_cosine_above": 1.0, "share_phash_within": 0.0}}]}
    (run / "eval" / "euler-10s-n8-0123456789").mkdir(parents=True)
    (run / "eval" / "euler-10s-n8-0123456789" / "report.json").write_text(json.dumps(report))


def _normalise(text: str) -> str:
    text = re.sub(r"\b[0-9a-f]{64}\b", "<sha256>", text)
    return re.sub(r"\d{4}-\d\d-\d\dT[\d:.+]+Z?", "<date>", text)


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace.open(tmp_path_factory.mktemp("golden") / "ws")
    make_image_subset(ws, "shapes", n=40, size=16, shard_size=20)
    make_captions(ws, "shapes", "metadata")
    _relicense(ws)
    _run(ws)
    return write_cards(ws, "r1")


@pytest.mark.parametrize("name", CARDS)
def test_card_matches_golden(cards: Path, name: str) -> None:
    got = _normalise((cards / name).read_text())
    if os.environ.get("OPENCANVAS_UPDATE_GOLDEN"):
        (GOLDEN / name).parent.mkdir(parents=True, exist_ok=True)
        (GOLDEN / name).write_text(got)
    assert got == (GOLDEN / name).read_text(), f"{name} differs from tests/golden/cards/{name}"


def test_cards_say_what_the_issue_asked(cards: Path) -> None:
    data, model = (cards / "DATA_CARD.md").read_text(), (cards / "MODEL_CARD.md").read_text()
    assert "| synthetic | unknown |" in data
    assert "have no license of their own" in data and "`license_origin = collection`" in data
    assert "web.resource.org/cc/PublicDomain` dedication, recorded as `pdm`" in data
    assert "| license | in subset | trained on |" in data
    evaluation = model[model.index("## Evaluation"):]
    assert evaluation.split("\n\n")[1].startswith("**This model is not good yet:**")
    assert "worse than bicubic" in evaluation and "guidance lowers its CLIP score" in evaluation
    assert "released under **CC BY 4.0** (`cc-by-4.0`" in model
    assert all(o in model for o in obligations({"cc-by", "cc0", "pdm"}, "commercial"))
    assert "<script>" not in (cards / "ATTRIBUTION.md").read_text()


def test_model_license_follows_the_most_restrictive_training_license() -> None:
    cases = {("cc0", "pdm"): "cc0-1.0", ("cc0", "cc-by"): "cc-by-4.0", ("cc-by", "cc-by-sa"): "cc-by-sa-4.0",
             ("cc-by", "cc-by-nc"): "cc-by-nc-4.0", ("cc-by-sa", "cc-by-nc"): "cc-by-nc-sa-4.0"}
    for licenses, expected in cases.items():
        assert model_license(licenses, "commercial").license_id == expected
    assert model_license({"cc0"}, "noncommercial").license_id == "cc-by-nc-4.0"   # the policy admits NC


def test_source_version_reads_the_debian_package(monkeypatch: pytest.MonkeyPatch) -> None:
    installed = debian_package_version("openclipart-svg")
    assert source_version("openclipart") == (f"Debian package openclipart-svg {installed}" if installed
                                              else "unknown")
    assert source_version("yfcc100m") == "unknown"
    monkeypatch.setenv("PATH", "/nonexistent")   # no dpkg-query on this machine
    assert source_version("openclipart") == "unknown"


def test_card_cli_writes_and_names_a_damaged_record(cards: Path, tmp_path: Path) -> None:
    import shutil

    from typer.testing import CliRunner

    from opencanvas.cli import app

    root = tmp_path / "ws"
    shutil.copytree(cards.parents[2], root)
    runner = CliRunner()
    done = runner.invoke(app, ["card", "--run", "r1", "-w", str(root)])
    assert done.exit_code == 0, done.output
    assert "ATTRIBUTION.md" in done.output
    missing = runner.invoke(app, ["card", "--run", "nope", "-w", str(root)])
    assert missing.exit_code == 2 and "opencanvas train" in missing.output
    (root / "images" / "shapes" / "shard-00001.parquet").write_bytes(b"not parquet")
    damaged = runner.invoke(app, ["card", "--run", "r1", "-w", str(root)])
    assert damaged.exit_code == 2 and "cannot read the workspace's Parquet records" in damaged.output
    assert "Traceback" not in damaged.output


def test_data_card_names_the_fraction_and_seed_of_the_subset_and_of_a_study_key_filter() -> None:
    from opencanvas.cards.writer import _fraction_lines

    sub = {"fraction": "0.3", "seed": "7", "max_rows": "", "selection": "keys whose sha256('<seed>\\0<key>')..."}
    lines = "\n".join(_fraction_lines(sub, {"path": "studies/s/keys/fraction-0.1-seed-0.parquet", "fraction": "0.1",
                                            "seed": "0", "formula": "f"}))
    assert "fraction 0.3, seed 7" in lines and "fraction 0.1 of the subset, seed 0" in lines
    assert _fraction_lines({"fraction": "1.0", "seed": "0", "max_rows": ""}, None) == []
