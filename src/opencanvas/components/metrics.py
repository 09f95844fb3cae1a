"""Reconstruction and retrieval metrics for the component reports."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of (B, 3, H, W) tensors in [0, 1]. (B,)"""
    mse = (images.float() - references.float()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(1.0 / mse.clamp_min(1e-10))


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x.pow(2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] * g[None, :]).float()  # (size, size)


def ssim(images: torch.Tensor, references: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Per-image SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, K1 0.01, K2 0.03),
    averaged over channels and valid window positions. Inputs (B, 3, H, W) in [0, 1]. (B,)"""
    x, y = images.float(), references.float()
    channels = x.shape[1]
    size = min(11, x.shape[-1], x.shape[-2])
    window = _gaussian_window(size).to(x.device).expand(channels, 1, size, size)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=channels)  # 'valid' windows, as the reference implementation

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x.pow(2)
    var_y = blur(y * y) - mu_y.pow(2)
    cov = blur(x * y) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x.pow(2) + mu_y.pow(2) + c1) * (var_x + var_y + c2))
    return ssim_map.flatten(1).mean(1)


def recall_at_k(similarity: np.ndarray, ks: tuple[int, ...] = (1, 5, 10),
                relevant: np.ndarray | None = None) -> dict[int, float]:
    """Fraction of rows with a relevant column in their top k. `relevant` (N, N) bool defaults to
    the diagonal; pass "same caption" so duplicate captions are not counted as misses."""
    n = similarity.shape[0]
    relevant = np.eye(n, dtype=bool) if relevant is None else relevant
    best = np.where(relevant, similarity, -np.inf).max(axis=1, keepdims=True)
    # rank = irrelevant columns scoring at least as high as the best relevant one (ties count
    # against it, so a collapsed model that scores everything equal gets recall 0, not 1)
    rank = ((similarity >= best) & ~relevant).sum(axis=1)
    return {k: float((rank < k).mean()) for k in ks}


def chance_recall_at_k(relevant: np.ndarray, ks: tuple[int, ...] = (1, 5, 10)) -> dict[int, float]:
    """recall@k of a random ranking: 1 - C(N - m, k) / C(N, k) for a row with m relevant columns."""
    n = relevant.shape[1]
    m = relevant.sum(axis=1)
    return {k: float(np.mean([1.0 - math.comb(n - int(mi), k) / math.comb(n, k) if k <= n else 1.0
                              for mi in m])) for k in ks}
