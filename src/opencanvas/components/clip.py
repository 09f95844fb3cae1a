"""Train a transformers CLIPModel on a subset's images and captions (`opencanvas clip train`).

Contrastive pre-training (Radford et al. 2021): symmetric cross-entropy over the
(B, B) image-caption cosine similarities, with a learned temperature clamped at
100. The text tower then serves as the diffusion text encoder (its hidden
states condition the UNet) and the pair as a CLIP-score evaluator, with no
downloaded weights: the tokenizer too is trained on the captions.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from opencanvas.captions import read_captions
from opencanvas.components.images import load_subset_images
from opencanvas.components.loading import CLIP_MEAN, CLIP_STD, ClipEvaluator, from_source, resolve
from opencanvas.components.metrics import chance_recall_at_k, recall_at_k
from opencanvas.components.presets import CLIP_PRESETS, ClipPreset, get_preset, preset_dict
from opencanvas.components.records import finished_record, publish, subset_metadata, write_record
from opencanvas.components.reports import markdown_table, similarity_png, write_report
from opencanvas.components.tokenizer import train_caption_tokenizer
from opencanvas.components.training import (
    CHECKPOINT_DIR,
    CPU,
    Budget,
    check_same_training,
    finished_images,
    normalized,
    step_seed_generator,
    stored_config,
    train_component,
)
from opencanvas.licenses import refuse_nd_subset
from opencanvas.splits import holdout_split
from opencanvas.storage import atomic_write_json
from opencanvas.training.checkpoint import TrainState
from opencanvas.training.loop import DEFAULT_CHECKPOINT_MINUTES, DEFAULT_KEEP, TrainTask
from opencanvas.workspace import Workspace, is_name

KS = (1, 5, 10)
MATRIX_SAMPLE = 16
MAX_LOGIT_SCALE = math.log(100.0)
WARMUP_STEPS = 50


def read_caption_lists(ws: Workspace, captioner: str, subset: str) -> dict[str, list[str]]:
    """key -> usable captions (non-empty, not flagged) of one captioner."""
    paths = sorted(ws.captions_dir(captioner).glob("part-*.parquet"))
    if not paths:
        raise FileNotFoundError(
            f"no captions from captioner {captioner!r} in {ws.captions_dir(captioner)}: run "
            f"`opencanvas caption --subset {subset} --captioner {captioner}` first (the `metadata` captioner "
            f"needs no model)")
    table = read_captions(ws, captioner).select(["key", "caption", "flagged"]).to_pydict()
    captions: dict[str, list[str]] = {}
    for key, text, flagged in zip(table["key"], table["caption"], table["flagged"], strict=True):
        if text and text.strip() and not flagged:
            captions.setdefault(key, []).append(" ".join(text.split()))
    return captions


def clip_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 (B, 3, S, S) -> CLIP-normalised float (B, 3, S, S)."""
    mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    return (pixels.float() / 255.0 - mean) / std


