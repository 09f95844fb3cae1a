"""`opencanvas eval`: sample N images per guidance scale, then score them.

    runs/<run>/eval/<id>/g<scale>/<index>.png   generated images (resumable: kept if present)
    runs/<run>/eval/<id>/report.json|md          metrics per guidance scale
    runs/<run>/eval/<id>/tradeoff.png            FD-vs-CLIP-score curve across guidance scales
    runs/<run>/eval/<id>/memorization.png        closest (generated, training) pairs

The id hashes everything that decides the images (model weights, prompts,
sampler, steps, seed, size, n), so the same command resumes and a changed one
starts afresh. Guidance 0 (the unconditional model) is always scored as a
baseline row: guided sampling should beat it on CLIP score.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
from PIL import Image

from opencanvas.sample.generate import SampleSettings, SampleSpec, SamplingPipeline, generate_specs
from opencanvas.sample.metrics import (
    feature_separation,
    frechet_distance_features,
    kernel_distance,
    memorization,
    phash_ints,
    precision_recall,
    prompt_retrieval,
    retrieval_chance,
)
from opencanvas.storage import atomic_write_json
from opencanvas.workspace import Workspace, is_name

METRICS = ("fid", "kid", "clip", "pr", "memorization", "retrieval")
BASELINE_GUIDANCE = 0.0
SMALL_N = 50                  # below this many images per scale, say the numbers are noise
UNSEPARATED_MEDIAN = 0.75     # median cosine of different reference images above which features cannot tell them apart


@dataclass(frozen=True)
class EvalOptions:
    """The settings of one evaluation besides model, prompts and reference."""

    metrics: tuple[str, ...] = METRICS
    guidance_scales: tuple[float, ...] = (1.5, 3.0, 5.0, 7.5)
    n: int = 64
    steps: int = 25
    sampler: str = "dpmpp-2m"
    seed: int = 0
    size: tuple[int, int] = (256, 256)
    batch_size: int = 8
    max_reference: int = 2000
    class_name: str | None = None      # a class-conditioned run's class (None: the null class)
    pr_k: int = 3
    cosine_threshold: float = 0.95     # memorization: share of samples this close to a training image
    phash_threshold: int = 4           # ... or within this many bits of perceptual hash
    kid_subsets: int = 100


@dataclass
class Scorers:
    """Feature extractors: `features` for FD/KID/PR/memorization, `clip` (ClipEvaluator) for CLIP score."""

    features: Any | None = None
    clip: Any | None = None
    notes: list[str] = field(default_factory=list)


def eval_id(weights_hash: str, prompts: Sequence[str], options: EvalOptions) -> str:
    key = json.dumps({"weights": weights_hash, "prompts": list(prompts), "n": options.n, "steps": options.steps,
                      "sampler": options.sampler, "seed": options.seed, "size": list(options.size),
                      # only when set, so evaluations without a class keep their ids
                      **({} if options.class_name is None else {"class": options.class_name})}, sort_keys=True)
    return f"{options.sampler}-{options.steps}s-n{options.n}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def guidance_dir(root: Path, guidance: float) -> Path:
    return root / f"g{guidance:g}"


def generate_for_guidance(pipeline: SamplingPipeline, prompts: Sequence[str], guidance: float, out: Path,
                          options: EvalOptions, meta: dict[str, Any]) -> list[Path]:
    """n images at one guidance scale, prompt i % len(prompts) with seed + i; existing PNGs are kept.

    The same seeds at every scale (common random numbers) make the curve smoother.
    """
    from opencanvas.progress import progress_bar
    from opencanvas.sample.generate import default_spacing, sample_metadata
    from opencanvas.sample.pngmeta import save_png

    specs = [SampleSpec(i, prompts[i % len(prompts)], options.seed + i) for i in range(options.n)]
    paths = [out / f"{s.index:05d}.png" for s in specs]
    todo = [s for s, p in zip(specs, paths, strict=True) if not p.exists()]   # PNGs are written atomically
    settings = SampleSettings(steps=options.steps, guidance=guidance, sampler=options.sampler,
                              spacing=default_spacing(pipeline), width=options.size[0], height=options.size[1],
                              class_name=options.class_name)
    with progress_bar() as bar:
        task = bar.add_task(f"eval g={guidance:g}", total=len(todo), unit="img")

        def save(batch: list[SampleSpec], images: list[Image.Image]) -> None:
            for spec, image in zip(batch, images, strict=True):
                save_png(paths[spec.index], image, sample_metadata(spec, settings, meta["model"],
                                                                   meta["weights_hash"], meta))
            bar.advance(task, len(batch))

        generate_specs(pipeline, todo, settings, batch_size=options.batch_size, on_batch=save, keep=False)
    return paths


def _unit(features: np.ndarray) -> np.ndarray:
    return features / np.linalg.norm(features, axis=1, keepdims=True).clip(min=1e-12)


def score_guidance(images: list[Image.Image], texts: list[str], ref_features: np.ndarray | None,
                   ref_hashes: np.ndarray, scorers: Scorers, options: EvalOptions) -> tuple[dict[str, Any], Any]:
    """Metrics of one guidance scale's images; also returns the memorization result (or None)."""
    row: dict[str, Any] = {"n": len(images)}
    wanted = set(options.metrics)
    if "clip" in wanted:
        assert scorers.clip is not None, "build_scorers gives a CLIP evaluator when 'clip' is asked for"
        scores = np.asarray(scorers.clip.clip_score(images, texts), dtype=np.float64)
        row["clip_score"] = float(scores.mean())
        row["clip_score_std"] = float(scores.std())
    if "retrieval" in wanted:
        assert scorers.clip is not None, "build_scorers gives a CLIP evaluator when 'retrieval' is asked for"
        row.update(retrieval_row(scorers.clip, images, texts))
    mem = None
    if scorers.features is not None and ref_features is not None and wanted & {"fid", "kid", "pr", "memorization"}:
        feats = scorers.features(images)
        f = scorers.features
        if "fid" in wanted:
            row[f.fd_name] = frechet_distance_features(ref_features, feats)
        if "kid" in wanted:
            mean, std = kernel_distance(ref_features, feats, num_subsets=options.kid_subsets)
            row[f.kid_name], row[f"{f.kid_name}_std"] = mean, std
        if "pr" in wanted:
            row["precision"], row["recall"] = precision_recall(ref_features, feats, k=options.pr_k)
        if "memorization" in wanted:
            mem = memorization(_unit(feats), _unit(ref_features), phash_ints(images), ref_hashes)
            row["memorization"] = mem.summary(options.cosine_threshold, options.phash_threshold)
    return row, mem


