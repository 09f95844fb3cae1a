"""Distribution metrics on image features, and the memorization check.

All functions take feature matrices (N, D) as numpy arrays, so the same code
scores Inception features (FID/KID, clean-fid protocol) and CLIP features
(reported as FD-CLIP/KID-CLIP, never as FID).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

# ---- Frechet distance -----------------------------------------------------------------

def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of features (N, D), in float64."""
    f = np.asarray(features, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"need features of shape (N>=2, D), got {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) (Dowson & Landau 1982; Heusel et al. 2017).

    Tr((S1 S2)^(1/2)) is the sum of square roots of the eigenvalues of S1 S2, which
    are real and >= 0 (S1 S2 is similar to S1^(1/2) S2 S1^(1/2)); this avoids
    scipy's sqrtm and its complex round-off on near-singular covariances.
    """
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    eig = np.linalg.eigvals(np.asarray(sigma1, np.float64) @ np.asarray(sigma2, np.float64))
    tr_covmean = np.sqrt(np.clip(eig.real, 0, None)).sum()
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean)


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between the Gaussians fitted to features a (N1, D) and b (N2, D).

    With fewer samples than dimensions (a small eval in 2048-d Inception space),
    S1 = A1'A1/(N1-1) for centred A1, and Tr((S1 S2)^(1/2)) is the nuclear norm of
    A1 A2' / sqrt((N1-1)(N2-1)) (the eigenvalues of S1 S2 are the squared singular
    values of that N1 x N2 matrix): exact, and no D x D eigenproblem.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if min(len(a), len(b)) >= a.shape[1]:
        return frechet_distance(*feature_stats(a), *feature_stats(b))
    if len(a) < 2 or len(b) < 2:
        raise ValueError("the Frechet distance needs at least 2 images on each side")
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    ca, cb = a - mu_a, b - mu_b
    na, nb = len(a) - 1, len(b) - 1
    tr_covmean = np.linalg.svd(ca @ cb.T / np.sqrt(na * nb), compute_uv=False).sum()
    diff = mu_a - mu_b
    return float(diff @ diff + (ca**2).sum() / na + (cb**2).sum() / nb - 2 * tr_covmean)


# ---- KID ------------------------------------------------------------------------------

def polynomial_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = (a.b / D + 1)^3 (Binkowski et al. 2018, KID)."""
    d = x.shape[1]
    m, n = len(x), len(y)
    k_xx = (x @ x.T / d + 1) ** 3
    k_yy = (y @ y.T / d + 1) ** 3
    k_xy = (x @ y.T / d + 1) ** 3
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1)) + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.mean())


def kernel_distance(a: np.ndarray, b: np.ndarray, num_subsets: int = 100, max_subset_size: int = 1000,
                    seed: int = 0) -> tuple[float, float]:
    """KID: mean and std of the polynomial MMD^2 over random subsets (as clean-fid / torch-fidelity)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    m = min(len(a), len(b), max_subset_size)
    if m < 2:
        raise ValueError("KID needs at least 2 images on each side")
    rng = np.random.default_rng(seed)
    values = [polynomial_mmd2(a[rng.choice(len(a), m, replace=False)], b[rng.choice(len(b), m, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


# ---- precision / recall ------------------------------------------------------------------

def _distance_blocks(queries: np.ndarray, points: np.ndarray, block: int = 1024) -> Iterator[np.ndarray]:
    """Euclidean distances (b, M) for consecutive row blocks of queries, so (N, M) never sits in memory."""
    sq_p = (points**2).sum(axis=1)
    for start in range(0, len(queries), block):
        q = queries[start:start + block]
        d2 = (q**2).sum(axis=1)[:, None] + sq_p[None, :] - 2 * q @ points.T
        yield np.sqrt(np.clip(d2, 0, None))


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of each point to its k-th nearest neighbour in the same set (self excluded), (N,)."""
    if len(features) <= k:
        raise ValueError(f"k-NN radii need more than k={k} points, got {len(features)}")
    return np.concatenate([np.partition(d, k, axis=1)[:, k] for d in _distance_blocks(features, features)])


def manifold_coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of queries inside at least one hypersphere (manifold point, its k-NN radius)."""
    inside = [(d <= radii[None, :]).any(axis=1) for d in _distance_blocks(queries, manifold)]
    return float(np.concatenate(inside).mean())


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): fake in real manifold, real in fake manifold."""
    real, fake = np.asarray(real, np.float64), np.asarray(fake, np.float64)
    precision = manifold_coverage(real, knn_radii(real, k), fake)
    recall = manifold_coverage(fake, knn_radii(fake, k), real)
    return precision, recall


