"""Sampling and evaluation: pure k-diffusion-style samplers with classifier-free guidance,
`generate` (prompts -> PIL images) and `evaluate` (FID/KID or FD-CLIP/KID-CLIP, CLIP score,
precision/recall, memorization) across guidance scales.

Names are imported lazily: `opencanvas --help` imports this package (for its CLI) and
must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "SAMPLERS": "samplers", "get_sigmas": "samplers", "sample_ddim": "samplers", "sample_dpmpp_2m": "samplers",
    "sample_euler": "samplers", "sample_heun": "samplers", "CFGDenoiser": "guidance", "cfg_denoiser": "guidance",
    "generate": "generate", "SampleSettings": "generate", "evaluate": "evaluate",
    "load_folder_pipeline": "loading", "read_prompts": "prompts",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from opencanvas.sample.evaluate import evaluate
    from opencanvas.sample.generate import SampleSettings, generate
    from opencanvas.sample.guidance import CFGDenoiser, cfg_denoiser
    from opencanvas.sample.loading import load_folder_pipeline
    from opencanvas.sample.prompts import read_prompts
    from opencanvas.sample.samplers import (
        SAMPLERS, get_sigmas, sample_ddim, sample_dpmpp_2m, sample_euler, sample_heun,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'opencanvas.sample' has no attribute {name!r}")
    return getattr(importlib.import_module(f"opencanvas.sample.{_EXPORTS[name]}"), name)