def retrieval_row(clip: Any, images: list[Image.Image], texts: list[str]) -> dict[str, float]:
    """Prompt retrieval: does the CLIP pick each image's own prompt out of all the distinct prompts?"""
    prompts = list(dict.fromkeys(texts))   # a caption given twice is one candidate, not two
    targets = np.array([prompts.index(t) for t in texts])
    hits = prompt_retrieval(clip.image_features(images), clip.text_features(prompts), targets)
    return {"prompt_retrieval_top1": hits[1], "prompt_retrieval_top5": hits[5]}


def caveats(options: EvalOptions, ref_features: np.ndarray | None, report: dict[str, Any]) -> list[str]:
    """Plain warnings that keep numbers from alarming or reassuring more than they can (issue 22, item 5)."""
    notes = []
    if options.n < SMALL_N:
        notes.append(f"n={options.n} images per guidance scale is too few for these numbers to mean much: FD and "
                     f"KID are biased at small n and every share moves in steps of 1/{options.n}. Use -n 200 or "
                     "more before comparing models or guidance scales.")
    if ref_features is not None and "memorization" in options.metrics:
        sep = feature_separation(_unit(ref_features), options.cosine_threshold)
        report["feature_separation"] = sep
        if sep["pairs"] and sep["median_cosine"] >= UNSEPARATED_MEDIAN:
            notes.append(f"The feature space ({report.get('features')}) cannot separate unrelated images: different "
                         f"reference images have median cosine {sep['median_cosine']:.3f}, and "
                         f"{sep['share_above_threshold']:.0%} of their pairs reach the memorization threshold "
                         f"{options.cosine_threshold}. So 'near a training image (features)' says nothing about "
                         "memorization here; read the perceptual-hash share and the gallery, or pass a stronger "
                         "--clip.")
    return notes


def memorization_reference(ref: Any, config: dict[str, Any]) -> dict[str, Any]:
    """Which set the memorization check searched, in words for the report and the model card."""
    subset = (config.get("data") or {}).get("subset")
    training = bool(subset) and ref.source == f"subset:{subset}"
    what = (f"the training subset `{subset}` ({len(ref.names)} images, held-out ones included, by design)" if training
            else f"the reference set {ref.source} ({len(ref.names)} images)")
    return {"source": ref.source, "count": len(ref.names), "training_subset": training, "description": what}


