"""`opencanvas autoencoder train` and `opencanvas clip train`: components trained on the catalog only."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from opencanvas.cli_common import WorkspaceOption, console, fail, open_workspace, print_settings, require
from opencanvas.components.presets import AUTOENCODER_PRESETS, CLIP_PRESETS

SubsetOption = Annotated[str, typer.Option("--subset", "-s", help="Subset whose fetched images to train on.")]
NameOption = Annotated[str, typer.Option("--name", help="Component name: the output folder under the workspace.")]
MaxImagesOption = Annotated[int | None, typer.Option(help="Use at most this many images (default: all).", min=1)]
MinutesOption = Annotated[float | None, typer.Option(
    help="Training time budget in minutes (cumulative over resumes), converted once to images from a short "
         "measured warm-up and recorded, so a re-run is exact. Default 3 when neither --images nor --steps is "
         "given.", min=0)]
ImagesOption = Annotated[int | None, typer.Option(help="Stop after this many training images.", min=1)]
StepsOption = Annotated[int | None, typer.Option(help="Stop after this many optimizer steps (of --batch-size "
                                                      "images).", min=1)]
CheckpointEveryOption = Annotated[int | None, typer.Option(
    "--checkpoint-every", min=0, help="Checkpoint every N images (default: a twentieth of the run; 0: only at the "
    "end), and at least every 30 minutes.")]
BatchOption = Annotated[int | None, typer.Option("--batch-size", help="Images per step (default: the preset's).",
                                                    min=1)]
LrOption = Annotated[float | None, typer.Option("--learning-rate", help="Peak AdamW learning rate "
                                                                           "(default: the preset's).")]
HoldoutOption = Annotated[float, typer.Option(help="Fraction of images held out for the report (by key hash).",
                                              min=0.0, max=0.9)]
SeedOption = Annotated[int, typer.Option(help="Seed of the initial weights, batches and noise.")]


def _train(title: str, workspace: Path, train: Any, **options: Any) -> dict[str, Any]:
    """Resolve the budget, print the settings, call `train(ws, **options)`; errors become messages."""
    if options["minutes"] is None and options["steps"] is None and options["images"] is None:
        options["minutes"] = 3.0
    from opencanvas.training.loop import TrainingDiverged

    ws = open_workspace(workspace)
    (ws.autoencoder_dir if title.startswith("autoencoder") else ws.clip_dir)(options["name"])  # a bad name first
    require(ws, "fetched", options["subset"])
    if "captioner" in options:
        require(ws, "captions", options["captioner"])
    print_settings(title, {"workspace": str(ws.root), **shown_settings(title, options)})
    try:
        return train(ws, **options)
    except (FileNotFoundError, ValueError, NotImplementedError, TrainingDiverged) as err:
        raise fail(str(err)) from None


def shown_settings(title: str, options: dict[str, Any]) -> dict[str, Any]:
    """The options as the trainer will resolve them: a value left out is the preset's, or says what happens."""
    from opencanvas.components.presets import AUTOENCODER_PRESETS, CLIP_PRESETS

    table = AUTOENCODER_PRESETS if title.startswith("autoencoder") else CLIP_PRESETS
    preset = table.get(options.get("preset", ""))
    words = {"max_images": "all", "images": "none (the least of --steps and --minutes decides)",
             "minutes": "none (--images or --steps decides)", "steps": "none (--images or --minutes decides)",
             "checkpoint_every": "a twentieth of the run",
             "tokenizer": "a BPE tokenizer trained on the captions", "perceptual_weights": "none (no LPIPS term)",
             "perceptual_weight": "1.0 with --lpips-weights", "disc_weight": "0.5 with --lpips-weights"}
    shown = {}
    for k, v in options.items():
        if v is None and preset is not None and hasattr(preset, k):
            v = getattr(preset, k)
        shown[k] = words.get(k, v) if v is None else v
    return shown


autoencoder_app = typer.Typer(help="An AutoencoderKL trained only on the catalog (diffusers format).",
                              no_args_is_help=True, rich_markup_mode=None)
clip_app = typer.Typer(help="A CLIP (text + vision towers) trained only on the catalog's images and captions.",
                       no_args_is_help=True, rich_markup_mode=None)


