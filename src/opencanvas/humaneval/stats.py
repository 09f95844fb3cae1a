"""The figures of a pairwise study, as pure functions of its votes.

- Win rates count a tie as half a win, with Wilson score 95% intervals (Wilson 1927), which stay inside
  [0, 1] and behave at small n, unlike the normal approximation.
- Bradley-Terry strengths (P(i beats j) = p_i / (p_i + p_j)) by Hunter's (2004) MM algorithm, ties as half
  a win each way, with percentile intervals from resampling the votes (bootstrap).
- Agreement where a pair has several raters: the share of rater pairs that agree, and Fleiss' kappa with a
  varying number of raters per item (Fleiss 1971).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054
# A tenth of a virtual tie between every two models keeps strengths finite when one model wins every vote.
BT_PRIOR_TIES = 0.1


@dataclass(frozen=True)
class Comparison:
    """One current vote in model terms: `outcome` is 1.0 (a wins), 0.0 (b wins) or 0.5 (tie)."""

    a: int
    b: int
    outcome: float


def wilson_interval(wins: float, n: float, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for a proportion wins/n (wins may be fractional: ties count half)."""
    if n <= 0:
        return 0.0, 1.0
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def win_matrix(comparisons: Sequence[Comparison], models: int, weights: np.ndarray | None = None) -> np.ndarray:
    """W[i, j]: (weighted) wins of model i over model j, ties half each way."""
    w = np.zeros((models, models))
    if not comparisons:
        return w
    a = np.array([c.a for c in comparisons])
    b = np.array([c.b for c in comparisons])
    out = np.array([c.outcome for c in comparisons])
    weight = np.ones(len(comparisons)) if weights is None else weights
    np.add.at(w, (a, b), out * weight)
    np.add.at(w, (b, a), (1 - out) * weight)
    return w


def bradley_terry(wins: np.ndarray, iterations: int = 1000, tol: float = 1e-10) -> np.ndarray:
    """Strengths p (geometric mean 1) maximising the BT likelihood of W (Hunter 2004, MM update)."""
    m = len(wins)
    w = wins + BT_PRIOR_TIES / 2 * (1 - np.eye(m))
    games = w + w.T                                       # n_ij
    total_wins = w.sum(axis=1)
    p = np.ones(m)
    for _ in range(iterations):
        denom = (games / (p[:, None] + p[None, :])).sum(axis=1)
        new = total_wins / np.where(denom > 0, denom, 1)
        new /= np.exp(np.log(new).mean())
        if np.max(np.abs(new - p)) < tol:
            return new
        p = new
    return p


def bootstrap_bradley_terry(comparisons: Sequence[Comparison], models: int, rounds: int = 200,
                            seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Percentile 95% intervals of log-strengths over `rounds` resamples of the votes: (low, high), each (M,)."""
    rng = np.random.default_rng(seed)
    n = len(comparisons)
    draws = np.empty((rounds, models))
    for r in range(rounds):
        weights = np.bincount(rng.integers(0, n, n), minlength=n).astype(float) if n else None
        draws[r] = np.log(bradley_terry(win_matrix(comparisons, models, weights)))
    return np.percentile(draws, 2.5, axis=0), np.percentile(draws, 97.5, axis=0)


def fleiss_kappa(counts: np.ndarray) -> float | None:
    """Fleiss' kappa for items x categories counts; items may have different rater numbers (>= 2 each)."""
    counts = np.asarray(counts, float)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if len(counts) == 0:
        return None
    p_i = ((counts * counts).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j * p_j).sum())
    if p_e >= 1:
        return 1.0 if p_bar >= 1 else None
    return float((p_bar - p_e) / (1 - p_e))


def percent_agreement(counts: np.ndarray) -> float | None:
    """Share of rater pairs on the same item that chose the same category."""
    counts = np.asarray(counts, float)
    n_i = counts.sum(axis=1)
    agree = ((counts * (counts - 1)).sum(axis=1) / 2)[n_i >= 2].sum()
    pairs = (n_i * (n_i - 1) / 2)[n_i >= 2].sum()
    return float(agree / pairs) if pairs else None
