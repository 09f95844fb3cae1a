"""train stage: the UNet training recipe on precomputed latents, inference pipelines and export.

Heavy modules (torch, diffusers) load on first use, so `import opencanvas.train` stays cheap.
`export` lives in to_diffusers.py: a submodule named export would shadow the function.
"""

from __future__ import annotations

from typing import Any

__all__ = ["InferencePipeline", "PRESETS", "TrainingDiverged", "export", "load_pipeline", "train"]

_LAZY = {
    "train": "opencanvas.train.loop", "TrainingDiverged": "opencanvas.train.loop",
    "load_pipeline": "opencanvas.train.pipeline", "InferencePipeline": "opencanvas.train.pipeline",
    "export": "opencanvas.train.to_diffusers", "PRESETS": "opencanvas.train.presets",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'opencanvas.train' has no attribute {name!r}")
