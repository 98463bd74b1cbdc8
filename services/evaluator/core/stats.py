"""Statistics over per-image metrics: summaries with seeded bootstrap CIs, paired
comparisons of two arms, and mean ± CI across seeds.

Conventions:

* ``std`` is the sample standard deviation (ddof = 1; 0 for a single value).
* Confidence intervals over images are **percentile bootstrap** intervals of the mean
  (default 2000 resamples, 95 %), drawn from ``numpy.random.default_rng(seed)``: the same
  values and seed always give the same interval.
* Across seeds (a handful of training runs per arm) the bootstrap is meaningless, so the
  interval is Student's t interval of the mean of the per-seed aggregates; with one seed
  there is nothing to vary, and the caller's single-run interval is reported instead.
"""
from __future__ import annotations

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
) -> PairedComparison:
    """Bootstrap CI of the mean paired difference and a Wilcoxon signed-rank p-value.

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
    boot = bootstrap_means(diff, n_bootstrap, seed)[:, 0]
    low, high = _percentiles(boot, confidence)
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
