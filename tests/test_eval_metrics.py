"""Metric correctness against closed forms and constructed sets with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from opencanvas.sample.metrics import (
    feature_stats,
    frechet_distance,
    frechet_distance_features,
    hamming,
    kernel_distance,
    knn_radii,
    memorization,
    phash_ints,
    polynomial_mmd2,
    precision_recall,
)
from tests.factories import draw_shape


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _sqrtm_sym(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(w)) @ v.T


def test_frechet_distance_closed_form_for_non_commuting_covariances() -> None:
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = _random_spd(5, rng), _random_spd(5, rng)
    root = _sqrtm_sym(s1)
    expected = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * _sqrtm_sym(root @ s2 @ root))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_diagonal_gaussians() -> None:
    """Diagonal covariances commute: FD = |dmu|^2 + sum (sqrt(a) - sqrt(b))^2."""
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(5.0 + 1.0 + 1.0)


def test_frechet_distance_from_samples_converges() -> None:
    rng = np.random.default_rng(1)
    s1, s2 = np.diag([1.0, 2.0, 0.5]), np.diag([2.0, 2.0, 0.5])
    x = rng.multivariate_normal(np.zeros(3), s1, size=20000)
    y = rng.multivariate_normal(np.ones(3), s2, size=20000)
    expected = 3.0 + (1 - np.sqrt(2)) ** 2
    assert frechet_distance_features(x, y) == pytest.approx(expected, rel=0.05)


def test_frechet_distance_gram_route_equals_covariance_route() -> None:
    """Fewer samples than dimensions: the N x N nuclear-norm route must equal the D x D one."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(12, 40)) @ rng.normal(size=(40, 40))
    b = rng.normal(size=(15, 40)) + 0.5
    covariance_route = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert frechet_distance_features(a, b) == pytest.approx(covariance_route, rel=1e-8)


def _population_mmd2_diag_gaussians(m1, v1, m2, v2) -> float:
    """Exact MMD^2 for the cubic kernel between diagonal Gaussians (cumulants of a sum of independents)."""
    d = len(m1)

    def expected_kernel(ma, va, mb, vb) -> float:
        # S = sum_i a_i b_i with independent a ~ N(ma, va), b ~ N(mb, vb); E[(S/d + 1)^3].
        e1, e2, e3 = ma * mb, (ma**2 + va) * (mb**2 + vb), (ma**3 + 3 * ma * va) * (mb**3 + 3 * mb * vb)
        k1, k2 = e1.sum(), (e2 - e1**2).sum()
        k3 = (e3 - 3 * e2 * e1 + 2 * e1**3).sum()
        s1, s2, s3 = k1, k2 + k1**2, k3 + 3 * k2 * k1 + k1**3
        return 1 + 3 * s1 / d + 3 * s2 / d**2 + s3 / d**3

    return (expected_kernel(m1, v1, m1, v1) + expected_kernel(m2, v2, m2, v2)
            - 2 * expected_kernel(m1, v1, m2, v2))


def test_kid_matches_the_closed_form_on_gaussians() -> None:
    rng = np.random.default_rng(2)
    m1, v1 = np.array([0.0, 0.5, -0.5, 1.0]), np.array([1.0, 0.5, 2.0, 1.0])
    m2, v2 = np.array([1.0, 0.0, 0.5, 1.5]), np.array([0.5, 1.0, 1.0, 2.0])
    x = rng.normal(m1, np.sqrt(v1), size=(3000, 4))
    y = rng.normal(m2, np.sqrt(v2), size=(3000, 4))
    expected = _population_mmd2_diag_gaussians(m1, v1, m2, v2)
    assert expected > 0.5
    mean, std = kernel_distance(x, y, num_subsets=4, max_subset_size=1500)
    assert mean == pytest.approx(expected, rel=0.1)
    assert std < 0.1 * expected
    assert polynomial_mmd2(x, y) == pytest.approx(expected, rel=0.05)


def test_kid_is_near_zero_for_one_distribution() -> None:
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(1500, 8)), rng.normal(size=(1500, 8))
    mean, _ = kernel_distance(x, y, num_subsets=5)
    assert abs(mean) < 0.01


