"""Generation from the page: one background worker thread, jobs with progress, PNGs with the same
metadata as `opencanvas sample` (written to `runs/<run>/samples/web/`), and the nearest training images.

Progress counts the distinct noise levels the denoiser has been called at, out of `steps`, so it works
for every sampler without the sampler knowing.
"""

from __future__ import annotations

import queue
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from opencanvas.workspace import Workspace

MAX_STEPS = 200
MAX_SEED = 2**31 - 1
KEEP_JOBS = 200


@dataclass
class GenerateRequest:
    run: str
    prompt: str
    steps: int = 25
    guidance: float = 7.5
    sampler: str = "dpmpp-2m"
    seed: int = 0
    negative_prompt: str = ""
    k: int = 4


@dataclass
class Job:
    id: str
    request: GenerateRequest
    status: str = "queued"            # queued | running | done | failed
    progress: float = 0.0
    error: str | None = None
    image: str | None = None          # path relative to the run dir
    metadata: dict[str, Any] = field(default_factory=dict)
    neighbours: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "run": self.request.run, "prompt": self.request.prompt, "status": self.status,
                "progress": round(self.progress, 3), "error": self.error,
                "image_url": f"/files/runs/{self.request.run}/{self.image}" if self.image else None,
                "metadata": self.metadata, "neighbours": self.neighbours}


class _Counting:
    """The denoiser, counting the distinct sigmas it is called at (for progress)."""

    def __init__(self, inner: Any, on_sigma: Any) -> None:
        self._inner, self._on_sigma = inner, on_sigma

    def __call__(self, x: Any, sigma: Any, *args: Any, **kwargs: Any) -> Any:
        self._on_sigma(float(sigma.flatten()[0]) if hasattr(sigma, "flatten") else float(sigma))
        return self._inner(x, sigma, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class _WithProgress:
    """A pipeline whose denoiser reports progress; everything else is the wrapped pipeline's."""

    def __init__(self, pipeline: Any, on_sigma: Any) -> None:
        self._pipeline = pipeline
        self.denoiser = _Counting(pipeline.denoiser, on_sigma)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._pipeline, name)


class Generator:
    """The worker: loads runs on demand (the last two stay in memory) and runs one job at a time."""

    def __init__(self, ws: Workspace, clip_spec: str | None = None, device: str = "cpu") -> None:
        self.ws, self.clip_spec, self.device = ws, clip_spec, device
        self.jobs: OrderedDict[str, Job] = OrderedDict()
        self._queue: queue.Queue[Job] = queue.Queue()
        self._pipelines: OrderedDict[str, Any] = OrderedDict()
        self._clips: dict[str, Any] = {}
        self._indexes: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="opencanvas-generate", daemon=True)
        self._thread.start()

    def submit(self, request: GenerateRequest) -> Job:
        job = Job(secrets.token_hex(8), request)
        with self._lock:
            self.jobs[job.id] = job
            while len(self.jobs) > KEEP_JOBS:
                self.jobs.popitem(last=False)
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self.jobs.get(job_id)

    def index_for(self, run: str) -> Any | None:
        """The neighbour index a job of this run has loaded (thumbnails are served only from it)."""
        found = [v for k, v in list(self._indexes.items()) if k.split("|")[0] == run]
        return found[0] if found else None

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            job.status = "running"
            try:
                self._run(job)
                job.progress, job.status = 1.0, "done"
            except Exception as e:  # noqa: BLE001 - a failed job is reported on its page; the worker lives on
                job.status, job.error = "failed", f"{type(e).__name__}: {e}"

    def pipeline(self, run: str) -> Any:
        from opencanvas.sample.loading import load_model

        if run not in self._pipelines:
            self._pipelines[run] = load_model(self.ws, run, None, device=self.device)
            while len(self._pipelines) > 2:
                self._pipelines.popitem(last=False)
        self._pipelines.move_to_end(run)
        return self._pipelines[run]

    def clip(self, config: dict[str, Any]) -> tuple[Any | None, str | None]:
        """The CLIP for neighbour search: --clip, else the run's own catalog CLIP, else none (hashes only)."""
        from opencanvas.sample.evaluate import load_clip

        key = self.clip_spec or str(config.get("data", {}).get("text_encoder") or "")
        if key not in self._clips:
            try:
                self._clips[key] = (load_clip(self.ws, config, self.clip_spec, self.device), None)
            except (FileNotFoundError, OSError, ValueError) as e:
                self._clips[key] = (None, f"no CLIP for feature search ({e}); perceptual hashes only")
        return self._clips[key]

    def _run(self, job: Job) -> None:
        from opencanvas.sample.generate import (
            SampleSettings,
            SampleSpec,
            default_size,
            default_spacing,
            generate_specs,
            sample_metadata,
        )
        from opencanvas.sample.loading import training_provenance
        from opencanvas.sample.pngmeta import save_png
        from opencanvas.web.neighbours import attribution, load_index, nearest

        r = job.request
        pipe = self.pipeline(r.run)
        width, height = default_size(pipe)
        settings = SampleSettings(steps=r.steps, guidance=r.guidance, sampler=r.sampler,
                                  negative_prompt=r.negative_prompt, spacing=default_spacing(pipe),
                                  width=width, height=height)
        seen: set[float] = set()

        def on_sigma(sigma: float) -> None:
            seen.add(round(sigma, 6))
            job.progress = min(0.9, 0.9 * len(seen) / max(1, r.steps))

        spec = SampleSpec(0, r.prompt, r.seed)
        image = generate_specs(_WithProgress(pipe, on_sigma), [spec], settings, batch_size=1)[0]
        meta = sample_metadata(spec, settings, r.run, pipe.weights_hash, training_provenance(pipe))
        rel = f"samples/web/{job.id}-s{r.seed}.png"
        save_png(self.ws.run_dir(r.run) / rel, image, meta)
        job.image, job.metadata = rel, meta
        clip, note = self.clip(pipe.config)
        index_key = f"{r.run}|{getattr(clip, 'name', None)}"
        if index_key not in self._indexes:
            self._indexes[index_key] = load_index(self.ws, r.run, clip)
        index = self._indexes[index_key]
        found = nearest(index, image, clip, k=r.k)
        credits = attribution(self.ws, [n["key"] for kind in found.values() for n in kind])
        for kind in found.values():
            for n in kind:
                n["attribution"] = credits.get(n["key"], {})
                n["thumb_url"] = f"/training-images/{r.run}/{n['index']}"
        job.neighbours = {**found, "clip_model": getattr(clip, "name", None), "note": note,
                          "index_size": len(index.keys)}
