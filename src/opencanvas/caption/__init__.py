"""Telephoning: synthetic captions for every image, with provenance (CommonCanvas, arXiv 2310.16825).

    caption(ws, subset, captioner, model=None, ...) -> CaptionStats   captions/<name>/part-NNNNN.parquet
    read_captions(ws, captioner, keys=None) -> pyarrow.Table          all rows (CAPTION_SCHEMA)
    caption_stats(ws, subset) -> dict                                 captions/stats/<subset>/

Heavy dependencies (torch, transformers) load only when a model captioner runs.
"""

from opencanvas.caption.captioners import CAPTIONERS, GenerationSettings
from opencanvas.caption.stage import CaptionStats, caption
from opencanvas.caption.stats import caption_stats
from opencanvas.captions import read_captions

__all__ = ["CAPTIONERS", "CaptionStats", "GenerationSettings", "caption", "caption_stats", "read_captions"]
