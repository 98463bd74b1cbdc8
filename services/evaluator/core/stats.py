"""Statistics over per-image metrics: summaries with seeded bootstrap CIs, paired
comparisons of two arms, and mean ± CI across seeds.

Conventions:

* ``std`` is the sample standard deviation (ddof = 1; 0 for a single value).
* Confidence intervals over images are **percentile bootstrap** intervals of the mean
  (default 2000 resamples, 95 %), drawn from ``numpy.random.default_rng(seed)``: the same
  values and seed always give the same interval.
* Reports use **BCa** intervals (bias-corrected and accelerated, ``scipy.stats.bootstrap``)
  of means over images: second-order accurate where the percentile interval is first-order,
  which matters for skewed per-image scores (many IoUs near 1, a few failures at 0). The
  evaluation JSON keeps its percentile intervals (its format is fixed), and so does the
  Compare RPC unless asked otherwise.
* Across seeds (a handful of training runs per arm) the bootstrap is meaningless, so the
  interval is Student's t interval of the mean of the per-seed aggregates; with one seed
  there is nothing to vary, and the caller's single-run interval is reported instead.
  Reports give it only from MIN_SEEDS_FOR_T seeds on.
* Several comparisons read together get Holm's step-down adjustment of their p-values
  (family-wise error at the nominal level, uniformly more powerful than Bonferroni).
"""
from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from services.common.errors import InvalidArgument
from services.evaluator.config import (
    DEFAULT_BOOTSTRAP,
    DEFAULT_CONFIDENCE,
    check_bootstrap,
)

# Resamples are drawn in chunks so that memory stays bounded (chunk × n indices).
_MAX_CHUNK_ELEMENTS = 4_000_000
#: Fewest seeds for a Student-t interval across seeds: with 2, t(0.975, 1) = 12.7 and the
#: interval spans most of [0, 1], which says nothing.
MIN_SEEDS_FOR_T = 3
#: Interval methods of bootstrap_ci / paired_comparison.
CI_METHODS = ("percentile", "bca")


@dataclass(frozen=True)
class Summary:
    """Summary of one metric over images."""

    n: int
    mean: float
    std: float
    median: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def _as_values(values: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(arr)):
        raise InvalidArgument(f"{what}: values must be finite numbers")
    return arr