def run_evaluation(ws: Workspace, run: str, prompts: Sequence[str], reference: str, pipeline: SamplingPipeline,
                   scorers: Scorers, options: EvalOptions = EvalOptions(), model: str | None = None,
                   provenance: dict[str, str] | None = None, prompts_source: str = "") -> dict[str, Any]:
    """Generate (resumably) and score resolved inputs; writes report.json/md and the plots; returns the report."""
    from opencanvas.sample.evalsets import load_reference
    from opencanvas.sample.report import memorization_gallery, tradeoff_plot, write_markdown

    if not prompts:
        raise ValueError("no prompts to evaluate")
    root = ws.run_dir(run) / "eval" / eval_id(pipeline.weights_hash, prompts, options)
    meta = {"model": model or run, "weights_hash": pipeline.weights_hash, **(provenance or {})}
    ref = load_reference(ws, reference, options.max_reference)
    ref_features = scorers.features(ref.images) if scorers.features is not None else None
    ref_hashes = phash_ints(ref.images) if "memorization" in options.metrics else np.zeros(0, np.uint64)
    texts = [prompts[i % len(prompts)] for i in range(options.n)]
    rows, mems = [], []
    for guidance in (BASELINE_GUIDANCE, *options.guidance_scales):
        paths = generate_for_guidance(pipeline, prompts, guidance, guidance_dir(root, guidance), options, meta)
        images = [Image.open(p).convert("RGB") for p in paths]
        row, mem = score_guidance(images, texts, ref_features, ref_hashes, scorers, options)
        rows.append({"guidance": guidance, "baseline": guidance == BASELINE_GUIDANCE, **row})
        if mem is not None:
            mems.append((guidance, images, mem))
    report = {
        "run": run, "model": meta["model"], "weights_hash": pipeline.weights_hash, "eval_id": root.name,
        "prompts": {"source": prompts_source, "count": len(prompts)},
        "reference": {"source": ref.source, "count": len(ref.names)},
        "settings": {**asdict(options), "size": list(options.size)},
        "features": getattr(scorers.features, "name", None),
        "fd_metric": getattr(scorers.features, "fd_name", None),
        "kid_metric": getattr(scorers.features, "kid_name", None),
        "clip_model": getattr(scorers.clip, "name", None) if "clip" in options.metrics else None,
        "clip_provenance": getattr(scorers.clip, "provenance", None) if "clip" in options.metrics else None,
        "license_policy": meta.get("license_policy"), "catalog_hash": meta.get("catalog_hash"),
        "notes": scorers.notes, "rows": rows,
    }
    report["notes"] = scorers.notes + caveats(options, ref_features, report)
    if mems:
        report["memorization_reference"] = memorization_reference(ref, getattr(pipeline, "config", {}) or {})
    if "retrieval" in options.metrics:
        chance = retrieval_chance(len(set(texts)))
        report["prompt_retrieval_chance"] = {"top1": chance[1], "top5": chance[5], "prompts": len(set(texts))}
    if "clip_score" in rows[0] and len(rows) > 1:
        # The check a demo makes: guidance must buy prompt alignment over the unconditional model.
        report["clip_gain_over_unconditional"] = max(r["clip_score"] for r in rows[1:]) - rows[0]["clip_score"]
    if mems:
        report["memorization_gallery"] = memorization_gallery(root / "memorization.png", mems, ref, options)
    if report["fd_metric"] and "clip_score" in rows[0] and report["fd_metric"] in rows[0]:
        tradeoff_plot(root / "tradeoff.png", rows, report["fd_metric"], cast(str | None, report["clip_model"]))
        report["tradeoff_plot"] = "tradeoff.png"
    atomic_write_json(root / "report.json", report)
    write_markdown(root / "report.md", report)
    return report


def resolve_prompts(ws: Workspace, prompts: str | Path | Sequence[str], config: dict[str, Any]
                    ) -> tuple[list[str], str]:
    """`heldout`, a prompt file, or a list of prompts -> (prompts, description of the source)."""
    from opencanvas.sample.evalsets import HELDOUT_FRACTION, heldout_prompts
    from opencanvas.sample.prompts import read_prompts

    if isinstance(prompts, str) and prompts == "heldout":
        return heldout_prompts(ws, config), f"heldout captions (key-hash fraction < {HELDOUT_FRACTION})"
    if isinstance(prompts, (str, Path)):
        return read_prompts(Path(prompts)), str(prompts)
    return list(prompts), "list"


