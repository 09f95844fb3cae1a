"""Nested data fractions for studies: the same selection as `catalog subset --fraction F --seed S`.

A key is in the fraction F of seed S when `catalog.subset.key_position(key, S) <
catalog.subset.fraction_threshold(F)`, i.e. the first 8 bytes of SHA-256("<S>\\0<key>") read as an
unsigned integer fall below F * 2^64. The position is fixed per (key, seed), so the 10% fraction is
inside the 30% one, which is inside 100%: each point of a scaling curve adds data rather than
resampling it. The held-out split (`splits.key_fraction`, a different hash with no seed) is left out
by training at every fraction alike.
"""

from __future__ import annotations

from collections.abc import Iterable

from opencanvas.catalog.subset import check_fraction, fraction_threshold, key_position


def fraction_point(key: str, seed: int) -> float:
    """The key's position in [0, 1) for `seed` (`catalog.subset.key_position` over 2^64)."""
    return key_position(key, seed) / 2**64


def in_fraction(key: str, seed: int, fraction: float) -> bool:
    """Whether `key` belongs to the nested fraction `fraction` (in (0, 1]) of seed `seed`."""
    check_fraction(fraction)
    return fraction >= 1.0 or key_position(key, seed) < fraction_threshold(fraction)


def fraction_keys(keys: Iterable[str], seed: int, fraction: float) -> list[str]:
    """The keys of `keys` in the fraction, in their given order."""
    return [k for k in keys if in_fraction(k, seed, fraction)]
