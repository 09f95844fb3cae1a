"""Takedown end to end: an image leaves the catalog, subsets, shards, captions and latents; its key is
tombstoned; the record names the runs and components that trained on it; re-ingest skips it; trace."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from opencanvas.captions import read_captions
from opencanvas.catalog.ingest import ingest
from opencanvas.catalog.query import catalog_rows
from opencanvas.cli import app
from opencanvas.components.records import write_record
from opencanvas.encode.store import open_latents
from opencanvas.encode.synthetic import write_random_latents
from opencanvas.provenance import removal
from opencanvas.provenance.takedown import resolve_keys, takedown
from opencanvas.shards import iter_shard, read_index
from opencanvas.splits import key_fraction
from opencanvas.storage import atomic_write_json
from opencanvas.tombstones import read_tombstones
from opencanvas.workspace import Workspace
from tests.factories import make_captions, make_image_subset


def _rekey_latents(ws: Workspace, name: str, subset: str) -> None:
    """write_random_latents names keys synthetic:%08d; the factory catalog uses synthetic:%05d."""
    root = ws.latents_dir(name)
    for path in list(root.glob("res-*/shard-*/*.keys.parquet")) + list(root.glob("text/shard-*/keys.parquet")):
        table = pq.read_table(path)
        keys = [f"synthetic:{int(k.split(':')[1]):05d}" for k in table.column("key").to_pylist()]
        pq.write_table(table.set_column(0, "key", pa.array(keys)), path)
    meta = json.loads((root / "meta.json").read_text())
    atomic_write_json(root / "meta.json", meta | {"subset": subset})


@pytest.fixture
def trained(tmp_path: Path) -> tuple[Workspace, list[str]]:
    """A workspace with 24 images in catalog/subset/shards/captions/latents, an autoencoder record trained on
    the subset, and a tiny run trained on the latents."""
    from opencanvas.sample.tiny import tiny_text_model, tiny_tokenizer, tiny_vae
    from opencanvas.train import loop

    ws = Workspace.open(tmp_path / "ws")
    keys = make_image_subset(ws, "shapes", n=24, size=16, shard_size=12)
    make_captions(ws, "shapes")
    write_random_latents(ws, "lat", 24, resolution=16, downscale=2, text_len=8, text_dim=32, shard_size=12)
    _rekey_latents(ws, "lat", "shapes")
    tiny_vae(1).save_pretrained(ws.autoencoder_dir("synthetic"))
    tiny_text_model(2).save_pretrained(ws.clip_dir("synthetic"))
    tiny_tokenizer().save_pretrained(ws.clip_dir("synthetic"))
    write_record(ws.autoencoder_dir("ae-shapes"), {"subset": "shapes", "images_seen": 96,
                                                    "heldout_keys": [keys[0]]})
    loop.train(ws, "lat", "tiny", "r", images=16, batch=8)
    return ws, keys


def _trained_key(keys: list[str]) -> str:
    return next(k for k in keys if key_fraction(k) >= 0.1)


def test_takedown_removes_everywhere_and_names_the_runs(trained: tuple[Workspace, list[str]]) -> None:
    from opencanvas.catalog.stats import catalog_stats
    from opencanvas.catalog.subset import catalog_hash

    ws, keys = trained
    key, held_out = _trained_key(keys), next(k for k in keys if key_fraction(k) < 0.1)
    snapshot = catalog_hash(ws)
    r = CliRunner().invoke(app, ["takedown", "--key", key, "--key", held_out, "--reason", "author request",
                                 "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert "retrain: autoencoders/ae-shapes, latents/lat (re-encode), runs/r" in r.output
    [record_path] = (ws.root / "takedowns").glob("*.json")
    record = json.loads(record_path.read_text())
    assert record["status"] == "done" and record["keys"] == sorted([key, held_out])
    assert record["removed"] == {"catalog": 2, "quarantine": 0, "subsets": 2, "images": 2, "captions": 2,
                                 "latents": 2, "latent_texts": 2}
    [run] = record["affected"]["runs"]
    assert run["name"] == "r" and run["keys"] == [key] and run["images_seen"] == 16  # held-out key never trained
    [ae] = record["affected"]["autoencoders"]
    assert ae["name"] == "ae-shapes" and ae["keys"] == sorted({key, held_out} - {keys[0]})  # its own held-out list
    # gone from every record the stages wrote
    doomed = {key, held_out}
    assert not doomed & set(catalog_rows(ws).column("key").to_pylist())
    assert not doomed & set(pq.read_table(ws.subset_path("shapes")).column("key").to_pylist())
    assert not doomed & set(read_index(ws.images_dir("shapes")).column("key").to_pylist())
    assert not doomed & {img.key for tar in ws.images_dir("shapes").glob("*.tar") for img in iter_shard(tar)}
    assert not doomed & set(read_captions(ws, "metadata").column("key").to_pylist())
    latents = open_latents(ws, "lat")
    assert len(latents) == 22 and not doomed & set(latents.keys())
    assert all(rec.key == k for k, rec in zip(latents.keys(), (latents.get(i) for i in range(len(latents)))))
    assert pq.read_table(ws.subset_path("shapes")).schema.metadata[b"policy"] == b"commercial"  # metadata kept
    assert catalog_stats(ws)["total"]["balanced"] and catalog_hash(ws) != snapshot  # a new catalog snapshot
    tomb = read_tombstones(ws.catalog_dir).to_pylist()
    assert {t["key"] for t in tomb} == doomed and {t["reason"] for t in tomb} == {"author request"}
    # trace: both directions, after the takedown too
    for k, yes in ((key, True), (held_out, False), (_trained_key([k for k in keys if k not in doomed]), True)):
        out = CliRunner().invoke(app, ["trace", "--run", "r", "--key", k, "--json", "-w", str(ws.root)])
        assert out.exit_code == 0 and json.loads(out.output)["trained_on"] is yes, out.output
    again = CliRunner().invoke(app, ["takedown", "--key", key, "--key", held_out, "--reason", "author request",
                                     "-w", str(ws.root)])
    assert again.exit_code == 0 and json.loads(record_path.read_text()) == record  # idempotent


def test_unknown_key_changes_nothing(trained: tuple[Workspace, list[str]]) -> None:
    ws, keys = trained
    before = {p: p.read_bytes() for p in ws.root.rglob("*.parquet")}
    r = CliRunner().invoke(app, ["takedown", "--key", keys[3], "--key", "synthetic:nope", "--reason", "x",
                                 "-w", str(ws.root)])
    assert r.exit_code == 2 and "not in the catalog: key synthetic:nope" in r.output
    r = CliRunner().invoke(app, ["takedown", "--author", "Nobody", "--reason", "x", "-w", str(ws.root)])
    assert r.exit_code == 2 and "not in the catalog: author Nobody" in r.output
    assert resolve_keys(ws, [], ["Test Author"], []) == sorted(keys)  # by creator name (or creator URL)
    assert resolve_keys(ws, [], [], ["https://example.org/00003"]) == [keys[3]]  # by landing or download URL
    assert {p: p.read_bytes() for p in ws.root.rglob("*.parquet")} == before
    assert not (ws.root / "takedowns").exists()


def test_a_killed_takedown_resumes(trained: tuple[Workspace, list[str]], monkeypatch: pytest.MonkeyPatch) -> None:
    ws, keys = trained
    key = _trained_key(keys)

    def killed(*_: object) -> int:
        raise KeyboardInterrupt  # as if killed while rewriting the first image shard

    monkeypatch.setattr(removal, "filter_shard", killed)
    with pytest.raises(KeyboardInterrupt):
        takedown(ws, [key], reason="dmca")
    [record_path] = (ws.root / "takedowns").glob("*.json")
    assert json.loads(record_path.read_text())["status"] == "removing"
    assert key not in set(catalog_rows(ws).column("key").to_pylist())  # done before the kill
    monkeypatch.undo()
    record = takedown(ws, [key], reason="dmca")
    assert record["status"] == "done" and record["affected"]["runs"][0]["keys"] == [key]
    assert key not in set(read_index(ws.images_dir("shapes")).column("key").to_pylist())
    assert key not in set(open_latents(ws, "lat").keys())


def test_reingest_skips_tombstoned_keys(tmp_path: Path) -> None:
    from opencanvas.catalog.query import query
    from opencanvas.catalog.stats import catalog_stats
    from tests.test_catalog_sources import write_yfcc, yfcc_fields

    ws, t = Workspace.open(tmp_path / "ws"), "\t".join
    ingest(ws, "yfcc100m", [write_yfcc(tmp_path / "a.tsv", [t(yfcc_fields(1)), t(yfcc_fields(2))])])
    gone = "yfcc100m:5000001"
    r = CliRunner().invoke(app, ["takedown", "--key", gone, "--reason", "asked", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert catalog_rows(ws).column("key").to_pylist() == ["yfcc100m:5000002"]
    later = ingest(ws, "yfcc100m", [write_yfcc(tmp_path / "b.tsv", [t(yfcc_fields(1)), t(yfcc_fields(3))])])
    assert (later.ingested, later.quarantined, later.reasons) == (1, 1, {"taken-down": 1})
    assert catalog_rows(ws).column("key").to_pylist() == ["yfcc100m:5000002", "yfcc100m:5000003"]
    # the takedown's own row and the re-ingest's: the key only, never the content
    quarantined = query(ws, "SELECT raw, reason FROM {quarantine}").to_pylist()
    assert quarantined == [{"raw": json.dumps({"key": gone}), "reason": "taken-down"}] * 2
    stats = catalog_stats(ws)["sources"]["yfcc100m"]
    assert stats["balanced"] and (stats["read"], stats["ingested"], stats["quarantined"]) == (4, 2, 2)


KILL_SCRIPT = """
import os, signal, sys
from opencanvas.provenance import removal
from opencanvas.provenance.takedown import resolve_keys, takedown
from opencanvas.workspace import Workspace

