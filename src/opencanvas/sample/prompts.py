"""Prompt file readers: plain lines, JSONL, PartiPrompts TSV, COCO captions JSON.

The format is picked by extension (`.jsonl`, `.tsv`, `.json`, anything else is
one prompt per line); the files are ones the user provides, nothing is downloaded.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Literal, cast

PromptFormat = Literal["auto", "lines", "jsonl", "parti", "coco"]


def read_lines(path: Path) -> list[str]:
    """One prompt per non-blank line."""
    return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def read_jsonl(path: Path, field: str = "prompt") -> list[str]:
    """One JSON object per line with a `prompt` field."""
    prompts = []
    for no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        if not isinstance(record, dict) or not isinstance(record.get(field), str):
            raise ValueError(f"{path}:{no}: expected a JSON object with a string {field!r} field")
        prompts.append(record[field])
    return prompts


def read_parti(path: Path, category: str | None = None) -> list[str]:
    """PartiPrompts TSV (columns Prompt, Category, Challenge, Note; Yu et al. 2022)."""
    with Path(path).open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and "Prompt" not in rows[0]:
        raise ValueError(f"{path}: not a PartiPrompts TSV (no 'Prompt' column; columns: {list(rows[0])})")
    return [r["Prompt"].strip() for r in rows
            if r["Prompt"] and r["Prompt"].strip() and (category is None or r.get("Category") == category)]


def read_coco_captions(path: Path, per_image: int | None = 1) -> list[str]:
    """COCO `captions_*.json`: `per_image` captions per image (lowest annotation ids), image-id order.

    One caption per image is the usual protocol for COCO FID (e.g. the 30k-prompt eval).
    """
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "annotations" not in data:
        raise ValueError(f"{path}: not a COCO captions file (no 'annotations' list)")
    by_image: dict[int, list[tuple[int, str]]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(int(ann["image_id"]), []).append((int(ann.get("id", 0)), ann["caption"].strip()))
    prompts = []
    for image_id in sorted(by_image):
        captions = [c for _, c in sorted(by_image[image_id])]
        prompts.extend(captions if per_image is None else captions[:per_image])
    return prompts


def read_prompts(path: Path, fmt: PromptFormat = "auto") -> list[str]:
    """Prompts from a user file; fails loudly on an empty or unknown file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prompt file {path} not found")
    if fmt == "auto":
        by_suffix = {".jsonl": "jsonl", ".tsv": "parti", ".json": "coco"}
        fmt = cast(PromptFormat, by_suffix.get(path.suffix.lower(), "lines"))
    readers = {"lines": read_lines, "jsonl": read_jsonl, "parti": read_parti, "coco": read_coco_captions}
    if fmt not in readers:
        raise ValueError(f"unknown prompt format {fmt!r}; one of {', '.join(readers)}")
    prompts = readers[fmt](path)
    if not prompts:
        raise ValueError(f"{path}: no prompts found")
    return prompts