def bootstrap_means(
    columns: np.ndarray, n_bootstrap: int = DEFAULT_BOOTSTRAP, seed: int = 0
) -> np.ndarray:
    """Means of ``n_bootstrap`` resamples of the rows of ``columns`` (n × k) → (n_bootstrap × k).

    All columns share the same resampled rows, so metrics of one evaluation stay paired.
    """
    columns = np.asarray(columns, dtype=np.float64)
    if columns.ndim == 1:
        columns = columns[:, None]
    n = columns.shape[0]
    if n == 0:
        raise InvalidArgument("cannot bootstrap an empty set of images")
    rng = np.random.default_rng(seed)
    out = np.empty((n_bootstrap, columns.shape[1]), dtype=np.float64)
    chunk = max(1, _MAX_CHUNK_ELEMENTS // n)
    for start in range(0, n_bootstrap, chunk):
        stop = min(n_bootstrap, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        for j in range(columns.shape[1]):
            out[start:stop, j] = columns[idx, j].mean(axis=1)
    return out


def _percentiles(samples: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray]:
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(samples, [alpha, 1.0 - alpha], axis=0)
    return low, high


def summarize_many(
    metrics: Mapping[str, Sequence[float] | np.ndarray],
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> dict[str, Summary]:
    """Summaries of several per-image metrics of the same images (one shared bootstrap)."""
    check_bootstrap(n_bootstrap, confidence)
    names = list(metrics)
    if not names:
        return {}
    cols = [_as_values(metrics[k], k) for k in names]
    n = cols[0].shape[0]
    if any(c.shape[0] != n for c in cols):
        raise InvalidArgument("all metrics must have one value per image")
    if n == 0:
        raise InvalidArgument("no images to summarise")
    table = np.stack(cols, axis=1)
    boot = bootstrap_means(table, n_bootstrap, seed)
    low, high = _percentiles(boot, confidence)
    std = table.std(axis=0, ddof=1) if n > 1 else np.zeros(len(names))
    return {
        name: Summary(
            n=int(n),
            mean=float(table[:, j].mean()),
            std=float(std[j]),
            median=float(np.median(table[:, j])),
            ci_low=float(low[j]),
            ci_high=float(high[j]),
        )
        for j, name in enumerate(names)
    }


def summarize(
    values: Sequence[float] | np.ndarray,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
) -> Summary:
    """Mean, std, median and percentile-bootstrap CI of the mean of per-image values."""
    return summarize_many({"x": values}, n_bootstrap, seed, confidence)["x"]


def bootstrap_ci(
    values: Sequence[float] | np.ndarray,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    method: str = "bca",
) -> tuple[float, float]:
    """Bootstrap CI of the mean of ``values`` (one per image): "bca" through
    ``scipy.stats.bootstrap``, or "percentile" as ``summarize`` draws it.

    Degenerate data (fewer than two values, or all equal) has no spread to resample: the
    interval is the point. Where BCa's corrections are undefined although the data vary
    (a jackknife without spread, e.g. one odd value out of many), the percentile interval of
    the same resamples is returned.
    """
    check_bootstrap(n_bootstrap, confidence)
    if method not in CI_METHODS:
        raise InvalidArgument(f"interval method must be one of {', '.join(CI_METHODS)}; got {method!r}")
    v = _as_values(values, "bootstrap values")
    if v.size == 0:
        raise InvalidArgument("cannot bootstrap an empty set of images")
    mean = float(v.mean())
    if v.size < 2 or np.all(v == v[0]):
        return mean, mean
    if method == "percentile":
        p_low, p_high = _percentiles(bootstrap_means(v, n_bootstrap, seed)[:, 0], confidence)
        return float(p_low), float(p_high)
    with warnings.catch_warnings():
        # scipy warns (and returns NaN) where the BCa corrections are undefined; handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", getattr(sps, "DegenerateDataWarning", RuntimeWarning))
        res = sps.bootstrap((v,), np.mean, n_resamples=n_bootstrap, batch=max(1, _MAX_CHUNK_ELEMENTS // v.size),
                            vectorized=True, confidence_level=confidence, method="BCa",
                            random_state=np.random.default_rng(seed))
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(low) and np.isfinite(high)):
        pl, ph = _percentiles(res.bootstrap_distribution, confidence)
        low, high = float(pl), float(ph)
    return low, high


def holm_adjust(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm step-down adjusted p-values, in the input order.

    With the m p-values sorted ascending, p_(i) (i = 1..m) becomes
    max over j ≤ i of min(1, (m − j + 1) · p_(j)); rejecting where the adjusted value is
    ≤ α controls the family-wise error rate at α.
    """
    p = _as_values(p_values, "p-values")
    if np.any((p < 0) | (p > 1)):
        raise InvalidArgument("p-values must lie in [0, 1]")
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out = np.empty(m, dtype=np.float64)
    out[order] = np.maximum.accumulate(scaled)
    return out


@dataclass(frozen=True)
class PairedComparison:
    """Paired difference a − b of a per-image metric on the same images."""

    metric: str
    n_images: int
    mean_a: float
    mean_b: float
    mean_difference: float
    ci_low: float
    ci_high: float
    # Two-sided Wilcoxon signed-rank test (zero differences dropped); 1.0 when a == b everywhere.
    p_value: float
    statistic: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    metric: str = "iou",
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = 0,
    confidence: float = DEFAULT_CONFIDENCE,
    method: str = "percentile",
) -> PairedComparison:
    """Bootstrap CI of the mean paired difference (``method``: "percentile" or "bca", see
    bootstrap_ci) and a Wilcoxon signed-rank p-value.

    ``a[i]`` and ``b[i]`` must be the same image scored by the two arms.
    """
    check_bootstrap(n_bootstrap, confidence)
    a = _as_values(a, f"{metric} of arm a")
    b = _as_values(b, f"{metric} of arm b")
    if a.shape != b.shape:
        raise InvalidArgument(f"paired comparison needs the same images: {a.size} vs {b.size} values")
    if a.size == 0:
        raise InvalidArgument("paired comparison of zero images")
    diff = a - b
    if method == "percentile":
        # Kept as it was (no shortcut for constant differences): Compare's numbers stay put.
        p_low, p_high = _percentiles(bootstrap_means(diff, n_bootstrap, seed)[:, 0], confidence)
        low, high = float(p_low), float(p_high)
    else:
        low, high = bootstrap_ci(diff, n_bootstrap, seed, confidence, method)
    if np.all(diff == 0):
        p_value, statistic = 1.0, 0.0
    else:
        res = sps.wilcoxon(diff, zero_method="wilcox", alternative="two-sided")
        p_value, statistic = float(res.pvalue), float(res.statistic)
    return PairedComparison(
        metric=metric,
        n_images=int(a.size),
        mean_a=float(a.mean()),
        mean_b=float(b.mean()),
        mean_difference=float(diff.mean()),
        ci_low=float(low),
        ci_high=float(high),
        p_value=p_value,
        statistic=statistic,
    )


@dataclass(frozen=True)
class SeedSummary:
    """One arm's aggregate over several seeds (training runs)."""

    n_seeds: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def across_seeds(
    values: Sequence[float] | np.ndarray,
    confidence: float = DEFAULT_CONFIDENCE,
    single_ci: tuple[float, float] | None = None,
    bounds: tuple[float, float] = (-np.inf, np.inf),
) -> SeedSummary:
    """Mean ± Student-t CI of per-seed aggregates (e.g. each seed's mean IoU).

    With one seed the interval is ``single_ci`` (that run's bootstrap CI over images) when
    given, else the point itself. The interval is clipped to ``bounds``, the range the score
    can take (with 2 seeds t = 12.7, so an unclipped IoU interval runs far outside [0, 1]).
    """
    v = _as_values(values, "per-seed values")
    if v.size == 0:
        raise InvalidArgument("no seeds to summarise")
    mean = float(v.mean())
    if v.size == 1:
        low, high = single_ci if single_ci is not None else (mean, mean)
        return SeedSummary(1, mean, 0.0, float(low), float(high))
    std = float(v.std(ddof=1))
    half = float(sps.t.ppf(0.5 + confidence / 2.0, v.size - 1)) * std / np.sqrt(v.size)
    low, high = bounds
    return SeedSummary(int(v.size), mean, std, float(max(mean - half, low)), float(min(mean + half, high)))