def random_shift(pixels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Augmentation: translate the batch by up to 1/8 of its side, filling with white (clip art)."""
    side = pixels.shape[-1]
    pad = side // 8
    padded = F.pad(pixels, (pad, pad, pad, pad), value=255)
    top, left = torch.randint(2 * pad + 1, (2,), generator=generator).tolist()
    return padded[:, :, top:top + side, left:left + side]


def contrastive_loss(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                     pixel_values: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE over the batch (CLIP's loss)."""
    # Causal text tower pooled at the first eos: tokens after the longest caption change nothing.
    length = int(attention_mask.sum(1).max())
    out = model(input_ids=input_ids[:, :length], attention_mask=attention_mask[:, :length],
                pixel_values=pixel_values, return_loss=True)
    return out.loss


def build_clip(spec: ClipPreset, tokenizer: Any, seed: int) -> Any:
    from transformers import CLIPConfig, CLIPModel

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    config = CLIPConfig(**spec.transformers_config(len(tokenizer), pad, tokenizer.bos_token_id,
                                                   tokenizer.eos_token_id))
    torch.manual_seed(seed)
    return CLIPModel(config)


def _tokenizer_for(ws: Workspace, out_dir: Path, pretrained: str | None, captions: list[str],
                   spec: ClipPreset) -> Any:
    """A pretrained tokenizer (name/dir/hub id), the one an interrupted run trained, or a new one."""
    from transformers import AutoTokenizer

    saved = out_dir / CHECKPOINT_DIR / "tokenizer"
    if pretrained:
        trained = ws.clip_dir(pretrained) if is_name(pretrained) else None
        return from_source(AutoTokenizer, resolve(ws, pretrained, trained, "tokenizer", "tokenizer"), "tokenizer")
    if (saved / "tokenizer.json").exists():
        return AutoTokenizer.from_pretrained(saved)
    tokenizer = train_caption_tokenizer(captions, vocab_size=spec.vocab_size, max_length=spec.max_length)
    publish(saved, tokenizer.save_pretrained)
    return tokenizer


@torch.no_grad()
def heldout_evaluation(evaluator: ClipEvaluator, pixels: torch.Tensor,
                       texts: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """Retrieval both ways on held-out pairs (same caption = a match) and CLIP-score separation."""
    model = evaluator.model
    features = torch.cat([model.get_image_features(pixel_values=clip_pixels(pixels[i:i + 64])).pooler_output
                          for i in range(0, len(pixels), 64)])
    image = F.normalize(features.float(), dim=-1).numpy()
    text = evaluator.text_features(texts)
    similarity = image @ text.T                                            # (N images, N captions)
    _, caption_ids = np.unique(np.asarray(texts, dtype=object), return_inverse=True)
    relevant = caption_ids[:, None] == caption_ids[None, :]               # (N, N) same caption
    i2t, t2i = recall_at_k(similarity, KS, relevant), recall_at_k(similarity.T, KS, relevant)
    chance = chance_recall_at_k(relevant, KS)
    scores = 100.0 * np.clip(similarity, 0.0, None)
    metrics: dict[str, Any] = {
        **{f"image_to_text_recall@{k}": v for k, v in i2t.items()},
        **{f"text_to_image_recall@{k}": v for k, v in t2i.items()},
        **{f"chance_recall@{k}": v for k, v in chance.items()},
        "clip_score_matching": float(scores[relevant].mean()),
        "clip_score_non_matching": float(scores[~relevant].mean()) if (~relevant).any() else None,
    }
    return metrics, similarity


def train_clip(ws: Workspace, subset: str, captioner: str, name: str, preset: str = "tiny",
               max_images: int | None = None, *, images: int | None = None, minutes: float | None = None,
               steps: int | None = None, batch_size: int | None = None, learning_rate: float | None = None,
               holdout: float = 0.1, seed: int = 0, tokenizer: str | None = None, text_layer: str = "last",
               checkpoint_every: int | None = None, checkpoint_minutes: float = DEFAULT_CHECKPOINT_MINUTES,
               keep: int = DEFAULT_KEEP) -> dict[str, Any]:
    """Train (or resume, or return the finished) CLIP `name`; returns the report.

    Budget and checkpoints as `train_autoencoder`: `images`, `steps` and/or `minutes`, whichever is least.
    """
    refuse_nd_subset(ws.subset_path(subset), "clip train")  # ND licenses forbid derivatives
    spec = get_preset(CLIP_PRESETS, preset, "CLIP")
    if text_layer not in ("last", "penultimate"):
        raise ValueError(f"text layer must be 'last' or 'penultimate', got {text_layer!r}")
    out_dir = ws.clip_dir(name)
    identity: dict[str, Any] = {"subset": subset, "captioner": captioner, "preset": preset, "max_images": max_images,
                "batch_size": batch_size or spec.batch_size, "learning_rate": learning_rate or spec.learning_rate,
                "holdout": holdout, "seed": seed, "tokenizer": tokenizer or "trained on the captions",
                "text_layer": text_layer}
    budget = Budget(images, steps, minutes)
    record = finished_record(out_dir)
    if record is not None:
        check_same_training(out_dir, "a CLIP", record.get("training"), normalized(identity))
        if finished_images(record, budget, int(record.get("batch", identity["batch_size"]))):
            return json.loads((out_dir / "report.json").read_text())
    check_same_training(out_dir, "a CLIP", (stored_config(out_dir) or {}).get("training"), normalized(identity))

    meta = subset_metadata(ws, subset)
    data = ClipData.load(ws, subset, captioner, spec, max_images, holdout)
    tok = _tokenizer_for(ws, out_dir, tokenizer, data.train_texts, spec)
    task = ClipTask.build(spec, tok, data, identity)
    trained = train_component(task, out_dir, identity, budget, label=f"clip {name}", batch=task.batch,
                              lr=identity["learning_rate"], warmup_steps=WARMUP_STEPS,
                              checkpoint_every=checkpoint_every, checkpoint_minutes=checkpoint_minutes, keep=keep)
    model = task.model

    def save(directory: Path) -> None:
        model.save_pretrained(directory)
        tok.save_pretrained(directory)
        atomic_write_json(directory / "preprocessor_config.json", preprocessor_config(spec.image_size))

    publish(out_dir, save)
    evaluator = ClipEvaluator(model.eval(), tok, name, {})
    held_texts = [data.captions[k][0] for k in data.held_keys]
    metrics, similarity = heldout_evaluation(evaluator, data.held_pixels, held_texts)
    report = {"name": name, **meta, "captioner": captioner, "preset": preset, "image_size": spec.image_size,
              "images_train": len(data.train_keys), "images_heldout": len(data.held_keys),
              "captions_train": len(data.train_texts), "vocab_size": len(tok), "steps": trained.state.steps,
              "images_seen": trained.state.images_seen, "train_seconds": round(trained.state.wall_seconds, 1),
              "loss_first": trained.losses["first"], "loss_last": trained.losses["last"], **metrics}
    n = min(MATRIX_SAMPLE, len(data.held_keys))
    figure = similarity_png(similarity[:n, :n], held_texts[:n], f"CLIP {name}: held-out cosine similarity")
    write_report(out_dir, report, clip_markdown(report, subset, captioner, meta), {"similarity.png": figure})
    write_record(out_dir, {
        "component": "clip", "name": name, **meta, "captioner": captioner, "preset": preset_dict(spec),
        "training": identity, "steps": trained.state.steps, "images_seen": trained.state.images_seen,
        "batch": task.batch, "train_seconds": trained.state.wall_seconds, "images": trained.config["images"],
        "minutes": minutes, "measured_images_per_s": trained.config["measured_images_per_s"], "losses": trained.losses,
        "text_layer": text_layer, "max_length": spec.max_length, "heldout_keys": data.held_keys,
        "checkpoint": CHECKPOINT_DIR,
        "report": {k: v for k, v in metrics.items() if "@5" in k or k.startswith("clip_score")},
    })
    return report


@dataclass
class ClipData:
    """A subset's captioned images, split by key hash into training and held-out."""

    captions: dict[str, list[str]]   # key -> usable captions
    train_keys: list[str]
    train_pixels: torch.Tensor       # uint8 (N, 3, S, S)
    held_keys: list[str]
    held_pixels: torch.Tensor

    @classmethod
    def load(cls, ws: Workspace, subset: str, captioner: str, spec: ClipPreset, max_images: int | None,
             holdout: float) -> ClipData:
        captions = read_caption_lists(ws, captioner, subset)
        images = load_subset_images(ws, subset, spec.image_size, max_images, keys=list(captions))
        if not images.keys:
            raise ValueError(f"none of subset {subset!r}'s fetched images has a caption from {captioner!r}: caption "
                             f"this subset first (`opencanvas caption --subset {subset} --captioner {captioner}`)")
        train_idx, held_idx = holdout_split(images.keys, holdout)
        return cls(captions, [images.keys[i] for i in train_idx], images.pixels[train_idx],
                   [images.keys[i] for i in held_idx], images.pixels[held_idx])

    @property
    def train_texts(self) -> list[str]:
        return [c for k in self.train_keys for c in self.captions[k]]


class ClipTask(TrainTask):
    """One step: a random batch of images, one random caption each, a random shift; the contrastive loss."""

    model: Any  # transformers CLIPModel

    def __init__(self, model: Any, optimizer: torch.optim.Optimizer, data: ClipData, encoded: Any,
                 rows_of: list[list[int]], batch: int, seed: int) -> None:
        self.env, self.model, self.optimizer, self.ema, self.extra = CPU, model, optimizer, None, {}
        self.data, self.encoded, self.rows_of, self.batch, self.seed = data, encoded, rows_of, batch, seed

    @classmethod
    def build(cls, spec: ClipPreset, tok: Any, data: ClipData, identity: dict[str, Any]) -> ClipTask:
        """The seeded CLIPModel, its AdamW, and every training caption tokenized once: (M, L) ids and mask."""
        owner = [i for i, k in enumerate(data.train_keys) for _ in data.captions[k]]
        encoded = tok(data.train_texts, padding="max_length", truncation=True, max_length=spec.max_length,
                      return_tensors="pt")
        rows_of: list[list[int]] = [[] for _ in data.train_keys]
        for row, i in enumerate(owner):
            rows_of[i].append(row)
        model = build_clip(spec, tok, identity["seed"])
        optimizer = torch.optim.AdamW(model.parameters(), lr=identity["learning_rate"], betas=(0.9, 0.98),
                                      eps=1e-6, weight_decay=spec.weight_decay)
        return cls(model, optimizer, data, encoded, rows_of, min(identity["batch_size"], len(data.train_keys)),
                   identity["seed"])

    def gradients(self, state: TrainState) -> dict[str, float]:
        generator = step_seed_generator(self.seed, state.images_seen)
        bs = self.batch
        chosen = torch.randperm(len(self.data.train_keys), generator=generator)[:bs].tolist()
        picks = torch.randint(1 << 30, (bs,), generator=generator).tolist()  # one caption per image
        rows = [self.rows_of[i][p % len(self.rows_of[i])] for i, p in zip(chosen, picks, strict=True)]
        pixel_values = clip_pixels(random_shift(self.data.train_pixels[chosen], generator))
        loss = contrastive_loss(self.model, self.encoded["input_ids"][rows], self.encoded["attention_mask"][rows],
                                pixel_values)
        loss.backward()
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0))
        return {"loss": loss.item(), "grad_norm": grad_norm}

    def after_update(self) -> None:
        with torch.no_grad():
            self.model.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)


