"""The held-out split: a key is held out when its hash fraction is below the holdout fraction.

One rule for every stage (components, encode's loader, eval's held-out prompts, cards), so
held-out prompts are never trained on, whatever trains. Foundation layer: imports no stage.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence


def key_fraction(key: str) -> float:
    """A key's position in [0, 1), from its SHA-256: stable across runs, machines and subset growth."""
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big") / 2**64


def holdout_split(keys: Sequence[str], fraction: float, min_holdout: int = 4,
                  min_train: int = 8) -> tuple[list[int], list[int]]:
    """Indices (train, held-out): a key is held out when its hash fraction < `fraction`."""
    held = [i for i, k in enumerate(keys) if key_fraction(k) < fraction]
    train = [i for i, k in enumerate(keys) if key_fraction(k) >= fraction]
    if len(held) < min_holdout or len(train) < min_train:
        raise ValueError(
            f"too few images for a held-out split: {len(keys)} images give {len(train)} train and "
            f"{len(held)} held-out (need >= {min_train} and >= {min_holdout}); fetch more images, "
            f"raise --max-images, or change --holdout (now {fraction})")
    return train, held
