"""CLI verbs of this stage: `opencanvas sample` and `opencanvas eval` (registered by opencanvas.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, fail, open_workspace, print_settings, require
from opencanvas.diffusion.names import SAMPLER_NAMES, SPACINGS
from opencanvas.dtypes import DTYPE_HELP, check_dtype_name
from opencanvas.marking.options import C2paCertOption, C2paKeyOption, C2paOmitPromptOption, apply_marking

RunOption = Annotated[str | None, typer.Option("--run", help="Training run under runs/ to sample from.")]
PipelineOption = Annotated[Path | None, typer.Option(
    "--pipeline", help="Exported diffusers pipeline folder (unet, vae, text_encoder, tokenizer, scheduler).",
    file_okay=False)]
StepsOption = Annotated[int | None, typer.Option(
    "--steps", min=1, help="Sampler steps (default: 25, or a distilled student's own step count).")]
SamplerOption = Annotated[str, typer.Option("--sampler", help=f"One of: {', '.join(SAMPLER_NAMES)}.")]
SpacingOption = Annotated[str | None, typer.Option(
    "--spacing", help=f"Sigma spacing: {', '.join(SPACINGS)}. Default: trailing for zero-terminal-SNR "
    "runs, else leading (as SD).")]
DtypeOption = Annotated[str, typer.Option("--dtype", help=f"Model dtype: {DTYPE_HELP}.")]
SeedOption = Annotated[int, typer.Option("--seed", help="Seed of the first image; image i uses seed + i.")]
NegativeOption = Annotated[str, typer.Option("--negative-prompt", help="Prompt to guide away from (CFG uncond).")]
RescaleOption = Annotated[float, typer.Option(
    "--guidance-rescale", min=0.0, max=1.0, help="Guidance rescale phi (Lin et al. 2023); 0 disables.")]
BatchOption = Annotated[int, typer.Option("--batch-size", min=1, help="Images per sampler batch.")]
DeviceOption = Annotated[str, typer.Option("--device", help="Torch device, e.g. cpu, cuda, cuda:1.")]
NoEmaOption = Annotated[bool, typer.Option("--no-ema", help="Use the raw weights instead of the EMA weights.")]
ClassOption = Annotated[str | None, typer.Option(
    "--class", help="Class of a run trained with --class-column (default: the null class, i.e. no class).")]


def parse_size(text: str | None) -> tuple[int, int] | None:
    """'512x768' -> (512, 768) as (width, height); '512' -> square."""
    if text is None:
        return None
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise ValueError(f"bad --size {text!r}: use WxH, e.g. 512x512") from None
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2 or min(parts) <= 0:
        raise ValueError(f"bad --size {text!r}: use WxH, e.g. 512x512")
    return parts[0], parts[1]


def _check_choices(sampler: str, spacing: str | None, dtype: str) -> None:
    if sampler not in SAMPLER_NAMES:
        raise fail(f"unknown --sampler {sampler!r}: choose one of {', '.join(SAMPLER_NAMES)}")
    if spacing is not None and spacing not in SPACINGS:
        raise fail(f"unknown --spacing {spacing!r}: choose one of {', '.join(SPACINGS)}")
    try:
        check_dtype_name(dtype)
    except ValueError as err:
        raise fail(str(err)) from None


def sample_command(
    prompts: Annotated[list[str] | None, typer.Argument(help="Prompts (quote each one).")] = None,
    slot_prompts: Annotated[list[str] | None, typer.Option(
        "--prompt", help="Repeatable. For a multi-caption run: the captions of ONE prompt, one per caption slot "
        "(--prompt A --prompt B; an argument prompt fills every slot). For other runs: one more prompt.")] = None,
    class_name: ClassOption = None,
    out: Annotated[Path, typer.Option("--out", help="Output directory for PNGs and grid.png (a relative path is "
                                      "taken from the current directory, not from -w).",
                                      file_okay=False)] = ...,  # type: ignore[assignment]
    run: RunOption = None,
    pipeline: PipelineOption = None,
    n: Annotated[int, typer.Option("-n", "--num-images", min=1, help="Images per prompt.")] = 1,
    steps: StepsOption = None,
    guidance: Annotated[float, typer.Option("--guidance", min=0.0, help="Classifier-free guidance scale.")] = 7.5,
    guidance_rescale: RescaleOption = 0.0,
    sampler: SamplerOption = "dpmpp-2m",
    spacing: SpacingOption = None,
    seed: Annotated[int, typer.Option(
        "--seed", help="Seed of each prompt's first image: image j of every prompt uses seed + j (the seeds "
        "restart per prompt, so one prompt's images do not depend on the others).")] = 0,
    negative_prompt: NegativeOption = "",
    image: Annotated[Path | None, typer.Option(
        "--image", help="Reference image for image variations (a run trained with --conditioning text+image); "
        "with prompts, text and image mix with separate guidance scales.", dir_okay=False)] = None,
    image_guidance: Annotated[float, typer.Option(
        "--image-guidance", min=0.0, help="With --image: the image's guidance scale (--guidance is the text's).")]
    = 3.0,
    size: Annotated[str | None, typer.Option("--size", help="WxH in pixels; default: the run's resolution.")]
    = None,
    no_ema: NoEmaOption = False,
    prompts_file: Annotated[Path | None, typer.Option(
        "--prompts-file", help="Prompt file: lines, JSONL with 'prompt', PartiPrompts .tsv or COCO captions .json.",
        dir_okay=False)] = None,
    batch_size: BatchOption = 8,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    image_format: Annotated[str, typer.Option("--format", help="Image format: png, jpeg or webp.")] = "png",
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    c2pa_omit_prompt: C2paOmitPromptOption = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Generate images with classifier-free guidance; each PNG carries its prompt, seed and provenance."""
    from opencanvas.diffusion.conditioning import NO_IMAGE_CONDITIONING
    from opencanvas.sample.generate import (
        SampleSettings,
        default_size,
        default_spacing,
        default_steps,
        model_sampler,
        plan,
        sample_to_dir,
    )
    from opencanvas.sample.loading import load_model, model_name, training_provenance
    from opencanvas.sample.prompts import read_prompts

    _check_choices(sampler, spacing, dtype)
    if image_format not in ("png", "jpeg", "webp"):
        raise fail(f"unknown --format {image_format!r}: choose png, jpeg or webp")
    all_prompts = list(prompts or [])
    try:
        if prompts_file is not None:
            all_prompts += read_prompts(prompts_file)
        wh = parse_size(size)
    except (ValueError, FileNotFoundError) as e:
        raise fail(str(e)) from None
    if image is not None and not all_prompts and not slot_prompts:
        all_prompts = [""]  # an image variation: the empty prompt, guided by the image alone
    if not all_prompts and not slot_prompts:
        raise fail("no prompts: pass PROMPT arguments, --prompt TEXT or --prompts-file F")
    if image is not None and not image.is_file():
        raise fail(f"--image {image} is not a file")
    ws = open_workspace(workspace)
    if run is not None and pipeline is None:
        require(ws, "run", run)
    apply_marking(ws, c2pa_cert, c2pa_key, c2pa_omit_prompt)  # a bad cert/key fails before any image
    try:
        model = load_model(ws, run, pipeline, ema=not no_ema, device=device, dtype=dtype)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise fail(str(e)) from None
    if image is not None:  # a run without image conditioning, or a file that is no image: before any sample
        if model.config.get("conditioning") != "text+image":
            raise fail(NO_IMAGE_CONDITIONING)
        try:
            model.image_embedding(image)
        except ValueError as e:
            raise fail(str(e)) from None
    if slot_prompts:
        all_prompts += join_slot_prompts(model.config, slot_prompts)
    width, height = wh or default_size(model)
    settings = SampleSettings(steps=steps or default_steps(model), guidance=guidance,
                              guidance_rescale=guidance_rescale, sampler=model_sampler(model, sampler),
                              spacing=spacing or default_spacing(model),  # type: ignore[arg-type]
                              negative_prompt=negative_prompt, width=width, height=height, class_name=class_name,
                              image=None if image is None else str(image), image_guidance=image_guidance)
    try:  # a bad --class or too many --prompt captions: one line, before any image
        model.conditioning(all_prompts[:1], class_name)
    except ValueError as e:
        raise fail(str(e)) from None
    name, provenance = model_name(model, run), training_provenance(model)
    print_settings("sample", {"model": name, "weights_hash": model.weights_hash[:16], **settings.to_dict(),
                              "prompts": len(all_prompts), "images": len(all_prompts) * n, "seed": seed,
                              **provenance, "out": str(out)})
    try:
        paths = sample_to_dir(model, plan(all_prompts, n, seed), settings, out, name, provenance, batch_size,
                              image_format)
    except ValueError as e:
        raise fail(str(e)) from None
    typer.echo(f"wrote {len(paths)} images and {out / 'grid.png'}")