def clip_markdown(report: dict[str, Any], subset: str, captioner: str, meta: dict[str, Any]) -> str:
    r = report
    rows = [(f"image→text recall@{k}", r[f"image_to_text_recall@{k}"]) for k in KS]
    rows += [(f"text→image recall@{k}", r[f"text_to_image_recall@{k}"]) for k in KS]
    rows += [(f"chance recall@{k}", r[f"chance_recall@{k}"]) for k in KS]
    rows += [("CLIP score, matching pairs", r["clip_score_matching"]),
             ("CLIP score, non-matching pairs", r["clip_score_non_matching"]),
             ("train / held-out images", f"{r['images_train']} / {r['images_heldout']}"), ("steps", r["steps"]),
             ("train seconds", r["train_seconds"]),
             ("loss first / last", f"{r['loss_first']:.4f} / {r['loss_last']:.4f}")]
    return (f"# CLIP `{r['name']}`\n\nTrained contrastively on subset `{subset}` (policy `{meta['policy']}`, "
            f"catalog `{meta['catalog_hash']}`) with captions from `{captioner}`, preset `{r['preset']}`. Held-out "
            f"retrieval counts an item with the same caption as a match; chance is a random ranking.\n\n"
            + markdown_table(rows) + "\n\n![held-out similarity](similarity.png)\n")


def preprocessor_config(size: int) -> dict[str, Any]:
    """A CLIPImageProcessor config matching the training preprocessing (center crop, bicubic, CLIP mean/std)."""
    return {"image_processor_type": "CLIPImageProcessor", "do_resize": True, "size": {"shortest_edge": size},
            "do_center_crop": True, "crop_size": {"height": size, "width": size}, "do_rescale": True,
            "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD), "do_convert_rgb": True, "resample": 3}
