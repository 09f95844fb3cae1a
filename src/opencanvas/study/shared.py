"""What the cells of a study share: fetched images, one caption set per captioner, one latent set per
(captioner, encoder) set, the key filter of each data fraction, and one evaluation prompt list."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from opencanvas.progress import console
from opencanvas.storage import atomic_write_json, atomic_write_parquet
from opencanvas.study.fractions import fraction_keys
from opencanvas.study.spec import StudySpec
from opencanvas.workspace import Workspace


def study_dir(ws: Workspace, name: str) -> Path:
    return ws.root / "studies" / name


def latents_name(spec: StudySpec, captioner: str) -> str:
    """One latent set per (subset, captioner, autoencoder, text encoder, resolution), shared across studies;
    with a conditioning axis, per what the axis adds too (caption sets, second encoder, image embeddings)."""
    captioners, encoders, image = latent_contents(spec, captioner)
    ident = json.dumps([spec.subset, captioner, spec.autoencoder, spec.text_encoder, spec.resolution])
    if spec.conditionings():
        ident = json.dumps([spec.subset, captioners, spec.autoencoder, encoders, image, spec.resolution])
    return f"{spec.subset}-{captioner}-{spec.resolution}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def latent_contents(spec: StudySpec, captioner: str) -> tuple[list[str], list[str], str | None]:
    """(captioners, text encoders, image-embedding CLIP) of the latent set: one set serves every conditioning
    cell, so it holds what any of them reads (study.spec.conditioning_options picks each cell's share)."""
    modes = spec.conditionings()
    captioners = [captioner, *(spec.extra_captioners if "multi-caption" in modes else ())]
    encoders = [spec.text_encoder, *([spec.text_encoder2] if "two-encoders" in modes and spec.text_encoder2 else [])]
    image = (spec.image_clip or spec.text_encoder) if "text+image" in modes else None
    return captioners, encoders, image


def ensure_images(ws: Workspace, spec: StudySpec) -> str:
    from opencanvas.shards import index_paths

    if index_paths(ws.images_dir(spec.subset)):
        return "fetched before"
    from opencanvas.fetch.stage import fetch

    console.print(f"study: fetching subset {spec.subset!r}")
    fetch(ws, spec.subset)
    return "fetched once for the study"


def ensure_captions(ws: Workspace, spec: StudySpec, captioner: str) -> str:
    """Caption the subset with `captioner` unless every image shard already has its caption part."""
    from opencanvas.shards import index_paths

    shards = index_paths(ws.images_dir(spec.subset))
    parts = ws.captions_dir(captioner)
    if shards and all((parts / f"part-{s.stem.split('-')[1]}.parquet").exists() for s in shards):
        return "captioned before"
    from opencanvas.caption import caption

    console.print(f"study: captioning {spec.subset!r} with {captioner!r}")
    caption(ws, spec.subset, captioner)
    return "captioned once for the study"


def ensure_latents(ws: Workspace, spec: StudySpec, captioner: str) -> str:
    """Encode (or finish encoding) the shared latent set of `captioner`; returns its name."""
    from opencanvas.encode import encode

    name = latents_name(spec, captioner)
    captioners, encoders, image = latent_contents(spec, captioner)
    encode(ws, spec.subset, spec.autoencoder, encoders if len(encoders) > 1 else encoders[0], captioners, name,
           resolutions=(spec.resolution,), image_embeddings=image)
    return name


def key_filter(ws: Workspace, spec: StudySpec, fraction: float, seed: int) -> str:
    """The workspace-relative key file of one nested fraction of the subset (written once)."""
    path = study_dir(ws, spec.name) / "keys" / f"fraction-{fraction:g}-seed-{seed}.parquet"
    if not path.exists():
        keys = pq.read_table(ws.subset_path(spec.subset), columns=["key"]).column("key").to_pylist()
        chosen = fraction_keys(keys, seed, fraction)
        atomic_write_parquet(path, pa.table({"key": pa.array(chosen, pa.string())}),
                             metadata={"fraction": f"{fraction:g}", "seed": str(seed), "subset": spec.subset,
                                       "formula": "sha256('<seed>\\0<key>')[:8] big-endian < fraction * 2**64 "
                                                  "(catalog.subset.key_position)"})
    return ws.relative(path)


def eval_prompts(ws: Workspace, spec: StudySpec) -> list[str]:
    """One prompt list for every cell: the held-out captions and/or prompt files, saved beside the results."""
    path = study_dir(ws, spec.name) / "prompts.json"
    if path.exists():
        return json.loads(path.read_text())["prompts"]
    from opencanvas.sample.evalsets import heldout_prompts
    from opencanvas.sample.prompts import read_prompts

    captioner = spec.eval.prompt_captioner or spec.captioners()[0]
    prompts: list[str] = []
    for source in spec.eval.prompts:
        if source == "heldout":
            prompts += heldout_prompts(ws, {"data": {"subset": spec.subset, "captioners": [captioner]}})
        else:
            prompts += read_prompts(Path(source))
    atomic_write_json(path, {"sources": list(spec.eval.prompts), "captioner": captioner, "prompts": prompts})
    return prompts


def prepare(ws: Workspace, spec: StudySpec, captioners: list[str]) -> dict[str, Any]:
    """Images, captions and latents for `captioners`, and the prompt list; returns what was shared."""
    images = ensure_images(ws, spec)
    extra = [c for c in latent_contents(spec, captioners[0])[0] if c not in captioners] if captioners else []
    captions = {c: ensure_captions(ws, spec, c) for c in [*captioners, *extra]}
    latents = {c: ensure_latents(ws, spec, c) for c in captioners}
    prompts = eval_prompts(ws, spec)
    return {"images": images, "captions": captions, "latents": latents, "prompts": len(prompts)}
