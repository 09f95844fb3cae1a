"""The caption stage ("telephoning"): one caption per ok image per captioner, shard by shard.

    images/<subset>/shard-NNNNN.tar|parquet  ->  captions/<name>/part-NNNNN.parquet

A part is written atomically once its shard is fully captioned, so it is the
shard's done-marker: a killed run re-run with the same command skips finished
shards and redoes only the unfinished one. Every ok image gets exactly one row;
empty, repetitive or undecodable results are kept with `flagged` set.

`caption_shard` is the pure per-shard function; the same function runs
in-process, on Ray actors (`engine="ray"`, one model per GPU) or as one share of
a SLURM-style job (`rank`, `world`).
"""

from __future__ import annotations

import functools
import json
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from opencanvas.caption.captioners import (
    CAPTIONERS,
    DEFAULT_MODELS,
    METADATA_FIELDS,
    MODEL_CAPTIONERS,
    RESERVED_NAMES,
    Captioner,
    CaptionInput,
    CommonCatalogCaptioner,
    GenerationSettings,
    MetadataCaptioner,
)
from opencanvas.caption.loader import decoded_batches, describe_preprocessing
from opencanvas.captions import CAPTION_SCHEMA
from opencanvas.engines import ENGINES, Engine, map_shards_on_actors, shard_share
from opencanvas.progress import progress_bar
from opencanvas.shards import index_paths, iter_shard
from opencanvas.storage import atomic_write_parquet, parquet_metadata
from opencanvas.workspace import Workspace


@dataclass(frozen=True)
class CaptionJob:
    """Everything a process needs to build the captioner and caption a shard (picklable)."""

    captioner: str                  # kind: blip2 | blip | hf | metadata | commoncatalog
    name: str                       # output table: captions/<name>/
    model: str = ""                 # local dir or hub id ("" for text captioners)
    device: str = "cpu"
    dtype: str = "auto"
    prompt: str = ""
    generation: GenerationSettings = GenerationSettings()
    crop_size: int = 512
    batch_size: int = 16
    loader_workers: int = 2
    model_revision: str | None = None  # computed once by the driver for local dirs

    def settings(self, subset: str) -> dict[str, Any]:
        """What must be equal for parts to belong to the same caption table."""
        settings: dict[str, Any] = {"subset": subset, "captioner": self.captioner}
        if self.captioner in MODEL_CAPTIONERS:  # text captioners ignore the rest
            settings.update(model=self.model, prompt=self.prompt, generation=asdict(self.generation),
                            crop_size=self.crop_size)
        return settings


@functools.lru_cache(maxsize=1)  # one model per process (or Ray actor), reused across its shards
def build_captioner(job: CaptionJob) -> Captioner:
    if job.captioner in METADATA_FIELDS:
        return MetadataCaptioner(job.captioner)
    if job.captioner == "commoncatalog":
        return CommonCatalogCaptioner()
    from opencanvas.caption.vision import load_model_captioner

    return load_model_captioner(job.captioner, job.model, name=job.name, device=job.device, dtype=job.dtype,
                                prompt=job.prompt, generation=job.generation,
                                preprocessing=describe_preprocessing(job.crop_size),
                                revision=job.model_revision)


@dataclass(frozen=True)
class ShardTask:
    job: CaptionJob
    subset: str
    tar: str      # images/<subset>/shard-NNNNN.tar
    out: str      # captions/<name>/part-NNNNN.parquet


@dataclass(frozen=True)
class ShardResult:
    shard: str
    images: int
    flagged: dict[str, int]
    seconds: float


def part_path(captions_dir: Path, tar: Path) -> Path:
    """captions/<name>/part-NNNNN.parquet for images/<subset>/shard-NNNNN.tar."""
    return captions_dir / f"part-{tar.stem.split('-', 1)[1]}.parquet"


def batch_seed(seed: int, shard: int, batch: int) -> int:
    """A seed per (shard, batch): captions do not depend on which shards ran before."""
    return (seed * 1_000_003 + shard * 10_007 + batch) % (2**63)


def _ok_images(tar: Path) -> tuple[list[str], dict[str, tuple[bytes, dict[str, Any]]]]:
    """Keys with status ok (index order) and their stored bytes + metadata from the tar."""
    index = pq.read_table(tar.with_suffix(".parquet"), columns=["key", "status"])
    ok = [k for k, s in zip(index.column("key").to_pylist(), index.column("status").to_pylist()) if s == "ok"]
    wanted = set(ok)
    stored = {img.key: (img.data, img.meta) for img in iter_shard(tar) if img.key in wanted}
    return ok, stored