where, root, key = sys.argv[1:4]
if where == "latents":  # killed halfway through swapping a rebuilt latent part into place
    def swap(part, staged):
        os.replace(part, part.with_name(part.name + ".removed"))
        os.kill(os.getpid(), signal.SIGKILL)
    removal._swap_dir = swap
else:  # killed after the catalog, before the first image shard
    removal.filter_shard = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
takedown(Workspace.open(root), [key], reason="dmca")
"""


@pytest.mark.parametrize("where", ["shards", "latents"])
def test_sigkilled_takedown_resumes(trained: tuple[Workspace, list[str]], where: str) -> None:
    import os
    import subprocess
    import sys

    ws, keys = trained
    key = _trained_key(keys)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1] / "src"),
                                                        os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, where, str(ws.root), key], env=env, timeout=300)
    assert done.returncode == -9
    [record_path] = (ws.root / "takedowns").glob("*.json")
    assert json.loads(record_path.read_text())["status"] == "removing"
    r = CliRunner().invoke(app, ["takedown", "--key", key, "--reason", "dmca", "-w", str(ws.root)])
    assert r.exit_code == 0, r.output
    assert json.loads(record_path.read_text())["status"] == "done"
    latents = open_latents(ws, "lat")
    assert len(latents) == 23 and key not in set(latents.keys())
    leftovers = [*ws.latents_dir("lat").glob("res-*/*.removed"), *ws.latents_dir("lat").glob("res-*/*.takedown")]
    assert not leftovers
    assert key not in set(read_index(ws.images_dir("shapes")).column("key").to_pylist())
    assert key not in {img.key for tar in ws.images_dir("shapes").glob("*.tar") for img in iter_shard(tar)}
    assert key not in set(catalog_rows(ws).column("key").to_pylist())


def test_trace_unknown_run_and_empty_request(trained: tuple[Workspace, list[str]]) -> None:
    ws, keys = trained
    r = CliRunner().invoke(app, ["trace", "--run", "nope", "--key", keys[0], "-w", str(ws.root)])
    assert r.exit_code == 2 and "no run 'nope'" in r.output
    r = CliRunner().invoke(app, ["trace", "--run", "r", "--key", "synthetic:99999", "-w", str(ws.root)])
    assert r.exit_code == 0 and r.output.startswith("no: not in the run's latent set")
    for args in (["--reason", "x"], ["--key", keys[0], "--reason", " "]):
        r = CliRunner().invoke(app, ["takedown", *args, "-w", str(ws.root)])
        assert r.exit_code == 2, r.output
    assert not (ws.root / "takedowns").exists()


def test_a_run_whose_latents_were_deleted_is_still_named(trained: tuple[Workspace, list[str]]) -> None:
    import shutil

    from opencanvas.provenance.takedown import affected

    ws, keys = trained
    key = _trained_key(keys)
    shutil.rmtree(ws.latents_dir("lat"))
    [run] = affected(ws, [key])["runs"]
    assert run["name"] == "r" and run["via"] == ["subset shapes (latents deleted)"] and run["keys"] == [key]
