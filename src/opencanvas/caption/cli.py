"""`opencanvas caption`: synthetic captions ("telephoning"), and `opencanvas caption stats`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.caption.captioners import CaptionerName
from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require
from opencanvas.dtypes import DTYPE_HELP, check_dtype_name
from opencanvas.engines import Engine

CAPTION_HELP = """Caption every ok image of a subset into captions/<name>/part-NNNNN.parquet.

Captioners: blip2 (the paper's BLIP-2, default Salesforce/blip2-opt-2.7b), blip, hf (any transformers
image-text-to-text model, with --prompt), metadata (title + description + tags, offline), title and
title-tags (the title alone, and with its keywords), commoncatalog
(the BLIP-2 caption shipped in CommonCatalog), gpic-tag, gpic-short, gpic-medium, gpic-long (the caption of
that caption_type shipped with GPIC), pd12m (PD12M's caption), shipped (the caption column of `catalog ingest
table --captions NAME`; use --name NAME).

Re-run the same command after a crash: finished shards are skipped. Report with
`opencanvas caption stats --subset NAME`.

Example: opencanvas caption --subset shapes --captioner blip2 --model models/blip2-opt-2.7b --device cuda
"""


caption_app = typer.Typer(help=CAPTION_HELP, invoke_without_command=True, no_args_is_help=False,
                          rich_markup_mode=None)


@caption_app.callback()
def caption_command(
    ctx: typer.Context,
    subset: Annotated[str | None, typer.Option(help="Subset whose fetched images to caption.")] = None,
    captioner: Annotated[CaptionerName | None, typer.Option(
        metavar="NAME", help="Which captioner to run (the list above).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Local model directory (works offline) or hub id. Default for blip2: Salesforce/blip2-opt-2.7b; "
             "get it with `huggingface-cli download Salesforce/blip2-opt-2.7b --local-dir DIR`.")] = None,
    name: Annotated[str | None, typer.Option(
        help="Output table captions/<name>/ (default: the captioner). Use one name per model or setting.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per generate() call.", min=1)] = 16,
    device: Annotated[str, typer.Option(help="torch device: cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(help=f"Model dtype: {DTYPE_HELP}.")] = "auto",
    prompt: Annotated[str, typer.Option(help="Text prompt the caption continues (e.g. 'a picture of'; "
                                             "for chat models the instruction).")] = "",
    max_new_tokens: Annotated[int, typer.Option(help="Longest caption, in tokens.", min=1)] = 30,
    num_beams: Annotated[int, typer.Option(help="Beam search width (1 = greedy or sampling).", min=1)] = 1,
    sample: Annotated[bool, typer.Option("--sample/--greedy", help="Sample tokens instead of greedy/beam.")] = False,
    temperature: Annotated[float, typer.Option(help="Sampling temperature (with --sample).")] = 1.0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling mass (with --sample).")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="Penalty > 1 discourages repeated tokens.")] = 1.0,
    seed: Annotated[int, typer.Option(help="Seed; each (shard, batch) derives its own, so reruns agree.")] = 0,
    crop_size: Annotated[int, typer.Option(
        help="Center-crop to a square and resize to this many px before the model's processor (paper: 512; "
             "0 = no crop).", min=0)] = 512,
    loader_workers: Annotated[int, typer.Option(
        help="Background processes decoding and resizing images (0 = in the main process).", min=0)] = 2,
    engine: Annotated[Engine, typer.Option(
        help="local, or ray (one captioner actor per GPU; set RAY_ADDRESS to join a cluster).")] = "local",
    ray_actors: Annotated[int | None, typer.Option(
        help="With --engine ray: captioner actors (default: one per GPU, or per CPU with --device cpu).",
        min=1)] = None,
    rank: Annotated[int, typer.Option(help="This process's rank for SLURM-style launches.", min=0)] = 0,
    world: Annotated[int, typer.Option(help="Number of processes sharing the shards.", min=1)] = 1,
    workspace: WorkspaceOption = Path("."),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    if subset is None or captioner is None:
        raise fail("give --subset NAME and --captioner NAME (see `opencanvas caption --help`)")
    try:
        dtype = check_dtype_name(dtype)
    except ValueError as e:
        raise fail(str(e)) from None
    from opencanvas.caption.captioners import GenerationSettings
    from opencanvas.caption.stage import caption
    from opencanvas.caption.vision import CaptionModelError

    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise fail(f"--device {device} but torch sees no CUDA GPU: use --device cpu or a CUDA build of torch")
    ws = open_workspace(workspace)
    require(ws, "fetched", subset)
    generation = GenerationSettings(max_new_tokens=max_new_tokens, num_beams=num_beams, do_sample=sample,
                                    temperature=temperature, top_p=top_p,
                                    repetition_penalty=repetition_penalty, seed=seed)
    print_settings("caption", {"workspace": str(ws.root), "subset": subset, "captioner": captioner,
                               "model": model or "(default)", "name": name or captioner,
                               "batch_size": batch_size, "device": device, "dtype": dtype,
                               "prompt": prompt, "generation": generation.to_json(), "crop_size": crop_size,
                               "loader_workers": loader_workers, "engine": engine,
                               "ray_actors": ray_actors if ray_actors is not None else "auto",
                               "rank/world": f"{rank}/{world}"})
    try:
        stats = caption(ws, subset, captioner, model=model, batch_size=batch_size, device=device,
                        dtype=dtype, name=name, prompt=prompt, generation=generation, crop_size=crop_size,
                        loader_workers=loader_workers, engine=engine, rank=rank, world=world,
                        ray_actors=ray_actors)
    except (CaptionModelError, FileNotFoundError, ValueError) as e:
        raise fail(str(e)) from e
    console.print(f"captioned {stats.images} images in {stats.shards_done} shards "
                  f"({stats.shards_skipped} already done) at {stats.images_per_s:.1f} img/s; "
                  f"flagged: {stats.flagged or 'none'} -> {ws.relative(ws.captions_dir(stats.name))}/")


@caption_app.command("stats")
def stats_command(
    subset: Annotated[str, typer.Option(help="Subset to report on.")],
    sample: Annotated[int, typer.Option(help="Images in the metadata-vs-synthetic table.", min=1)] = 8,
    seed: Annotated[int, typer.Option(help="Seed for choosing the sampled images.")] = 0,
    tokenizer: Annotated[str | None, typer.Option(
        help="Tokenizer dir to count tokens with (e.g. your text encoder's); default: regex word pieces.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Per captioner: count, flags, length histogram (PNG), vocabulary, duplicates, sample table (Markdown)."""
    from opencanvas.caption.stats import caption_stats

    ws = open_workspace(workspace)
    require(ws, "fetched", subset)
    try:
        report = caption_stats(ws, subset, sample=sample, seed=seed, tokenizer=tokenizer)
    except FileNotFoundError as e:
        raise fail(str(e)) from e
    for name, s in report["captioners"].items():
        console.print(f"[bold]{name}[/]: {s['count']} captions, coverage {s['coverage']:.0%}, flagged "
                      f"{s['flagged'] or 'none'}, words median {s['words']['median']:.0f}, vocabulary "
                      f"{s['vocabulary']}, duplicates {s['duplicate_share']:.1%}")
        if s.get("clip_score", {}).get("scored"):
            c = s["clip_score"]
            console.print(f"  CLIP score ({c['clip']}): mean {c['mean']:.2f}, median {c['median']:.2f}, "
                          f"p10-p90 {c['p10']:.2f}-{c['p90']:.2f} over {c['scored']} captions"
                          + (f", {c['quarantined']} quarantined" if c["quarantined"] else ""))
            if "round_trip" in c:
                r = c["round_trip"]
                console.print(f"  round trip ({r['run']}): mean cosine {r['mean']:.3f}, median {r['median']:.3f} "
                              f"over {r['scored']} captions")
    for kind, path in report["paths"].items():
        console.print(f"{kind}: {ws.root / path}")


def register(app: typer.Typer) -> None:
    """Add `caption` (and `caption stats`) to the root app."""
    app.add_typer(caption_app, name="caption")