def join_slot_prompts(config: dict, slot_prompts: list[str]) -> list[str]:
    """--prompt values: one multi-caption prompt "A || B" for a multi-caption run, else separate prompts."""
    from opencanvas.train.pipeline import SLOT_SEPARATOR, caption_slot_count

    return [SLOT_SEPARATOR.join(slot_prompts)] if caption_slot_count(config) else list(slot_prompts)


def _floats(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"bad --guidance {text!r}: use comma-separated numbers, e.g. 1.5,3,5,7.5") from None
    if not values or min(values) < 0:
        raise ValueError(f"bad --guidance {text!r}: give at least one scale >= 0")
    return values


def eval_command(
    prompts: Annotated[str, typer.Option(
        "--prompts", help="'heldout' (captions of the training subset's held-out keys) or a prompt file "
        "(lines, JSONL, PartiPrompts .tsv, COCO captions .json).")] = ...,  # type: ignore[assignment]
    reference: Annotated[str, typer.Option(
        "--reference", help="Reference images: a fetched subset name or a directory of images.")]
    = ...,  # type: ignore[assignment]
    run: RunOption = None,
    pipeline: PipelineOption = None,
    metrics: Annotated[str, typer.Option("--metrics", help="Comma-separated: fid,kid,clip,pr,memorization,"
                                          "retrieval (prompt retrieval top-1/top-5 by the CLIP).")]
    = "fid,kid,clip,pr,memorization,retrieval",
    guidance: Annotated[str, typer.Option("--guidance", help="Comma-separated guidance scales; g=0 "
                                          "(unconditional) is always added as a baseline.")] = "1.5,3,5,7.5",
    n: Annotated[int, typer.Option("-n", "--num-images", min=1, help="Images per guidance scale.")] = 64,
    inception: Annotated[Path | None, typer.Option(
        "--inception", help="clean-fid's inception-2015-12-05.pt (TorchScript): gives FID/KID; without it "
        "distances are FD-CLIP/KID-CLIP.", dir_okay=False)] = None,
    clip: Annotated[str | None, typer.Option(
        "--clip", help="CLIP for CLIP score and FD-CLIP: a CLIP under clips/, a local CLIPModel folder or a hub id. "
        "Default: the run's text encoder when it is a catalog CLIP.")] = None,
    steps: StepsOption = None,
    sampler: SamplerOption = "dpmpp-2m",
    seed: SeedOption = 0,
    size: Annotated[str | None, typer.Option("--size", help="WxH; default: the run's resolution.")] = None,
    max_reference: Annotated[int, typer.Option("--max-reference", min=4, help="Most reference images to load.")]
    = 2000,
    batch_size: BatchOption = 8,
    device: DeviceOption = "cpu",
    dtype: DtypeOption = "float32",
    no_ema: NoEmaOption = False,
    class_name: ClassOption = None,
    c2pa_cert: C2paCertOption = None,
    c2pa_key: C2paKeyOption = None,
    c2pa_omit_prompt: C2paOmitPromptOption = False,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Score a run across guidance scales: FID/KID (or FD-CLIP/KID-CLIP), CLIP score, precision/recall, memorization.

    Images go to runs/RUN/eval/ID/g<scale>/ and are kept, so the same command resumes.
    """
    from opencanvas.sample.evaluate import METRICS, evaluate
    from opencanvas.sample.generate import default_steps
    from opencanvas.sample.loading import load_model

    _check_choices(sampler, None, dtype)
    wanted = tuple(m.strip() for m in metrics.split(",") if m.strip())
    if bad := [m for m in wanted if m not in METRICS]:
        raise fail(f"unknown --metrics {', '.join(bad)}: choose from {', '.join(METRICS)}")
    try:
        scales, wh = _floats(guidance), parse_size(size)
    except ValueError as e:
        raise fail(str(e)) from None
    if run is None and pipeline is None:
        raise fail("give --run NAME (or --pipeline DIR to evaluate an exported/external diffusers folder)")
    ws = open_workspace(workspace)
    if run is not None:
        require(ws, "run", run)
    apply_marking(ws, c2pa_cert, c2pa_key, c2pa_omit_prompt)  # a bad cert/key fails before any image
    name = run or pipeline.name  # type: ignore[union-attr]
    print_settings("eval", {"run": name, "pipeline": str(pipeline or "-"), "prompts": prompts,
                            "reference": reference, "metrics": list(wanted), "guidance": [0.0, *scales], "n": n,
                            "steps": steps or "(model's default)", "sampler": sampler,
                            "inception": str(inception or "-"),
                            "clip": clip or "(run's catalog CLIP)", "device": device})
    try:
        model = load_model(ws, None if pipeline else run, pipeline, ema=not no_ema, device=device, dtype=dtype)
        report = evaluate(ws, name, prompts, reference, wanted, scales, n, steps=steps or default_steps(model),
                          sampler=sampler, seed=seed,
                          size=wh, batch_size=batch_size, max_reference=max_reference, inception=inception,
                          clip=clip, device=device, pipeline=model, class_name=class_name)
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise fail(str(e)) from None
    _print_rows(report)
    typer.echo(f"report: {ws.run_dir(name) / 'eval' / report['eval_id'] / 'report.md'}")


def _print_rows(report: dict) -> None:
    from rich.table import Table

    from opencanvas.cli_common import console

    keys = [k for k in ("clip_score", "prompt_retrieval_top1", report.get("fd_metric"), report.get("kid_metric"),
                        "precision", "recall")
            if k and k in report["rows"][0]]
    table = Table("guidance", *keys, "memorized", title=f"eval {report['eval_id']}")
    for row in report["rows"]:
        mem = row.get("memorization", {}).get("share_cosine_above")
        table.add_row(f"{row['guidance']:g}" + (" (uncond)" if row["baseline"] else ""),
                      *[f"{row[k]:.4g}" for k in keys], "-" if mem is None else f"{mem:.3f}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.command("sample")(sample_command)
    app.command("eval")(eval_command)
