"""Nested data fractions chosen by a hash of (key, seed).

A key is in the fraction F of seed S when

    int.from_bytes(sha256(f"{S}:{key}".encode()).digest()[:8], "big") / 2**64 < F

The left side is fixed per (key, seed), so the 10% fraction is inside the 30% one, which is inside
100%: each point of a scaling curve adds data rather than resampling it. The held-out split
(`splits.key_fraction`, a different hash) is left out by training at every fraction alike.
`catalog subset --fraction F --seed S` is meant to keep the same keys (same formula).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def fraction_point(key: str, seed: int) -> float:
    """The key's position in [0, 1) for `seed`: the first 8 bytes of sha256("<seed>:<key>") over 2^64."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_fraction(key: str, seed: int, fraction: float) -> bool:
    """Whether `key` belongs to the nested fraction `fraction` (in (0, 1]) of seed `seed`."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    return fraction >= 1.0 or fraction_point(key, seed) < fraction


def fraction_keys(keys: Iterable[str], seed: int, fraction: float) -> list[str]:
    """The keys of `keys` in the fraction, in their given order."""
    return [k for k in keys if in_fraction(k, seed, fraction)]
