"""`opencanvas encode`: precompute latents and text embeddings (registered by opencanvas.cli)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require
from opencanvas.dtypes import DTYPE_HELP, parse_dtype
from opencanvas.licenses import refuse_nd_subset


def _int_list(text: str, what: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise fail(f"{what} must be comma-separated integers, e.g. 256,512; got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise fail(f"{what} needs one or more positive integers, got {text!r}")
    return values


def encode_command(
    subset: Annotated[str, typer.Option("--subset", help="Subset whose fetched images to encode.")],
    autoencoder: Annotated[str, typer.Option(
        "--autoencoder", help="Autoencoder: a name under autoencoders/, a local diffusers dir, or a hub id.")],
    text_encoder: Annotated[list[str], typer.Option(
        "--text-encoder", help="Text encoder: a name under clips/, a local dir, or a hub id. Give it twice "
        "(A, then B) to store a second encoder's hidden states and both pooled embeddings (eDiff-I, SDXL).")],
    captioners: Annotated[str, typer.Option(
        "--captioners", help="Comma-separated captioners whose captions to embed, e.g. metadata,blip2.")],
    name: Annotated[str, typer.Option("--name", help="Latent set name: written to latents/<name>/.")],
    resolution: Annotated[str, typer.Option(
        "--resolution", help="Comma-separated resolutions in pixels; one latent set per resolution, "
        "each with only the images whose original short side reaches it.")] = "256",
    buckets: Annotated[bool, typer.Option(
        "--buckets/--no-buckets", help="Aspect-ratio buckets (about R*R pixels each) instead of square crops.")]
    = False,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images (and captions) per forward pass.")]
    = 16,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or cuda:N.")] = "cpu",
    dtype: Annotated[str, typer.Option(
        "--dtype", help=f"Model precision: {DTYPE_HELP} (outputs are stored as fp16 either way).")] = "fp32",
    decode_workers: Annotated[int, typer.Option(
        "--decode-workers", min=1, help="Threads decoding and resizing images ahead of the autoencoder.")] = 4,
    rank: Annotated[int, typer.Option("--rank", min=0, help="This process's share: shards rank, rank+world, ...")]
    = 0,
    world: Annotated[int, typer.Option("--world", min=1, help="Number of processes sharing the shards.")] = 1,
    image_embeddings: Annotated[str | None, typer.Option(
        "--image-embeddings", help="Also store each image's CLIP image embedding (for `train --conditioning "
        "text+image`): a CLIP under clips/, a local CLIP folder, or a hub id.")] = None,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Precompute autoencoder latents (mean, std) and text embeddings of every caption, resumably."""
    import torch

    from opencanvas.encode.stage import encode
    from opencanvas.progress import progress_bar

    try:
        torch_dtype = parse_dtype(dtype, device)
    except ValueError as err:
        raise fail(str(err)) from None
    if rank >= world:
        raise fail(f"--rank must be below --world ({world}), got {rank}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise fail("--device cuda but no CUDA device is visible: use --device cpu")
    ws = open_workspace(workspace)
    resolutions = _int_list(resolution, "--resolution")
    names = [c.strip() for c in captioners.split(",") if c.strip()]
    if len(text_encoder) > 2 or len(set(text_encoder)) != len(text_encoder):
        raise fail(f"--text-encoder takes one or two distinct encoders, got {text_encoder}")
    ws.latents_dir(name)   # a bad name fails before anything else is looked at
    try:   # the license comes first: no fetch or caption step can make an ND subset trainable
        refuse_nd_subset(ws.subset_path(subset), "encode")
    except ValueError as e:
        raise fail(str(e)) from None
    require(ws, "fetched", subset)
    for captions in names:
        require(ws, "captions", captions)
    print_settings("encode", {
        "workspace": str(ws.root), "subset": subset, "autoencoder": autoencoder, "text_encoders": text_encoder,
        "image_embeddings": image_embeddings or "none",
        "captioners": names, "name": name, "resolutions": resolutions, "buckets": buckets,
        "batch_size": batch_size, "decode_workers": decode_workers, "device": device, "dtype": dtype,
        "rank/world": f"{rank}/{world}",
        "output": ws.relative(ws.latents_dir(name)) if ws.latents_dir(name).exists() else f"latents/{name}",
    })
    with progress_bar() as bar:
        task = bar.add_task("encode", total=None, unit="img")
        try:
            summary = encode(ws, subset, autoencoder, text_encoder, names, name, resolutions, buckets,
                             batch_size=batch_size, device=device, dtype=torch_dtype, rank=rank, world=world,
                             decode_workers=decode_workers, image_embeddings=image_embeddings,
                             on_start=lambda total: bar.update(task, total=total),
                             advance=lambda n: bar.advance(task, n))
        except (FileNotFoundError, ValueError) as err:
            raise fail(str(err)) from None
    print_settings("encode summary", summary)
    if summary["undecodable"]:
        console.print(f"[yellow]{summary['undecodable']} image(s) could not be decoded; see done.json files")


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.command("encode")(encode_command)
