"""Takedowns: remove an author's images everywhere, tombstone their keys, and say which trained
models saw them (`takedowns/<id>.json`); `trace` answers whether one run trained on one image.

The record is written before anything is removed and marked done after, so the same command,
re-run after a kill, finds the record and finishes the removal (every step is idempotent).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from opencanvas.splits import key_fraction
from opencanvas.storage import atomic_write_json
from opencanvas.tombstones import add_tombstones, read_tombstones
from opencanvas.workspace import Workspace


def takedowns_dir(ws: Workspace) -> Path:
    return ws.root / "takedowns"


def takedown_id(keys: Sequence[str], authors: Sequence[str], urls: Sequence[str], reason: str) -> str:
    """Stable id of a request, so re-running the same command resumes the same takedown."""
    text = json.dumps([sorted(keys), sorted(authors), sorted(urls), reason])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_keys(ws: Workspace, keys: Sequence[str], authors: Sequence[str], urls: Sequence[str]) -> list[str]:
    """Catalog keys that match; ValueError naming what is not in the catalog (then nothing is changed).

    One DuckDB pass over the parts, so a catalog of 10^8 rows is never read into Python."""
    from opencanvas.catalog.query import query

    asked = pa.table({"value": pa.array([*keys, *authors, *urls], pa.string()),
                      "kind": pa.array(["key"] * len(keys) + ["author"] * len(authors) + ["url"] * len(urls))})
    hits = query(ws, """
        SELECT a.kind, a.value, c.key FROM asked a JOIN {catalog} c ON
            (a.kind = 'key' AND c.key = a.value)
            OR (a.kind = 'author' AND (c.creator = a.value OR c.creator_url = a.value))
            OR (a.kind = 'url' AND (c.landing_url = a.value OR c.download_url = a.value))""",
                 tables={"asked": asked}).to_pylist()
    matched = {(h["kind"], h["value"]) for h in hits}
    missing = [f"{kind} {value}" for kind, value in zip(asked["kind"].to_pylist(), asked["value"].to_pylist())
               if (kind, value) not in matched]
    if missing:
        raise ValueError(f"not in the catalog: {', '.join(missing)}; nothing was changed (check with "
                         "`opencanvas catalog`, or take down by --author/--url)")
    return sorted({h["key"] for h in hits})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _present(paths: list[Path], keys: set[str]) -> set[str]:
    """Which of `keys` the Parquet files hold (a filtered scan of the key column: only matches are read out)."""
    if not paths or not keys:
        return set()
    import pyarrow.dataset as ds

    table = ds.dataset([str(p) for p in paths], format="parquet").to_table(
        columns=["key"], filter=ds.field("key").isin(sorted(keys)))
    return set(table.column("key").to_pylist())


def _subset_keys(ws: Workspace, subset: str | None, keys: set[str]) -> set[str]:
    path = ws.subset_path(subset) if subset else None
    return _present([path], keys) if path and path.exists() else set()


def _latent_keys(ws: Workspace, latents: str, keys: set[str]) -> set[str]:
    root = ws.latents_dir(latents)
    return _present([p for p in root.glob("res-*/shard-*/*.keys.parquet") if (p.parent / "done.json").exists()],
                    keys)


def _images_seen(run_dir: Path) -> int:
    summary = _read_json(run_dir / "summary.json")
    if "images_seen" in summary:
        return int(summary["images_seen"])
    ckpts = sorted((run_dir / "checkpoints").glob("ckpt-*.safetensors"))
    return int(ckpts[-1].stem.split("-")[1]) if ckpts else 0


def trained_keys(keys: set[str], holdout: float) -> list[str]:
    """The keys a run or component trained on: the held-out split (key hash below `holdout`) never is."""
    return sorted(k for k in keys if key_fraction(k) >= holdout)


def affected(ws: Workspace, keys: Sequence[str]) -> dict[str, Any]:
    """Every subset, autoencoder, CLIP, latent set and run whose data held `keys`, and what to retrain."""
    doomed = set(keys)
    subsets = sorted(p.stem for p in (ws.root / "subsets").glob("*.parquet") if _subset_keys(ws, p.stem, doomed))
    components: dict[str, list[dict[str, Any]]] = {"autoencoders": [], "clips": []}
    for kind in components:
        for record in sorted((ws.root / kind).glob("*/opencanvas.json")):
            prov = _read_json(record)
            if prov.get("subset") in subsets:
                # The component's record lists its held-out keys; without them, the split rule (splits.py).
                held = set(prov.get("heldout_keys") or [])
                candidates = _subset_keys(ws, prov["subset"], doomed)
                seen = sorted(candidates - held) if held else trained_keys(candidates, 0.1)
                components[kind].append({"name": record.parent.name, "subset": prov["subset"], "keys": seen,
                                         "images_seen": prov.get("images_seen", prov.get("max_images"))})
    tainted_specs = {c["name"] for c in components["autoencoders"] + components["clips"]}
    latents = sorted(d.name for d in (ws.root / "latents").glob("*") if _latent_keys(ws, d.name, doomed))
    runs = []
    for config_path in sorted((ws.root / "runs").glob("*/config.json")):
        config = _read_json(config_path)
        data = config.get("data", {})
        via = [f"latents {config.get('latents')}"] if config.get("latents") in latents else []
        # A latent set deleted since still trained the run: then its subset says what it held.
        gone = not ws.latents_dir(str(config.get("latents"))).is_dir()
        via += [f"subset {data['subset']} (latents deleted)"] if gone and data.get("subset") in subsets else []
        via += [f"{part} {data.get(part)}" for part in ("autoencoder", "text_encoder")
                if data.get(part) in tainted_specs]
        # A second text encoder and an image-embedding CLIP (issue 14) have seen their training images too.
        via += [f"text_encoder_2 {spec}" for spec in (data.get("text_encoders") or [])[1:] if spec in tainted_specs]
        via += [f"image_embeddings {data['image_embeddings']}"] if data.get("image_embeddings") in tainted_specs else []
        if via:
            held_in = (_latent_keys(ws, str(config.get("latents")), doomed) if config.get("latents") in latents
                       else _subset_keys(ws, data.get("subset"), doomed))
            seen = trained_keys(held_in, config.get("holdout", 0.1))
            runs.append({"name": config_path.parent.name, "via": via, "keys": seen,
                         "images_seen": _images_seen(config_path.parent)})
    retrain = ([f"autoencoders/{c['name']}" for c in components["autoencoders"]]
               + [f"clips/{c['name']}" for c in components["clips"]]
               + [f"latents/{name} (re-encode)" for name in latents] + [f"runs/{r['name']}" for r in runs])
    return {"subsets": subsets, **components, "latents": latents, "runs": runs, "retrain": retrain}


def takedown(ws: Workspace, keys: Sequence[str] = (), authors: Sequence[str] = (), urls: Sequence[str] = (),
             reason: str = "") -> dict[str, Any]:
    """Tombstone and remove the matching images everywhere; returns the `takedowns/<id>.json` record."""
    from opencanvas.provenance.removal import remove_everywhere

    if not reason.strip():
        raise ValueError("a takedown needs --reason (kept in the tombstone table and the takedown record)")
    if not (keys or authors or urls):
        raise ValueError("say what to take down: --key K, --author A or --url U")
    tid = takedown_id(keys, authors, urls, reason)
    path = takedowns_dir(ws) / f"{tid}.json"
    record = _read_json(path)
    if not record:  # a new request; a killed one resumes from its record
        found = resolve_keys(ws, keys, authors, urls)
        record = {"id": tid, "reason": reason, "request": {"keys": list(keys), "authors": list(authors),
                                                             "urls": list(urls)},
                  "keys": found, "requested_at": datetime.now(UTC).isoformat(), "status": "removing",
                  "affected": affected(ws, found)}
        atomic_write_json(path, record)
    add_tombstones(ws.catalog_dir, record["keys"], reason, tid)
    removed = remove_everywhere(ws, record["keys"], tid)
    if record["status"] != "done":
        record |= {"status": "done", "removed": removed, "finished_at": datetime.now(UTC).isoformat()}
        atomic_write_json(path, record)
    return record


def takedown_records(ws: Workspace) -> list[dict[str, Any]]:
    return [r for p in sorted(takedowns_dir(ws).glob("*.json")) if (r := _read_json(p))]


def trace(ws: Workspace, run: str, key: str) -> dict[str, Any]:
    """Did `run` train on `key`? From the run's latents, its held-out split, and past takedowns."""
    config = _read_json(ws.run_dir(run) / "config.json")
    if not config:
        raise ValueError(f"no run {run!r} under {ws.run_dir(run).parent} (no config.json)")
    latents, holdout = str(config.get("latents")), float(config.get("holdout", 0.1))
    answer = {"run": run, "key": key, "latents": latents, "subset": config.get("data", {}).get("subset")}
    for record in takedown_records(ws):
        for r in record.get("affected", {}).get("runs", []):
            if r["name"] == run and key in r["keys"]:
                return answer | {"trained_on": True, "why": f"trained on it before takedown {record['id']} "
                                 f"removed it ({r['images_seen']} images seen then)"}
    if key in set(read_tombstones(ws.catalog_dir).column("key").to_pylist()):
        return answer | {"trained_on": False, "why": "taken down; no takedown record names this run"}
    if not _latent_keys(ws, latents, {key}):
        return answer | {"trained_on": False, "why": f"not in the run's latent set {latents!r}"}
    if key_fraction(key) < holdout:
        return answer | {"trained_on": False, "why": f"in latents {latents!r} but in the held-out split "
                         f"(key hash below {holdout}), which training leaves out"}
    return answer | {"trained_on": True, "why": f"in the run's latent set {latents!r}, outside the held-out split"}


def takedowns_section(ws: Workspace, run: str) -> str:
    """Markdown for a model card: the takedowns that named this run, or that there were none."""
    rows = [(rec, r) for rec in takedown_records(ws) for r in rec.get("affected", {}).get("runs", [])
            if r["name"] == run]
    if not rows:
        return "## Takedowns\n\nNo takedown request has named this model's training data.\n"
    lines = ["## Takedowns", "", "| takedown | date | reason | images this model trained on | retrain |",
             "|---|---|---|---|---|"]
    for rec, r in rows:
        lines.append(f"| {rec['id']} | {rec.get('requested_at', '')[:10]} | {rec['reason']} | {len(r['keys'])} | "
                     f"{'yes' if r['keys'] else 'no (held out)'} |")
    return "\n".join(lines) + "\n"
