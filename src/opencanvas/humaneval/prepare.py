"""`humaneval prepare`: every model's image for the same prompts and seeds, made ahead of time.

A model is a training run (`runs/<name>/`) or any diffusers pipeline folder. The images served to raters
are plain PNGs with opaque names and no text chunks (the sample metadata, which names the model, is kept
in the study database instead), so nothing on the page or in the file tells a rater which model made it.
Re-running the same command makes only what is missing.
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from opencanvas.humaneval.store import Study, open_study
from opencanvas.storage import atomic_write_bytes
from opencanvas.workspace import Workspace, is_name


@dataclass(frozen=True)
class StudyPrompt:
    text: str
    category: str | None = None
    challenge: str | None = None


def read_study_prompts(path: Path) -> list[StudyPrompt]:
    """Plain text (one prompt a line) or the PartiPrompts TSV layout (Prompt / Category / Challenge columns)."""
    from opencanvas.sample.prompts import read_prompts

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found: give a text file (one prompt a line), a "
                                "PartiPrompts TSV, or `heldout`")
    with path.open(encoding="utf-8", newline="") as f:
        first = f.readline()
    if first.split("\t")[0].strip() == "Prompt":
        with path.open(encoding="utf-8", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        return [StudyPrompt(r["Prompt"].strip(), (r.get("Category") or "").strip() or None,
                            (r.get("Challenge") or "").strip() or None) for r in rows if (r["Prompt"] or "").strip()]
    return [StudyPrompt(p) for p in read_prompts(path)]


def choose(prompts: Sequence[StudyPrompt], n: int | None, seed: int) -> list[StudyPrompt]:
    """n prompts drawn without replacement by `seed` (in file order), or all of them."""
    if not prompts:
        raise ValueError("no prompts")
    if n is None or n >= len(prompts):
        return list(prompts)
    picked = np.sort(np.random.default_rng(seed).choice(len(prompts), size=n, replace=False))
    return [prompts[int(i)] for i in picked]


def load_study_model(ws: Workspace, spec: str, device: str = "cpu") -> Any:
    """A run name under runs/, else a diffusers pipeline folder."""
    from opencanvas.sample.loading import load_model

    if is_name(spec) and ws.run_dir(spec).is_dir():   # a path or hub id is not a run name
        return load_model(ws, spec, None, device=device)
    if Path(spec).is_dir():
        return load_model(ws, None, Path(spec), device=device)
    raise FileNotFoundError(f"model {spec!r} is neither a run under {(ws.root / 'runs').as_posix()} nor a diffusers "
                            "pipeline folder: train a run or `opencanvas export` one")


def _png(image: Any) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")   # no metadata: the page must not name the model
    return buf.getvalue()


def prepare(ws: Workspace, name: str, models: Sequence[str], prompts: str | Path | list[StudyPrompt],
            n: int | None = None,
            seed: int = 0, steps: int = 25, guidance: float = 7.5, sampler: str = "dpmpp-2m", batch_size: int = 8,
            device: str = "cpu", pipelines: dict[str, Any] | None = None) -> dict[str, Any]:
    """Make (or finish) study `name`. `prompts`: a file, `heldout`, or StudyPrompts (the web's admin form);
    `pipelines` maps a model spec to a loaded pipeline (tests, reuse)."""
    from opencanvas.sample.evaluate import resolve_prompts
    from opencanvas.sample.generate import (
        SampleSettings,
        SampleSpec,
        default_size,
        default_spacing,
        generate_specs,
        sample_metadata,
    )
    from opencanvas.sample.loading import model_name, training_provenance

    if len(models) < 2 or len(set(models)) != len(models):
        raise ValueError("a study compares at least two different models: give --a and --b (or --model twice)")
    loaded = {spec: (pipelines or {}).get(spec) or load_study_model(ws, spec, device) for spec in models}
    if isinstance(prompts, list):
        chosen = choose(prompts, n, seed)
    elif str(prompts) == "heldout":
        texts, _ = resolve_prompts(ws, "heldout", loaded[models[0]].config)
        chosen = choose([StudyPrompt(t) for t in texts], n, seed)
    else:
        chosen = choose(read_study_prompts(Path(prompts)), n, seed)
    study = open_study(ws, name, create=True)
    source = f"{len(prompts)} prompts given" if isinstance(prompts, list) else str(prompts)
    settings_json = json.dumps({"models": list(models), "prompts": source, "n": n, "seed": seed,
                                "steps": steps, "guidance": guidance, "sampler": sampler}, sort_keys=True)
    if study.meta("settings", "") not in ("", settings_json):
        raise ValueError(f"study {name!r} was prepared with other settings ({study.meta('settings')}): "
                         "choose a new --name")
    study.set_meta("settings", settings_json)
    for i, p in enumerate(chosen):
        study.add_prompt(i, p.text, p.category, p.challenge, seed + i)
    made = 0
    for spec in models:
        pipe = loaded[spec]
        label = model_name(pipe, spec if ws.run_dir(spec).is_dir() else None)
        model_id = study.add_model(label, spec, pipe.weights_hash, training_provenance(pipe))
        width, height = default_size(pipe)
        settings = SampleSettings(steps=steps, guidance=guidance, sampler=sampler, spacing=default_spacing(pipe),
                                  width=width, height=height)
        todo = [SampleSpec(i, p.text, seed + i) for i, p in enumerate(chosen) if not study.has_image(i, model_id)]

        def save(batch: list[SampleSpec], images: list[Any], model_id: int = model_id, label: str = label,
                 settings: SampleSettings = settings, pipe: Any = pipe) -> None:
            for spec_, image in zip(batch, images, strict=True):
                image_id = secrets.token_hex(8)
                rel = f"{name}/images/{image_id}.png"
                atomic_write_bytes(study.path.parent / rel, _png(image))   # the file first, then its row
                meta = sample_metadata(spec_, settings, label, pipe.weights_hash, training_provenance(pipe))
                study.add_image(image_id, spec_.index, model_id, rel, meta)

        generate_specs(pipe, todo, settings, batch_size=batch_size, on_batch=save, keep=False)
        made += len(todo)
    pairs = study.make_pairs()
    return {"study": name, "path": ws.relative(study.path),
            "models": [m["name"] for m in study.models()], "prompts": len(chosen), "images_made": made,
            "pairs": pairs}


def add_raters(ws: Workspace, name: str, count: int, label: str = "") -> list[str]:
    if count < 1:
        raise ValueError("--add must be at least 1")
    return open_study(ws, name).add_raters(count, label)


def export_votes(ws: Workspace, name: str, out: Path | None = None) -> Path:
    """Every raw vote (with `current` marking the newest per rater, pair and question) to Parquet."""
    import pyarrow as pa

    from opencanvas.storage import atomic_write_parquet

    study: Study = open_study(ws, name)
    rows = study.raw_votes()
    schema = pa.schema([("id", pa.int64()), ("pair_id", pa.string()), ("rater_id", pa.int64()),
                        ("rater", pa.string()), ("question", pa.string()), ("choice", pa.string()),
                        ("created_at", pa.string()), ("left_image", pa.string()), ("right_image", pa.string()),
                        ("left_model", pa.string()), ("right_model", pa.string()), ("prompt_id", pa.int64()),
                        ("prompt", pa.string()), ("category", pa.string()), ("current", pa.bool_())])
    path = Path(out) if out else study.path.with_suffix("") / "votes.parquet"
    atomic_write_parquet(path, pa.Table.from_pylist(rows, schema=schema), metadata={"study": name})
    return path