# ---- memorization ----------------------------------------------------------------------

def phash_ints(images: Sequence[Image.Image]) -> np.ndarray:
    """64-bit perceptual hashes (imagehash.phash, DCT of an 8x8 low-pass) as uint64, (N,)."""
    import imagehash

    return np.array([int(str(imagehash.phash(img.convert("RGB"))), 16) for img in images], dtype=np.uint64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distances between uint64 hashes, (N, M)."""
    return np.bitwise_count(np.bitwise_xor(a[:, None], b[None, :])).astype(np.int64)


@dataclass(frozen=True)
class Memorization:
    """Per generated image: nearest reference by feature cosine, and by perceptual hash."""

    nearest: np.ndarray          # (N,) reference index with the highest cosine
    cosine: np.ndarray           # (N,) that cosine
    phash_nearest: np.ndarray    # (N,) reference index with the smallest hash distance
    phash_distance: np.ndarray   # (N,) that distance, 0..64 bits

    def summary(self, cosine_threshold: float, phash_threshold: int) -> dict[str, float]:
        return {"cosine_threshold": cosine_threshold, "phash_threshold": phash_threshold,
                "share_cosine_above": float((self.cosine >= cosine_threshold).mean()),
                "share_phash_within": float((self.phash_distance <= phash_threshold).mean()),
                "max_cosine": float(self.cosine.max()), "mean_cosine": float(self.cosine.mean()),
                "min_phash_distance": int(self.phash_distance.min())}


def memorization(gen_features: np.ndarray, ref_features: np.ndarray, gen_hashes: np.ndarray,
                 ref_hashes: np.ndarray) -> Memorization:
    """Nearest training image per generated one. Features must be L2-normalised (cosine = dot)."""
    sims = np.asarray(gen_features, np.float64) @ np.asarray(ref_features, np.float64).T   # (N, M)
    dists = hamming(gen_hashes, ref_hashes)                                                  # (N, M)
    rows = np.arange(len(sims))
    nearest, phash_nearest = sims.argmax(axis=1), dists.argmin(axis=1)
    return Memorization(nearest, sims[rows, nearest], phash_nearest, dists[rows, phash_nearest])


# ---- prompt retrieval -------------------------------------------------------------------

def prompt_retrieval(image_features: np.ndarray, prompt_features: np.ndarray, targets: np.ndarray,
                     ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Share of images whose own prompt is among the k prompts closest to them, per k.

    Features L2-normalised; `targets[i]` is the row of image i's prompt in `prompt_features`.
    Ties count against the image (its prompt must beat every other to rank first), so a
    model whose images all look alike scores chance or below, never above.
    """
    sims = np.asarray(image_features, np.float64) @ np.asarray(prompt_features, np.float64).T   # (N, P)
    own = sims[np.arange(len(sims)), targets]
    rank = (sims >= own[:, None]).sum(axis=1) - 1    # prompts at least as close as the own one, itself excluded
    return {k: float((rank < k).mean()) for k in ks}


def retrieval_chance(prompts: int, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Top-k accuracy of a random ranking of `prompts` prompts."""
    return {k: min(k, prompts) / prompts for k in ks}


# ---- caveats -----------------------------------------------------------------------------

def pair_cosines(unit_features: np.ndarray, max_pairs: int = 20_000, seed: int = 0) -> np.ndarray:
    """Cosines between random pairs of *different* images (rows L2-normalised), (P,).

    Random pairs of a catalog are mostly unrelated images, so these show whether a feature
    space can tell unrelated images apart at all (a weak catalog CLIP puts them all near 1).
    """
    f = np.asarray(unit_features, np.float64)
    n = len(f)
    if n < 2:
        return np.zeros(0)
    if n * (n - 1) // 2 <= max_pairs:
        i, j = np.triu_indices(n, k=1)
    else:
        rng = np.random.default_rng(seed)
        i = rng.integers(0, n, max_pairs)
        j = (i + rng.integers(1, n, max_pairs)) % n   # never i itself
    return np.einsum("pd,pd->p", f[i], f[j])


def feature_separation(unit_features: np.ndarray, cosine_threshold: float) -> dict[str, float]:
    """Median cosine of different reference images, and the share of such pairs at or above the threshold."""
    cos = pair_cosines(unit_features)
    if not len(cos):
        return {"pairs": 0, "median_cosine": float("nan"), "share_above_threshold": float("nan")}
    return {"pairs": int(len(cos)), "median_cosine": float(np.median(cos)),
            "share_above_threshold": float((cos >= cosine_threshold).mean())}
