"""Quality metrics against hand-computed values: FD of Gaussians with known moments (closed
form), the exact N ≤ D path, KID's unbiased estimator, P/R/D/C on point clouds whose answers
are counted by hand, nearest neighbours and realism scores."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg

from services.common.errors import InvalidArgument
from services.evaluator.core.quality_metrics import (
    frechet_distance,
    frechet_from_moments,
    kernel_inception_distance,
    knn_radii,
    nearest,
    polynomial_kernel,
    prdc,
    realism_scores,
)


def test_fd_of_gaussians_with_known_moments_is_the_closed_form():
    # Diagonal covariances: FD = |μ1 − μ2|² + Σ (√s1 − √s2)².
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([3.0, 1.0, 2.0])
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    expected = 9.0 + 16.0 + (1 - 2) ** 2 + (2 - 1) ** 2 + 0.0
    assert frechet_from_moments(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, abs=1e-10)
    # The same Gaussians in a rotated basis (commuting covariances): the distance is invariant.
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    assert frechet_from_moments(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T) == pytest.approx(expected, abs=1e-9)
    # Non-commuting covariances: tr sqrt(Σ1 Σ2) against scipy's general sqrtm.
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(5, 5)), rng.normal(size=(5, 5))
    c1, c2 = a @ a.T + 0.1 * np.eye(5), b @ b.T
    ref = float(np.trace(c1) + np.trace(c2) - 2 * np.real(np.trace(linalg.sqrtm(c1 @ c2))))
    assert frechet_from_moments(np.zeros(5), c1, np.zeros(5), c2) == pytest.approx(ref, rel=1e-9)


def test_fd_from_samples_estimates_the_closed_form():
    rng = np.random.default_rng(2)
    n = 40_000
    a = rng.normal(size=(n, 3)) * np.sqrt([1.0, 4.0, 9.0])
    b = rng.normal(size=(n, 3)) * np.sqrt([4.0, 1.0, 9.0]) + [3.0, 0.0, 4.0]
    assert frechet_distance(a, b) == pytest.approx(9 + 16 + 1 + 1, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_fd_with_fewer_images_than_dimensions_is_exact_without_regularisation():
    """N ≤ D: the sample-space (nuclear norm) path equals the moments path on the singular
    sample covariances, and a set against itself is 0."""
    rng = np.random.default_rng(3)
    a = rng.normal(size=(30, 64))
    b = rng.normal(size=(25, 64)) * 1.5 + 0.3
    via_moments = frechet_from_moments(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    # (The moments path takes square roots of the ~1e-14 rounding noise of the 34+ zero
    # eigenvalues: ~1e-7 each; the sample-space path has no such error.)
    assert frechet_distance(a, b) == pytest.approx(via_moments, rel=1e-7)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(b, a), rel=1e-12)


def test_fd_rejects_bad_input():
    with pytest.raises(InvalidArgument, match="FD set a needs at least 2 rows"):
        frechet_distance(np.zeros((1, 3)), np.zeros((4, 3)))
    with pytest.raises(InvalidArgument, match="differ in width"):
        frechet_distance(np.zeros((4, 3)), np.zeros((4, 2)))
    with pytest.raises(InvalidArgument, match="not finite"):
        frechet_distance(np.full((4, 3), np.nan), np.zeros((4, 3)))


def mmd2_by_hand(x, y):
    """The unbiased MMD² with k(x, y) = (x·y/d + 1)³, written out as loops."""
    d, m = x.shape[1], len(x)

    def k(u, v):
        return (float(u @ v) / d + 1.0) ** 3

    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_mmd_with_the_cubic_kernel():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + 0.5
    # A subset as large as the sets: every subset is the whole set, the std is 0.
    kid = kernel_inception_distance(x, y, 6, 3, np.random.default_rng(0))
    assert kid.mean == pytest.approx(mmd2_by_hand(x, y), rel=1e-12) and kid.std == pytest.approx(0.0, abs=1e-12)
    assert polynomial_kernel(x[:1], y[:1])[0, 0] == pytest.approx((x[0] @ y[0] / 3 + 1) ** 3)


def test_kid_of_one_distribution_is_near_zero_and_of_shifted_sets_positive():
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same = kernel_inception_distance(a, b, 100, 200, np.random.default_rng(1))
    shifted = kernel_inception_distance(a, b + 0.5, 100, 200, np.random.default_rng(1))
    assert abs(same.mean) < 3 * same.std / np.sqrt(200) + 1e-3 and same.std > 0
    assert shifted.mean > 0.05 and shifted.mean > 20 * same.std / np.sqrt(200)
    # Identical sets: ≈ 0 as well (only the shared points' diagonal terms bias it, O(1/n)).
    assert abs(kernel_inception_distance(a, a, 100, 200, np.random.default_rng(1)).mean) < 0.05
    # Seeded: the same generator state gives the same value.
    again = kernel_inception_distance(a, b, 100, 200, np.random.default_rng(1))
    assert (again.mean, again.std) == (same.mean, same.std)
    with pytest.raises(InvalidArgument, match="KID subset size must be in"):
        kernel_inception_distance(a[:5], b, 6, 1, np.random.default_rng(0))


def line(xs, y=0.0):
    return np.array([[float(x), y] for x in xs])


def test_prdc_on_point_clouds_with_known_answers():
    real = line(range(10))  # spacing 1: with k = 1 every real ball has radius 1
    assert knn_radii(real, 1) == pytest.approx(np.ones(10))
    # A perfect copy: every fake point in its own real ball only (neighbours at distance
    # exactly 1 are not inside: strictly below the radius).
    p = prdc(real, real.copy(), k=1)
    assert (p.precision, p.recall, p.density, p.coverage) == (1.0, 1.0, 1.0, 1.0)
    # Far away: nothing inside anything.
    p = prdc(real, line(range(100, 110)), k=1)
    assert (p.precision, p.recall, p.density, p.coverage) == (0.0, 0.0, 0.0, 0.0)
    # Half on the real points 0..4, half far away: precision, density, coverage 1/2; recall:
    # reals 0..4 lie inside fake balls (radius 1), reals 5..9 do not (distance ≥ 1 to fake 4).
    p = prdc(real, line([0, 1, 2, 3, 4, 100, 101, 102, 103, 104]), k=1)
    assert (p.precision, p.recall, p.density, p.coverage) == (0.5, 0.5, 0.5, 0.5)
    # Mode collapse: every fake point on real point 0 (10 copies). Fake radii are 0 (the
    # k-th nearest other fake is a copy), so recall is 0; precision 1; density: each fake
    # point is inside ball 0 only → 1; coverage 1/10.
    p = prdc(real, line([0] * 10), k=1)
    assert (p.precision, p.recall, p.density, p.coverage) == (1.0, 0.0, 1.0, 0.1)
    # Density counts overlapping balls: with k = 2 radii are 2 (ends) or 1 (inner: neighbours at
    # distance 1 on both sides); a fake point at 4.5 is inside the balls of 3? (1.5 < 1 no),
    # 4 (0.5 < 1), 5 (0.5 < 1), 6 (1.5 < 1 no) → 2 balls / k = 1.
    real2 = line(range(10))
    assert knn_radii(real2, 2) == pytest.approx([2, 1, 1, 1, 1, 1, 1, 1, 1, 2])
    p = prdc(real2, line([4.5, 4.5, 4.5]), k=2)
    assert p.density == pytest.approx(1.0) and p.coverage == pytest.approx(0.2) and p.precision == 1.0


def test_nearest_neighbours_match_brute_force_and_leave_one_out():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=(50, 7)), rng.normal(size=(80, 7))
    full = np.linalg.norm(a[:, None] - b[None], axis=2)
    d, j = nearest(a, b)
    assert np.array_equal(j, full.argmin(1)) and d == pytest.approx(full.min(1), abs=1e-9)
    self_d = np.linalg.norm(a[:, None] - a[None], axis=2) + np.diag(np.full(50, np.inf))
    d, j = nearest(a, a, exclude_self=True)
    assert np.array_equal(j, self_d.argmin(1)) and d == pytest.approx(self_d.min(1), abs=1e-9)


def test_nearest_works_in_blocks(monkeypatch):
    from services.evaluator.core import quality_metrics

    rng = np.random.default_rng(7)
    a, b = rng.normal(size=(37, 4)), rng.normal(size=(11, 4))
    whole, whole_prdc, whole_realism = nearest(a, b), prdc(a, b, 3), realism_scores(b, a, 3)
    monkeypatch.setattr(quality_metrics, "BLOCK_ENTRIES", 30)  # blocks of 2 or 3 rows
    blocked = nearest(a, b)
    assert np.array_equal(whole[1], blocked[1]) and np.allclose(whole[0], blocked[0])
    assert prdc(a, b, 3) == whole_prdc and np.allclose(realism_scores(b, a, 3), whole_realism)
    assert np.allclose(knn_radii(a, 3), np.sort(np.linalg.norm(a[:, None] - a[None], axis=2), axis=1)[:, 3])


def test_realism_is_high_on_the_real_manifold_and_low_off_it():
    real = line(range(10))
    # radii (k = 1) are all 1, the median keeps all; a point at distance 0.25 from a real
    # point scores 1 / 0.25 = 4; a point at distance 10 from the nearest scores 0.1.
    scores = realism_scores(line([3.25, 19.0]), real, k=1)
    assert scores == pytest.approx([4.0, 0.1])