def _ok_count(tar: Path) -> int:
    status = pq.read_table(tar.with_suffix(".parquet"), columns=["status"]).column("status")
    return pc.sum(pc.equal(status, "ok")).as_py() or 0


def _caption_pixels(captioner: Captioner, task: ShardTask, items: list[CaptionInput], images: list[bytes],
                    on_images: Callable[[int], None] | None) -> list[tuple[str, str]]:
    """(caption, flag) per item: batches decoded in the background, one seed per (shard, batch)."""
    import torch

    results: list[tuple[str, str]] = [("", "")] * len(items)
    shard_no = int(Path(task.tar).stem.split("-", 1)[1])
    batches = decoded_batches(images, batch_size=task.job.batch_size, crop_size=task.job.crop_size,
                              workers=task.job.loader_workers,
                              image_processor=getattr(captioner, "image_processor", None))
    for b, decoded in enumerate(batches):
        for i, reason in decoded.failed:
            results[i] = ("", reason)
        if decoded.indices:
            torch.manual_seed(batch_seed(task.job.generation.seed, shard_no, b))
            out = captioner.caption([items[i] for i in decoded.indices], decoded.pixels)
            for i, r in zip(decoded.indices, out):
                results[i] = r
        if on_images:
            on_images(len(decoded.indices) + len(decoded.failed))
    return results


def caption_shard(task: ShardTask, on_images: Callable[[int], None] | None = None) -> ShardResult:
    """Caption every ok image of one shard and write its part (the done-marker) last."""
    start = time.perf_counter()
    tar = Path(task.tar)
    captioner = build_captioner(task.job)
    keys, stored = _ok_images(tar)
    results: dict[str, tuple[str, str]] = {k: ("", "missing-image") for k in keys if k not in stored}
    items = [CaptionInput(k, stored[k][1]) for k in keys if k in stored]
    if captioner.needs_pixels:
        out = _caption_pixels(captioner, task, items, [stored[it.key][0] for it in items], on_images)
        results.update((it.key, r) for it, r in zip(items, out))
    else:
        for s in range(0, len(items), task.job.batch_size):
            chunk = items[s:s + task.job.batch_size]
            results.update((it.key, r) for it, r in zip(chunk, captioner.caption(chunk)))
            if on_images:
                on_images(len(chunk))
    now = datetime.now(UTC)
    prov = captioner.provenance
    rows = [{"key": k, "caption": results[k][0], "captioner": task.job.name, "model_id": prov.model_id,
             "model_revision": prov.model_revision, "prompt": prov.prompt, "generation": prov.generation,
             "preprocessing": prov.preprocessing, "flagged": results[k][1], "created_at": now} for k in keys]
    flagged = dict(Counter(r[1] for r in results.values() if r[1]))
    seconds = time.perf_counter() - start
    atomic_write_parquet(Path(task.out), pa.Table.from_pylist(rows, schema=CAPTION_SCHEMA), metadata={
        "subset": task.subset, "shard": tar.stem, "flagged": json.dumps(flagged), "seconds": f"{seconds:.3f}",
        "settings": json.dumps(task.job.settings(task.subset), sort_keys=True)})
    return ShardResult(tar.stem, len(keys), flagged, seconds)


@dataclass
class CaptionStats:
    name: str
    captioner: str
    subset: str
    shards_total: int = 0           # this rank's share
    shards_skipped: int = 0         # already done (resume)
    shards_done: int = 0
    images: int = 0
    flagged: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else 0.0

    def add(self, result: ShardResult) -> None:
        self.shards_done += 1
        self.images += result.images
        for reason, n in result.flagged.items():
            self.flagged[reason] = self.flagged.get(reason, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "images_per_s": round(self.images_per_s, 3)}


def _check_existing(captions_dir: Path, job: CaptionJob, subset: str) -> None:
    """Refuse to mix parts from another subset or other settings into one caption table."""
    want = job.settings(subset)
    for part in sorted(captions_dir.glob("part-*.parquet")):
        meta = parquet_metadata(part)
        if "settings" not in meta:  # written by another tool: nothing to compare
            continue
        have = json.loads(meta["settings"])
        if have.get("subset") != subset:
            raise ValueError(f"{captions_dir} holds captions of subset {have.get('subset')!r}, not {subset!r}: "
                             f"caption this subset under another table with --name NAME")
        if have != want:
            diff = sorted(k for k in want if have.get(k) != want[k])
            raise ValueError(f"{captions_dir} was captioned with other settings ({', '.join(diff)} differ: "
                             f"{ {k: have.get(k) for k in diff} }). Re-run with the same settings to resume, or "
                             f"write a new table with --name NAME")