def test_precision_recall_on_constructed_sets() -> None:
    grid = np.arange(10, dtype=float)[:, None]              # real: 0..9 on a line
    far = np.arange(1000, 1010, dtype=float)[:, None]
    assert precision_recall(grid, grid, k=3) == (1.0, 1.0)
    # Half the fakes are far from every real point; the fakes on the grid cover all of it.
    assert precision_recall(grid, np.concatenate([grid, far]), k=3) == (0.5, 1.0)
    # Fakes 0..4: each inside the real manifold; their 3-NN radii (3, 2, 2, 2, 3) reach up to 7.
    np.testing.assert_array_equal(knn_radii(grid[:5], 3), [3, 2, 2, 2, 3])
    assert precision_recall(grid, grid[:5], k=3) == (1.0, 0.8)


def test_memorization_finds_a_planted_copy() -> None:
    rng = np.random.default_rng(4)
    colors, shapes = ["red", "green", "blue", "yellow"], ["circle", "square", "triangle"]
    refs = [draw_shape(colors[i % 4], shapes[i % 3], 64, rng) for i in range(12)]
    feats = rng.normal(size=(12, 16))
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    gen_feats = rng.normal(size=(3, 16))
    gen_feats[1] = feats[7]                                    # generated image 1 is reference 7
    gen_feats /= np.linalg.norm(gen_feats, axis=1, keepdims=True)
    gen = [Image.new("RGB", (64, 64), (128, 0, 255)), refs[7].copy(), Image.effect_noise((64, 64), 60).convert("RGB")]
    result = memorization(gen_feats, feats, phash_ints(gen), phash_ints(refs))
    assert result.nearest[1] == 7 and result.cosine[1] == pytest.approx(1.0)
    assert result.phash_nearest[1] == 7 and result.phash_distance[1] == 0
    assert result.cosine[[0, 2]].max() < 0.95
    summary = result.summary(cosine_threshold=0.95, phash_threshold=4)
    assert summary["share_cosine_above"] == pytest.approx(1 / 3)


def test_hamming_counts_bits() -> None:
    a = np.array([0b1011, 0], dtype=np.uint64)
    b = np.array([0b0001, 2**64 - 1], dtype=np.uint64)
    np.testing.assert_array_equal(hamming(a, b), [[2, 61], [1, 64]])


def test_pair_cosines_never_pair_an_image_with_itself() -> None:
    from opencanvas.sample.metrics import feature_separation, pair_cosines

    eye = np.eye(300)                       # 300 orthogonal images: every different pair has cosine 0
    assert np.all(pair_cosines(eye, max_pairs=5000) == 0)   # sampled pairs (300*299/2 > 5000)
    assert np.all(pair_cosines(eye[:20]) == 0) and len(pair_cosines(eye[:20])) == 190   # all pairs
    same = np.tile([[1.0, 0.0]], (10, 1))
    assert feature_separation(same, 0.95) == {"pairs": 45, "median_cosine": 1.0, "share_above_threshold": 1.0}


def test_prompt_retrieval_counts_ties_against_the_image() -> None:
    from opencanvas.sample.metrics import prompt_retrieval, retrieval_chance

    prompts = np.eye(6)                              # six orthogonal prompt directions
    images = np.eye(6)[[0, 1, 2, 3, 4, 5, 0]]        # image 6 looks like prompt 0 ...
    targets = np.array([0, 1, 2, 3, 4, 5, 5])        # ... but was asked for prompt 5
    hits = prompt_retrieval(images, prompts, targets)
    assert hits[1] == pytest.approx(6 / 7)
    assert hits[5] == pytest.approx(6 / 7)          # prompt 5 ties with four others at 0: rank 5, outside the top 5
    same = prompt_retrieval(np.ones((4, 6)) / np.sqrt(6), prompts[:4], np.arange(4))   # all images alike
    assert same[1] == 0.0                            # a tie is never a hit
    assert retrieval_chance(8) == {1: 1 / 8, 5: 5 / 8} and retrieval_chance(3)[5] == 1.0
