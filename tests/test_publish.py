"""Release to the Hub layout: `publish dataset` loads with datasets.load_dataset, `publish model` loads in
diffusers, both READMEs carry the Hub's YAML header, and ND subsets are refused."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencanvas.catalog.schema import CATALOG_SCHEMA
from opencanvas.cli import app
from opencanvas.publish.hub_card import hub_license, size_category
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset
from tests.test_train_pipeline import write_components


def _load(path: Path, cache: Path) -> object:
    import datasets

    return datasets.load_dataset(str(path), cache_dir=str(cache))


def _yaml_header(readme: Path) -> str:
    text = readme.read_text()
    assert text.startswith("---\n")
    return text.split("---\n")[1]


def test_hub_license_of_a_mix() -> None:
    assert hub_license(Counter({("cc0", "1.0"): 3, ("cc-by", "4.0"): 2})) == ("cc-by-4.0", None)
    assert hub_license(Counter({("cc-by-sa", "4.0"): 1, ("cc-by", "2.0"): 5})) == ("cc-by-sa-4.0", None)
    assert hub_license(Counter({("cc-by-nc-sa", "4.0"): 1, ("cc-by-nc", "4.0"): 1})) == ("cc-by-nc-sa-4.0", None)
    other, why = hub_license(Counter({("cc-by-sa", "4.0"): 1, ("cc-by-nc", "4.0"): 2}))
    assert other == "other" and "cc-by-nc 4.0: 2" in str(why)  # NC + SA: no one license covers both
    assert hub_license(Counter({("cc-by", "2.0"): 1, ("cc-by", "4.0"): 1}))[0] == "other"  # versions differ
    assert size_category(999) == "n<1K" and size_category(1000) == "1K<n<10K"


def test_publish_dataset_loads_with_datasets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a local folder: nothing to fetch
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, "shapes", n=12, size=16, shard_size=8)
    make_captions(ws, "shapes", "metadata")
    make_captions(ws, "shapes", "other")
    for flag, out in (([], tmp_path / "urls"), (["--with-images"], tmp_path / "images")):
        r = CliRunner().invoke(app, ["publish", "dataset", "--subset", "shapes", "--captions", "metadata,other",
                                     "--out", str(out), *flag, "-w", str(ws.root)])
        assert r.exit_code == 0, r.output
        header = _yaml_header(out / "README.md")
        assert "license: cc0-1.0" in header and "- text-to-image" in header and "- n<1K" in header
        assert "path: data/train-*.parquet" in header
        ds = _load(out, tmp_path / "cache")["train"]  # type: ignore[index]
        assert ds.num_rows == 12
        row = ds[0]
        assert row["key"] == "synthetic:00000" and row["url"] == "https://example.org/00000"
        assert row["caption_metadata"] == row["caption_other"] == "a red circle"
        assert '"model_id"' in row["caption_metadata_provenance"]
        assert row["license_id"] == "cc0" and "Test Author" in row["attribution"]
        assert (row["width"], row["height"]) == (16, 16)
    assert "image" not in _load(tmp_path / "urls", tmp_path / "cache")["train"].column_names  # type: ignore[index]
    image = _load(tmp_path / "images", tmp_path / "cache")["train"][5]["image"]  # type: ignore[index]
    assert image.size == (16, 16)  # a PIL image: the Image feature


def test_publish_refuses_nd_and_missing_captions(tmp_path: Path) -> None:
    ws = Workspace.open(tmp_path / "ws")
    make_image_subset(ws, "shapes", n=4, size=16, shard_size=4)
    make_captions(ws, "shapes")
    part = ws.source_dir("synthetic") / "part-00000.parquet"
    table = pq.read_table(part)
    ids = table.column("license_id").to_pylist()
    ids[1] = "cc-by-nd"
    pq.write_table(table.set_column(table.schema.get_field_index("license_id"), "license_id",
                                    pa.array(ids)).cast(CATALOG_SCHEMA), part)
    r = CliRunner().invoke(app, ["publish", "dataset", "--subset", "shapes", "--captions", "metadata",
                                 "--out", str(tmp_path / "o"), "-w", str(ws.root)])
    assert r.exit_code == 2 and "no-derivatives" in r.output and not (tmp_path / "o").exists()
    r = CliRunner().invoke(app, ["publish", "dataset", "--subset", "shapes", "--captions", "blip2",
                                 "--out", str(tmp_path / "o"), "-w", str(ws.root)])
    assert r.exit_code == 2


def test_publish_model_loads_in_diffusers(tmp_path: Path) -> None:
    from diffusers import StableDiffusionPipeline

    from opencanvas.encode.stage import encode
    from opencanvas.train.loop import train

    ws = Workspace.open(tmp_path / "ws")  # a real tiny pipeline: encode with SD2-layout components, then train
    components = write_components(ws.root / "sd2-tiny")
    make_image_subset(ws, "shapes", n=16, size=32, shard_size=8)
    make_captions(ws, "shapes", "metadata")
    encode(ws, "shapes", str(components), str(components), ["metadata"], "shapes16", resolutions=(16,))
    train(ws, "shapes16", "tiny", "r", images=16, batch=8)
    out = tmp_path / "model"
    r = CliRunner().invoke(app, ["publish", "model", "--run", "r", "--out", str(out), "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    header = _yaml_header(out / "README.md")
    for line in ("base_model: none", "license: cc0-1.0", "- shapes", "- text-to-image", "- diffusers",
                 "- creative-commons", "library_name: diffusers"):
        assert line in header, header
    assert "## Takedowns" in (out / "README.md").read_text()
    assert (out / "ATTRIBUTION.md").exists() and (out / "attribution.csv").exists()
    pipe = StableDiffusionPipeline.from_pretrained(out, local_files_only=True)
    assert pipe.unet is not None and pipe.vae is not None
