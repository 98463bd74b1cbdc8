"""Summaries, bootstrap CIs, paired comparisons and across-seed intervals."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from services.common.errors import InvalidArgument
from services.evaluator.core.stats import (
    across_seeds,
    bootstrap_ci,
    holm_adjust,
    paired_comparison,
    summarize,
    summarize_many,
)


def test_summary_values_by_hand():
    s = summarize([0.0, 0.5, 1.0, 1.0], n_bootstrap=500, seed=1)
    assert s.n == 4
    assert s.mean == pytest.approx(0.625)
    assert s.median == pytest.approx(0.75)
    assert s.std == pytest.approx(np.std([0, 0.5, 1, 1], ddof=1))
    assert 0.0 <= s.ci_low <= s.mean <= s.ci_high <= 1.0


def test_bootstrap_is_seeded_and_deterministic():
    v = np.random.default_rng(0).random(50)
    assert summarize(v, seed=3) == summarize(v, seed=3)
    assert summarize(v, seed=3).ci_low != summarize(v, seed=4).ci_low


def test_ci_contains_mean_and_narrows_with_n():
    rng = np.random.default_rng(5)
    widths = []
    for n in (20, 200, 2000):
        v = rng.beta(5, 2, size=n)
        s = summarize(v, n_bootstrap=1000, seed=0)
        assert s.ci_low < s.mean < s.ci_high
        widths.append(s.ci_high - s.ci_low)
    assert widths[0] > widths[1] > widths[2]
    # Width of a 95 % CI of a mean ≈ 2·1.96·σ/√n.
    sigma = np.sqrt(5 * 2 / (7**2 * 8))
    assert widths[2] == pytest.approx(2 * 1.96 * sigma / np.sqrt(2000), rel=0.15)


def test_single_image_and_constant_values():
    s = summarize([0.7], n_bootstrap=200)
    assert (s.mean, s.std, s.ci_low, s.ci_high) == (0.7, 0.0, 0.7, 0.7)


def test_summarize_many_shares_resamples():
    v = np.random.default_rng(2).random(30)
    out = summarize_many({"a": v, "b": v}, n_bootstrap=300, seed=9)
    assert out["a"] == out["b"]


def test_bad_inputs():
    with pytest.raises(InvalidArgument):
        summarize([], n_bootstrap=200)
    with pytest.raises(InvalidArgument, match="n_bootstrap"):
        summarize([1.0], n_bootstrap=5)
    with pytest.raises(InvalidArgument, match="finite"):
        summarize([1.0, float("nan")], n_bootstrap=200)


def test_paired_comparison_matches_scipy_and_detects_difference():
    rng = np.random.default_rng(11)
    b = rng.random(100) * 0.8
    a = np.clip(b + 0.05 + rng.normal(0, 0.02, 100), 0, 1)
    c = paired_comparison(a, b, "iou", n_bootstrap=1000, seed=0)
    assert c.n_images == 100
    assert c.mean_difference == pytest.approx((a - b).mean())
    assert c.ci_low < c.mean_difference < c.ci_high
    assert c.ci_low > 0
    assert c.p_value == pytest.approx(sps.wilcoxon(a - b).pvalue)
    assert c.p_value < 1e-6


def test_paired_comparison_identical_arms():
    a = np.linspace(0, 1, 10)
    c = paired_comparison(a, a.copy(), n_bootstrap=200)
    assert c.mean_difference == 0 and c.p_value == 1.0 and c.ci_low == c.ci_high == 0


def test_paired_comparison_needs_same_images():
    with pytest.raises(InvalidArgument, match="same images"):
        paired_comparison([1, 2, 3], [1, 2], n_bootstrap=200)


def test_across_seeds_t_interval():
    v = [0.70, 0.72, 0.74]
    s = across_seeds(v)
    half = sps.t.ppf(0.975, 2) * np.std(v, ddof=1) / np.sqrt(3)
    assert s.mean == pytest.approx(0.72)
    assert (s.ci_low, s.ci_high) == pytest.approx((0.72 - half, 0.72 + half))
    one = across_seeds([0.7], single_ci=(0.65, 0.75))
    assert (one.n_seeds, one.ci_low, one.ci_high) == (1, 0.65, 0.75)


def test_across_seeds_interval_is_clipped_to_the_score_range():
    s = across_seeds([0.1, 0.9], bounds=(0.0, 1.0))  # t(1) = 12.71: ±5.08 around 0.5
    assert s.mean == pytest.approx(0.5)
    assert (s.ci_low, s.ci_high) == (0.0, 1.0)
    unclipped = across_seeds([0.1, 0.9])
    assert unclipped.ci_low == pytest.approx(0.5 - 12.7062 * 0.5656854 / 2**0.5, abs=1e-3)


def test_holm_adjustment_by_hand():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → monotone: 0.06.
    assert holm_adjust([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm_adjust([0.2, 0.5, 0.9]) == pytest.approx([0.6, 1.0, 1.0])  # capped at 1
    assert holm_adjust([0.03]) == pytest.approx([0.03])  # one comparison: unchanged
    assert holm_adjust([0.01, 0.01]) == pytest.approx([0.02, 0.02])  # ties
    assert holm_adjust([]).size == 0
    with pytest.raises(InvalidArgument, match="p-values"):
        holm_adjust([0.5, 1.5])


def test_bca_interval_is_scipys():
    v = np.random.default_rng(7).beta(5, 1.5, size=40)  # skewed, like per-image IoU
    low, high = bootstrap_ci(v, n_bootstrap=1000, seed=3)
    ref = sps.bootstrap((v,), np.mean, n_resamples=1000, method="BCa", confidence_level=0.95,
                        random_state=np.random.default_rng(3)).confidence_interval
    assert (low, high) == pytest.approx((ref.low, ref.high), abs=1e-12)
    assert low < v.mean() < high
    percentile = bootstrap_ci(v, n_bootstrap=1000, seed=3, method="percentile")
    assert percentile == pytest.approx((summarize(v, 1000, 3).ci_low, summarize(v, 1000, 3).ci_high))
    assert percentile != (low, high)


def test_bca_degenerate_values_give_the_point():
    assert bootstrap_ci([0.4] * 10, n_bootstrap=200) == (0.4, 0.4)
    assert bootstrap_ci([0.7], n_bootstrap=200) == (0.7, 0.7)
    # One odd value among equal ones: BCa's acceleration is undefined; the percentile interval stands in.
    low, high = bootstrap_ci([1.0] * 30 + [0.0], n_bootstrap=500, seed=1)
    assert 0.0 <= low <= high <= 1.0 and np.isfinite([low, high]).all()
    with pytest.raises(InvalidArgument, match="method"):
        bootstrap_ci([0.1, 0.2], n_bootstrap=200, method="normal")


def test_paired_comparison_with_bca():
    rng = np.random.default_rng(12)
    b = rng.random(60) * 0.8
    a = np.clip(b + 0.03 + rng.normal(0, 0.05, 60), 0, 1)
    c = paired_comparison(a, b, "iou", n_bootstrap=500, seed=2, method="bca")
    assert (c.ci_low, c.ci_high) == bootstrap_ci(a - b, 500, 2, method="bca")
    # The default stays the percentile interval (Compare's numbers do not move).
    p = paired_comparison(a, b, "iou", n_bootstrap=500, seed=2)
    assert (p.ci_low, p.ci_high) == pytest.approx(bootstrap_ci(a - b, 500, 2, method="percentile"))
    assert p.p_value == c.p_value
