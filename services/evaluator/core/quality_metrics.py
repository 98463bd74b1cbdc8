"""Distances between sets of feature vectors (rows of N × D float arrays): Fréchet distance,
kernel inception distance, k-NN manifold precision / recall / density / coverage, nearest
neighbours and realism scores. numpy/scipy only; everything in float64.

* **Fréchet distance** (Heusel et al. 2017): ‖μ₁ − μ₂‖² + tr Σ₁ + tr Σ₂ − 2 tr (Σ₁ Σ₂)^½
  with sample means and covariances (ddof 1). The trace of the square root is computed
  from symmetric matrices only, never with a general ``sqrtm`` of the non-symmetric product
  Σ₁Σ₂ (which is what fails on singular covariances and makes other implementations add
  ε·I, the "usual regularisation"): tr (Σ₁ Σ₂)^½ = tr (Σ₁^½ Σ₂ Σ₁^½)^½, the eigenvalues of
  a symmetric positive semi-definite matrix. With N ≤ D (a singular sample covariance,
  rank ≤ N − 1) it is computed exactly in sample space instead: with Aᵢ = (Xᵢ − μᵢ)/√(Nᵢ−1),
  Σᵢ = AᵢᵀAᵢ and tr (Σ₁ Σ₂)^½ = ‖A₁ A₂ᵀ‖_* (the nuclear norm: the sum of the singular
  values of an N₁ × N₂ matrix). So no ε is needed and none is added: a singular covariance
  is exact, not a failure. What remains is statistical: FD is biased upwards, the more the
  smaller N is (strongly for N < D), so FDs are only comparable at equal N — quality.py
  scores every set at the same size.
* **KID** (Bińkowski et al. 2018): the unbiased estimator of MMD² with the cubic polynomial
  kernel k(x, y) = (xᵀy / D + 1)³, averaged over random subsets of a fixed size m drawn
  without replacement within each subset (independently for the two sets); the std is over
  the subsets (ddof 0, as torch-fidelity). Unbiased: its expectation is 0 for two samples of
  one distribution, so a single estimate may be slightly negative.
* **Precision, recall, density, coverage** (Naeem et al. 2020, the reference ``prdc``):
  each real point's k-NN ball has the radius of its k-th nearest other real point;
  precision = share of fake points inside some real ball; recall = share of real points
  inside some fake ball (fake radii likewise); density = mean number of real balls holding a
  fake point, divided by k; coverage = share of real balls holding at least one fake point.
  Inside means a distance strictly below the radius, as in the reference.
* Cost: FD O(min(N, D)·N·D + min(N, D)³), KID O(subsets · m² · D), P/R/D/C and nearest
  neighbours O(N² · D); memory stays bounded (distances in blocks of BLOCK_ENTRIES).
* **Realism score** (Kynkäänniemi et al. 2019): max over real points r of radius(r) / ‖x − r‖,
  with the half of the real balls with the largest radii discarded (outliers); ≥ 1 means
  inside the estimated real manifold, larger is more typical of the real data.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.errors import InvalidArgument

#: Distance matrices are computed in blocks of at most this many entries (≈ 64 MB of float64).
BLOCK_ENTRIES = 8_000_000
#: Distances are never divided by less than this.
TINY = 1e-12


def as_features(x: np.ndarray, what: str = "features", min_rows: int = 1) -> np.ndarray:
    """`x` as a float64 N × D array; InvalidArgument naming `what` unless it has ≥ min_rows finite rows."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] == 0:
        raise InvalidArgument(f"{what} must be an N × D array, got shape {a.shape}")
    if a.shape[0] < min_rows:
        raise InvalidArgument(f"{what} needs at least {min_rows} rows, has {a.shape[0]}")
    if not np.isfinite(a).all():
        raise InvalidArgument(f"{what} has values that are not finite")
    return a


def squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances between the rows of a (N × D) and b (M × D): N × M, ≥ 0."""
    d = np.einsum("ij,ij->i", a, a)[:, None] + np.einsum("ij,ij->i", b, b)[None, :] - 2.0 * (a @ b.T)
    return np.maximum(d, 0.0, out=d)


def _blocks(n_rows: int, n_cols: int) -> range:
    return range(0, n_rows, max(1, BLOCK_ENTRIES // max(1, n_cols)))


def nearest(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """For each row of `a`: the distance to its nearest row of `b` and that row's index.
    `exclude_self` (a and b the same set): row i of a never matches row i of b (leave one out)."""
    dist = np.empty(len(a))
    index = np.empty(len(a), dtype=np.int64)
    step = _blocks(len(a), len(b)).step
    for start in range(0, len(a), step):
        d = squared_distances(a[start:start + step], b)
        if exclude_self:
            rows = np.arange(d.shape[0])
            d[rows, start + rows] = np.inf
        j = np.argmin(d, axis=1)
        index[start:start + step] = j
        dist[start:start + step] = np.sqrt(d[np.arange(d.shape[0]), j])
    return dist, index


def knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    """Distance from each row of x to its k-th nearest other row (the k-NN ball radius)."""
    if len(x) <= k:
        raise InvalidArgument(f"k-nearest-neighbour radii need more than k = {k} points, got {len(x)}")
    out = np.empty(len(x))
    step = _blocks(len(x), len(x)).step
    for start in range(0, len(x), step):
        d = squared_distances(x[start:start + step], x)
        rows = np.arange(d.shape[0])
        d[rows, start + rows] = np.inf
        out[start:start + step] = np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])
    return out


# --- Fréchet distance -------------------------------------------------------------------------


def _psd_sqrt(c: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((c + c.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(c1: np.ndarray, c2: np.ndarray) -> float:
    """tr (C₁ C₂)^½ of two symmetric positive semi-definite matrices, as tr (C₁^½ C₂ C₁^½)^½."""
    s1 = _psd_sqrt(c1)
    m = s1 @ c2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2.0)
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_from_moments(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet (2-Wasserstein²) distance between N(μ₁, Σ₁) and N(μ₂, Σ₂)."""
    diff = np.asarray(mu1, np.float64) - np.asarray(mu2, np.float64)
    fd = float(diff @ diff) + float(np.trace(cov1)) + float(np.trace(cov2)) - 2.0 * trace_sqrt_product(cov1, cov2)
    return max(fd, 0.0)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FD between the Gaussians fitted to the rows of a and b (module docstring: exact for
    N ≤ D too, without regularisation)."""
    a = as_features(a, "FD set a", 2)
    b = as_features(b, "FD set b", 2)
    if a.shape[1] != b.shape[1]:
        raise InvalidArgument(f"FD: sets differ in width ({a.shape[1]} vs {b.shape[1]})")
    mu1, mu2 = a.mean(axis=0), b.mean(axis=0)
    a1 = (a - mu1) / np.sqrt(len(a) - 1)
    a2 = (b - mu2) / np.sqrt(len(b) - 1)
    if max(len(a), len(b)) <= a.shape[1]:
        diff = mu1 - mu2
        tr_sqrt = float(np.linalg.svd(a1 @ a2.T, compute_uv=False).sum())
        fd = float(diff @ diff) + float(np.sum(a1 * a1)) + float(np.sum(a2 * a2)) - 2.0 * tr_sqrt
        return max(fd, 0.0)
    return frechet_from_moments(mu1, a1.T @ a1, mu2, a2.T @ a2)


# --- KID --------------------------------------------------------------------------------------


def polynomial_kernel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """k(x, y) = (xᵀy / D + 1)³ between the rows of a and b."""
    return (a @ b.T / a.shape[1] + 1.0) ** 3


@dataclass(frozen=True)
class KID:
    mean: float
    std: float
    subset_size: int
    subsets: int


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subset_size: int, subsets: int,
                              rng: np.random.Generator) -> KID:
    """KID of a and b: mean and std of the unbiased MMD² over `subsets` pairs of random
    subsets of `subset_size` rows (module docstring)."""
    a = as_features(a, "KID set a", 2)
    b = as_features(b, "KID set b", 2)
    m = subset_size
    if not 2 <= m <= min(len(a), len(b)):
        raise InvalidArgument(f"KID subset size must be in [2, {min(len(a), len(b))}] (the smaller set), got {m}")
    if subsets < 1:
        raise InvalidArgument(f"KID needs at least one subset, got {subsets}")
    values = np.empty(subsets)
    for s in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        xx, yy = polynomial_kernel(x, x), polynomial_kernel(y, y)
        values[s] = ((xx.sum() - np.trace(xx)) + (yy.sum() - np.trace(yy))) / (m * (m - 1)) \
            - 2.0 * polynomial_kernel(x, y).sum() / (m * m)
    return KID(float(values.mean()), float(values.std()), m, subsets)


# --- precision / recall / density / coverage --------------------------------------------------


@dataclass(frozen=True)
class PRDC:
    precision: float
    recall: float
    density: float
    coverage: float


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None) -> PRDC:
    """Naeem et al.'s four k-NN manifold estimates of `fake` against `real` (module
    docstring). `real_radii`: knn_radii(real, k), when the caller has them already."""
    real = as_features(real, "real features", k + 1)
    fake = as_features(fake, "fake features", k + 1)
    r_real = knn_radii(real, k) if real_radii is None else real_radii
    r_fake = knn_radii(fake, k)
    in_some_ball = np.zeros(len(fake), dtype=bool)
    balls_per_fake = np.zeros(len(fake), dtype=np.int64)
    recalled = np.empty(len(real), dtype=bool)
    covered = np.empty(len(real), dtype=bool)
    step = _blocks(len(real), len(fake)).step
    for start in range(0, len(real), step):  # blocks of real points: memory stays bounded
        d = np.sqrt(squared_distances(real[start:start + step], fake))
        inside = d < r_real[start:start + step, None]
        in_some_ball |= inside.any(axis=0)
        balls_per_fake += inside.sum(axis=0)
        recalled[start:start + step] = (d < r_fake[None, :]).any(axis=1)
        covered[start:start + step] = d.min(axis=1) < r_real[start:start + step]
    return PRDC(precision=float(in_some_ball.mean()), recall=float(recalled.mean()),
                density=float(balls_per_fake.mean() / k), coverage=float(covered.mean()))


def realism_scores(x: np.ndarray, real: np.ndarray, k: int = 5, real_radii: np.ndarray | None = None) -> np.ndarray:
    """Kynkäänniemi et al.'s realism score of each row of x against `real` (module docstring)."""
    real = as_features(real, "real features", k + 1)
    radii = knn_radii(real, k) if real_radii is None else real_radii
    keep = radii <= np.median(radii)
    kept, r = real[keep], radii[keep]
    out = np.empty(len(x))
    step = _blocks(len(x), len(kept)).step
    for start in range(0, len(x), step):
        d = np.sqrt(squared_distances(x[start:start + step], kept))
        out[start:start + step] = (r[None, :] / np.maximum(d, TINY)).max(axis=1)
    return out
