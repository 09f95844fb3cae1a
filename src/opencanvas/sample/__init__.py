"""Sampling and evaluation with the diffusion core's samplers and guidance (`opencanvas.diffusion`):
`generate` (prompts -> PIL images) and `evaluate` (FID/KID or FD-CLIP/KID-CLIP, CLIP score,
precision/recall, memorization) across guidance scales.

Names are imported lazily: `opencanvas --help` imports this package (for its CLI) and
must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "generate": "generate", "SampleSettings": "generate", "evaluate": "evaluate",
    "load_folder_pipeline": "loading", "read_prompts": "prompts",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from opencanvas.sample.evaluate import evaluate
    from opencanvas.sample.generate import SampleSettings, generate
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.prompts import read_prompts


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'opencanvas.sample' has no attribute {name!r}")
    return getattr(importlib.import_module(f"opencanvas.sample.{_EXPORTS[name]}"), name)