def make_job(captioner: str, *, name: str | None = None, model: str | None = None, device: str = "cpu",
             dtype: str = "auto", prompt: str = "", generation: GenerationSettings | None = None,
             crop_size: int = 512, batch_size: int = 16, loader_workers: int = 2) -> CaptionJob:
    """Validate settings and resolve the model (and, for a local dir, its weights hash) once."""
    if captioner not in CAPTIONERS:
        raise ValueError(f"unknown captioner {captioner!r}: use one of {', '.join(CAPTIONERS)}")
    name = name or captioner
    if name in RESERVED_NAMES or "/" in name:
        raise ValueError(f"--name {name!r} is not allowed (reserved or has '/'): pick another table name")
    if batch_size < 1 or crop_size < 0 or loader_workers < 0:
        raise ValueError("need batch_size >= 1, crop_size >= 0 and loader_workers >= 0")
    revision = None
    if captioner in MODEL_CAPTIONERS:
        from opencanvas.caption.vision import resolve_model, weights_revision

        model = model or DEFAULT_MODELS.get(captioner)
        if not model:
            raise ValueError(f"captioner {captioner!r} needs --model (a local model dir or a hub id)")
        source, is_local = resolve_model(model)
        model, revision = (source, weights_revision(Path(source))) if is_local else (model, None)
    elif model or prompt:
        raise ValueError(f"captioner {captioner!r} uses no model and no prompt; drop --model/--prompt")
    return CaptionJob(captioner=captioner, name=name, model=model or "", device=device, dtype=dtype,
                      prompt=prompt,
                      generation=generation or GenerationSettings(), crop_size=crop_size,
                      batch_size=batch_size, loader_workers=loader_workers, model_revision=revision)


def shard_tasks(ws: Workspace, subset: str, job: CaptionJob) -> list[ShardTask]:
    """One task per finished image shard of the subset, in shard order."""
    images_dir = ws.images_dir(subset)
    indexes = index_paths(images_dir)
    if not indexes:
        raise FileNotFoundError(f"no finished image shards in {images_dir}: run `opencanvas fetch --subset "
                                f"{subset}` first")
    out_dir = ws.captions_dir(job.name)
    return [ShardTask(job, subset, str(idx.with_suffix(".tar")), str(part_path(out_dir, idx.with_suffix(".tar"))))
            for idx in indexes]


def caption(ws: Workspace, subset: str, captioner: str, model: str | None = None, batch_size: int = 16,
            device: str = "cpu", dtype: str = "auto", *, name: str | None = None, prompt: str = "",
            generation: GenerationSettings | None = None, crop_size: int = 512, loader_workers: int = 2,
            engine: Engine = "local", rank: int = 0, world: int = 1, ray_actors: int | None = None,
            on_shard: Callable[[ShardResult], None] | None = None) -> CaptionStats:
    """Caption every ok image of `subset` with `captioner` into captions/<name or captioner>/.

    `engine="ray"` runs the shards on Ray actors (one model each, one GPU each with a cuda device;
    `ray_actors` defaults to the cluster's GPUs or CPUs); `rank`/`world` take one share of the shards.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    job = make_job(captioner, name=name, model=model, device=device, dtype=dtype, prompt=prompt,
                   generation=generation, crop_size=crop_size, batch_size=batch_size,
                   loader_workers=loader_workers)
    tasks = shard_tasks(ws, subset, job)
    _check_existing(ws.captions_dir(job.name), job, subset)
    mine = shard_share(tasks, rank, world)
    pending = [t for t in mine if not Path(t.out).exists()]
    stats = CaptionStats(job.name, captioner, subset, shards_total=len(mine),
                         shards_skipped=len(mine) - len(pending))
    total = sum(_ok_count(Path(t.tar)) for t in pending)
    start = time.perf_counter()
    with progress_bar() as bar:
        task_id = bar.add_task(f"caption {job.name}", total=total, unit="img")
        if engine == "ray":  # shards stream back whole, so the bar moves per shard
            cpus = max(1, loader_workers) if captioner in MODEL_CAPTIONERS else 1  # + decoding processes
            results: Iterator[ShardResult] = map_shards_on_actors(
                caption_shard, pending, num_gpus=1.0 if device.startswith("cuda") else 0.0, num_cpus=cpus,
                actors=ray_actors)
        else:
            results = (caption_shard(t, on_images=lambda n: bar.advance(task_id, n)) for t in pending)
        for result in results:
            if engine == "ray":
                bar.advance(task_id, result.images)
            stats.add(result)
            if on_shard:
                on_shard(result)
    stats.seconds = time.perf_counter() - start
    return stats