@autoencoder_app.command("train")
def autoencoder_train_cmd(
    subset: SubsetOption,
    name: NameOption,
    preset: Annotated[str, typer.Option(help=f"Preset: {' or '.join(AUTOENCODER_PRESETS)} "
                                             "(opencanvas/components/presets.py).")] = "tiny",
    resolution: Annotated[int | None, typer.Option(help="Image side in px (default: the preset's).")] = None,
    max_images: MaxImagesOption = None,
    images: ImagesOption = None,
    minutes: MinutesOption = None,
    steps: StepsOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    batch_size: BatchOption = None,
    learning_rate: LrOption = None,
    kl_weight: Annotated[float | None, typer.Option(help="KL weight, relative to SD's per-pixel-summed "
                                                            "loss (default 1e-6).")] = None,
    train_crop: Annotated[int | None, typer.Option(help="Train on random crops of this side (default: the "
                                                           "preset's; the model is convolutional).")] = None,
    lpips_weights: Annotated[Path | None, typer.Option(
        help="LPIPS-VGG16 weights file (safetensors or .pth; see opencanvas/components/lpips.py for the keys): "
             "adds the LPIPS term and a PatchGAN discriminator. Off when absent.")] = None,
    perceptual_weight: Annotated[float | None, typer.Option(help="LPIPS weight (default 1.0; needs "
                                                                    "--lpips-weights).", min=0)] = None,
    disc_weight: Annotated[float | None, typer.Option(help="Discriminator weight, scaled adaptively (default "
                                                              "0.5; 0 turns it off; needs --lpips-weights).",
                                                        min=0)] = None,
    disc_start: Annotated[int | None, typer.Option(help="Step the discriminator starts at (default: the "
                                                           "preset's: tiny 250, sd 50001).", min=0)] = None,
    holdout: HoldoutOption = 0.1,
    seed: SeedOption = 0,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Train autoencoders/NAME on SUBSET; re-run the same command to resume (or to see the finished report)."""
    from opencanvas.components.autoencoder import train_autoencoder

    report = _train("autoencoder train", workspace, train_autoencoder, subset=subset, name=name, preset=preset,
                    resolution=resolution, max_images=max_images, images=images, minutes=minutes, steps=steps,
                    checkpoint_every=checkpoint_every,
                    batch_size=batch_size, learning_rate=learning_rate, kl_weight=kl_weight,
                    train_crop=train_crop, holdout=holdout, seed=seed, perceptual_weights=lpips_weights,
                    perceptual_weight=perceptual_weight, disc_weight=disc_weight, disc_start=disc_start)
    console.print(
        f"autoencoders/{name}: held-out PSNR {report['heldout_psnr']:.2f} dB (bicubic baseline "
        f"{report['heldout_bicubic_psnr']:.2f}), SSIM {report['heldout_ssim']:.3f} after {report['steps']} steps, "
        f"{report['images_seen']:,} images, {report['train_seconds']:.0f}s; see autoencoders/{name}/report.md")


@clip_app.command("train")
def clip_train_cmd(
    subset: SubsetOption,
    captioner: Annotated[str, typer.Option(help="Captioner whose captions/<C>/ pair with the images.")],
    name: NameOption,
    preset: Annotated[str, typer.Option(help=f"Preset: {' or '.join(CLIP_PRESETS)} "
                                             "(opencanvas/components/presets.py).")] = "tiny",
    max_images: MaxImagesOption = None,
    images: ImagesOption = None,
    minutes: MinutesOption = None,
    steps: StepsOption = None,
    checkpoint_every: CheckpointEveryOption = None,
    batch_size: BatchOption = None,
    learning_rate: LrOption = None,
    tokenizer: Annotated[str | None, typer.Option(help="Pretrained tokenizer (dir or hub id); default: "
                                                          "train a BPE tokenizer on the captions.")] = None,
    text_layer: Annotated[str, typer.Option(help="Hidden states the text encoder hands to diffusion: last or "
                                                 "penultimate (recorded with the CLIP).")] = "last",
    holdout: HoldoutOption = 0.1,
    seed: SeedOption = 0,
    workspace: WorkspaceOption = Path("."),
) -> None:
    """Train clips/NAME contrastively on SUBSET's images and CAPTIONER's captions; re-run to resume."""
    from opencanvas.components.clip import train_clip

    report = _train("clip train", workspace, train_clip, subset=subset, captioner=captioner, name=name,
                    preset=preset, max_images=max_images, images=images, minutes=minutes, steps=steps,
                    checkpoint_every=checkpoint_every, batch_size=batch_size,
                    learning_rate=learning_rate, tokenizer=tokenizer, text_layer=text_layer, holdout=holdout,
                    seed=seed)
    console.print(
        f"clips/{name}: held-out recall@5 image→text {report['image_to_text_recall@5']:.2f}, text→image "
        f"{report['text_to_image_recall@5']:.2f} (chance {report['chance_recall@5']:.2f}); CLIP score matching "
        f"{report['clip_score_matching']:.1f} vs non-matching {report['clip_score_non_matching'] or 0:.1f}; "
        f"see clips/{name}/report.md")


def register(app: typer.Typer) -> None:
    """Add this stage's verbs to the root app."""
    app.add_typer(autoencoder_app, name="autoencoder")
    app.add_typer(clip_app, name="clip")
