"""encode stage: precomputed latents and text embeddings, and the loader that trains on them."""

from opencanvas.encode.loader import LatentLoader
from opencanvas.encode.stage import encode
from opencanvas.encode.store import LatentRecord, LatentSet, open_latents

__all__ = ["LatentLoader", "LatentRecord", "LatentSet", "encode", "open_latents"]
