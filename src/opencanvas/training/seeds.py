"""The seed of every training step: a pure function of (seed, micro-batch, images seen).

Every random number of a step (batch choice, crops, noise, timesteps) comes from a
generator seeded here, so a resumed run draws exactly what the uninterrupted run drew
(EDM2 training_loop does the same). The micro-batch index is micro * world + rank, so
a step is the same computation on 1 rank with accumulation 2 as on 2 ranks without.
"""

from __future__ import annotations

import hashlib

import torch


def step_seed(seed: int, micro_batch: int, images_seen: int) -> int:
    """A 63-bit seed that is a pure function of (seed, global micro-batch index, images seen)."""
    digest = hashlib.sha256(f"opencanvas-train:{seed}:{micro_batch}:{images_seen}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_generator(device: torch.device | str, seed: int, micro_batch: int, images_seen: int) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(step_seed(seed, micro_batch, images_seen))
