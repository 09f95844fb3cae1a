"""The captioner interface, the text-only captioners and caption quality flags.

A captioner turns a batch of images (with their catalog metadata) into one
caption each. Model captioners (BLIP-2, BLIP, any transformers image-to-text
model) live in `opencanvas.caption.vision`; the two here need no pixels:

- `metadata`: title + description + tags, the "alt-text" baseline that
  CommonCanvas (arXiv 2310.16825, Sec. 3) compares its synthetic captions to.
- `title` and `title-tags`: the title alone, and the title with its keywords (the weaker
  baselines of the paper's caption comparison, for the `captions` study).
- `commoncatalog`: the BLIP-2 caption shipped with CommonCatalog, read from the
  catalog row's `extra` JSON (key `blip2_caption`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol, get_args

CaptionerName = Literal["blip2", "blip", "hf", "metadata", "title", "title-tags", "commoncatalog"]
CAPTIONERS: tuple[str, ...] = get_args(CaptionerName)
MODEL_CAPTIONERS = ("blip2", "blip", "hf")
DEFAULT_MODELS = {"blip2": "Salesforce/blip2-opt-2.7b", "blip": "Salesforce/blip-image-captioning-large"}
RESERVED_NAMES = ("stats",)  # captions/stats/ holds the caption report


@dataclass(frozen=True)
class GenerationSettings:
    """Decoding settings, recorded as JSON on every caption row."""

    max_new_tokens: int = 30
    num_beams: int = 1
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    seed: int = 0

    def generate_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `model.generate` (the seed is applied separately)."""
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
                                  "do_sample": self.do_sample, "repetition_penalty": self.repetition_penalty}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        return kwargs

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class CaptionInput:
    """One image to caption: its key, catalog metadata and (for model captioners) pixels."""

    key: str
    meta: dict[str, Any]


@dataclass(frozen=True)
class Provenance:
    """What every caption row of one captioner records about how it was made."""

    model_id: str
    model_revision: str
    prompt: str
    generation: str      # JSON
    preprocessing: str   # e.g. "center-crop 512"


class Captioner(Protocol):
    """Images in, captions out. `needs_pixels` False means `pixels` is never read."""

    name: str
    needs_pixels: bool
    provenance: Provenance

    def caption(self, items: Sequence[CaptionInput], pixels: Any = None) -> list[tuple[str, str]]:
        """(caption, flagged) per item, in order; flagged is "" when the caption is fine."""
        ...


# ---- quality flags ------------------------------------------------------------

# A unit of 1-8 words repeated back to back at least 3 times: "on on on", "a cat a cat a cat".
_LOOP = re.compile(r"\b((?:\S+\s+){0,7}?\S+)(?:\s+\1\b){2,}", re.IGNORECASE)


def degeneracy(caption: str) -> str:
    """Why a generation is degenerate ("empty", "repetitive"), or "" when it looks fine.

    Degenerate captions are kept with this flag, never dropped, so every image
    keeps exactly one row per captioner and the report can count them.
    """
    text = caption.strip()
    if not re.search(r"\w", text):
        return "empty"
    if _LOOP.search(text):
        return "repetitive"
    return ""


# ---- text-only captioners ---------------------------------------------------------

_FILE_SUFFIX = re.compile(r"\.(svg|png|jpe?g|gif|tiff?|webp)$", re.IGNORECASE)


def metadata_caption(meta: dict[str, Any], max_chars: int = 300,
                     fields: Sequence[str] = ("title", "description", "tags")) -> str:
    """Title, description and tags (those of `fields`) joined into one alt-text style caption."""
    title = _FILE_SUFFIX.sub("", str(meta.get("title") or "")).replace("_", " ").strip()
    description = " ".join(str(meta.get("description") or "").split()) if "description" in fields else ""
    if len(description) > max_chars:  # keep whole words
        description = description[:max_chars].rsplit(" ", 1)[0] + "…"
    parts = [title]
    if description and description.lower() != title.lower():
        parts.append(description)
    seen = set(title.lower().split())
    tags = [t for t in (meta.get("tags") or []) if t and str(t).lower() not in seen] if "tags" in fields else []
    if tags:
        parts.append(", ".join(dict.fromkeys(str(t) for t in tags)))
    return ". ".join(p.rstrip(".") for p in parts if p)


# Text captioner name -> the catalog fields it joins.
METADATA_FIELDS = {"metadata": ("title", "description", "tags"), "title": ("title",), "title-tags": ("title", "tags")}


class MetadataCaptioner:
    name = "metadata"
    needs_pixels = False

    def __init__(self, name: str = "metadata") -> None:
        self.name, self.fields = name, METADATA_FIELDS[name]
        self.provenance = Provenance(model_id="", model_revision="", prompt="",
                                     generation=json.dumps({"fields": list(self.fields)}), preprocessing="")

    def caption(self, items: Sequence[CaptionInput], pixels: Any = None) -> list[tuple[str, str]]:
        captions = [metadata_caption(item.meta, fields=self.fields) for item in items]
        return [(c, degeneracy(c)) for c in captions]


def shipped_blip2_caption(meta: dict[str, Any]) -> str | None:
    """The BLIP-2 caption CommonCatalog ships, from the catalog row's `extra` JSON."""
    extra = meta.get("extra") or {}
    if isinstance(extra, str):
        try:
            extra = json.loads(extra) if extra.strip() else {}
        except json.JSONDecodeError:
            return None
    value = extra.get("blip2_caption") if isinstance(extra, dict) else None
    return value if isinstance(value, str) else None


class CommonCatalogCaptioner:
    """Records the shipped caption; an image without one gets flag "missing" (never dropped)."""

    name = "commoncatalog"
    needs_pixels = False

    def __init__(self) -> None:
        self.provenance = Provenance(model_id="Salesforce/blip2-opt-2.7b", model_revision="commoncatalog",
                                     prompt="", generation=json.dumps({"source": "extra.blip2_caption"}),
                                     preprocessing="as shipped by CommonCatalog")

    def caption(self, items: Sequence[CaptionInput], pixels: Any = None) -> list[tuple[str, str]]:
        out = []
        for item in items:
            text = shipped_blip2_caption(item.meta)
            out.append(("", "missing") if text is None else (text.strip(), degeneracy(text)))
        return out
