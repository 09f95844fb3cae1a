"""Open-provenance components: an autoencoder and a CLIP trained only on the catalog, and the
loaders every later stage uses for these or for pretrained ones (local directory or hub id).

Names are imported lazily: `opencanvas --help` imports this package (for its CLI) and
must not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "ClipEvaluator": "loading", "ComponentNotFoundError": "loading", "LoadedAutoencoder": "loading",
    "LoadedTextEncoder": "loading", "load_autoencoder": "loading", "load_clip_evaluator": "loading",
    "load_text_encoder": "loading", "train_autoencoder": "autoencoder", "train_clip": "clip",
}
__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from opencanvas.components.autoencoder import train_autoencoder
    from opencanvas.components.clip import train_clip
    from opencanvas.components.loading import (
        ClipEvaluator,
        ComponentNotFoundError,
        LoadedAutoencoder,
        LoadedTextEncoder,
        load_autoencoder,
        load_clip_evaluator,
        load_text_encoder,
    )


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'opencanvas.components' has no attribute {name!r}")
    return getattr(importlib.import_module(f"opencanvas.components.{_EXPORTS[name]}"), name)
