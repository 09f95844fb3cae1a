"""Caption quality: CLIP image-text alignment per caption (`caption score`) and best-caption sets (`caption select`).

Above `sample` (it loads a CLIP, and generates for the round-trip score); `caption stats` in the caption
layer reads the score files it writes.
"""

from opencanvas.caption.stats import scores_path
from opencanvas.caption_quality.score import RoundTrip, score_captions
from opencanvas.caption_quality.select import select_captions

__all__ = ["RoundTrip", "score_captions", "scores_path", "select_captions"]