def load_clip(ws: Workspace, config: dict[str, Any], spec: str | None, device: str) -> Any:
    """The CLIP evaluator: `spec`, else the run's text encoder when it is a catalog CLIP under clips/."""
    from opencanvas.components.loading import load_clip_evaluator

    if spec is None:
        text_encoder = str(config.get("data", {}).get("text_encoder") or "")
        if not is_name(text_encoder) or not ws.clip_dir(text_encoder).is_dir():
            raise FileNotFoundError(
                f"CLIP-based metrics need a CLIP model, and the run's text encoder {text_encoder!r} is not a catalog "
                f"CLIP under {(ws.root / 'clips').as_posix()}: pass --clip NAME_OR_PATH (a CLIP under clips/, a local "
                "transformers CLIPModel folder with its tokenizer, or a hub id)")
        spec = text_encoder
    return load_clip_evaluator(ws, spec, device=device)


def build_scorers(ws: Workspace, config: dict[str, Any], metrics: Sequence[str], inception: Path | None,
                  clip: Any, device: str = "cpu") -> Scorers:
    """Feature extractors for the requested metrics; `clip` is a spec, None (the run's), or an evaluator."""
    from opencanvas.sample.features import ClipFeatures, InceptionFeatures

    distribution = set(metrics) & {"fid", "kid", "pr", "memorization"}
    needs_clip = bool(set(metrics) & {"clip", "retrieval"}) or (bool(distribution) and inception is None)
    evaluator: Any = None  # a ClipEvaluator whenever needs_clip
    if needs_clip:
        evaluator = clip if clip is not None and not isinstance(clip, (str, Path)) else \
            load_clip(ws, config, None if clip is None else str(clip), device)
    scorers = Scorers(clip=evaluator)
    if distribution:
        if inception is not None:
            scorers.features = InceptionFeatures(Path(inception), device=device)
        else:
            scorers.features = ClipFeatures(evaluator)
            scorers.notes.append("No --inception weights: distances are Frechet/kernel distances in CLIP image "
                                 f"features ({evaluator.name}), reported as FD-CLIP/KID-CLIP; they are not FID "
                                 "and not comparable to published FID numbers.")
    return scorers


def evaluate(ws: Workspace, run: str, prompts: str | Path | Sequence[str], reference: str,
             metrics: Sequence[str] = METRICS, guidance_scales: Sequence[float] = (1.5, 3.0, 5.0, 7.5),
             n: int = 64, *, steps: int = 25, sampler: str = "dpmpp-2m", seed: int = 0,
             size: tuple[int, int] | None = None, batch_size: int = 8, max_reference: int = 2000,
             inception: Path | None = None, clip: Any = None, ema: bool = True, device: str = "cpu",
             pipeline: SamplingPipeline | None = None, class_name: str | None = None) -> dict[str, Any]:
    """Evaluate a run: `prompts` is "heldout", a prompt file or a list; `reference` a subset name or a directory.

    class_name: the class every image is generated with (a class-conditioned run; None: the null class).

    `pipeline` overrides loading the run (tests, or a model already in memory).
    """
    from opencanvas.sample.generate import default_size, model_sampler
    from opencanvas.sample.loading import load_model, training_provenance

    if n < 2:
        raise ValueError(f"-n {n}: every metric needs at least 2 images per guidance scale; use -n 2 or more")
    if n < 4 and "pr" in metrics:
        rest = ",".join(m for m in metrics if m != "pr") or "clip"
        raise ValueError(f"precision/recall (k=3 nearest neighbours) needs -n 4 or more images per guidance scale, "
                         f"got -n {n}: raise -n, or leave pr out of --metrics (--metrics {rest})")
    unknown = set(metrics) - set(METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {', '.join(METRICS)}")
    if pipeline is None:
        pipeline = load_model(ws, run, None, ema=ema, device=device)
    prompt_list, source = resolve_prompts(ws, prompts, pipeline.config)
    scorers = build_scorers(ws, pipeline.config, metrics, inception, clip, device)
    options = EvalOptions(metrics=tuple(metrics), guidance_scales=tuple(float(g) for g in guidance_scales), n=n,
                          steps=steps, sampler=model_sampler(pipeline, sampler), seed=seed,
                          size=size or default_size(pipeline),
                          batch_size=batch_size, max_reference=max_reference, class_name=class_name)
    if class_name is not None:  # a one-line error before any image
        pipeline.conditioning([""], class_name)
    return run_evaluation(ws, run, prompt_list, reference, pipeline, scorers, options, model=run,
                          provenance=training_provenance(pipeline), prompts_source=source)
