"""Known-value tests for the group bootstrap."""

from __future__ import annotations

import time

import numpy as np
import pytest

from pianoray.objectives.bootstrap import (
    group_bootstrap,
    group_codes,
    paired_bootstrap_gap,
    percentile_interval,
    resample_weights,
    row_bootstrap,
)


def test_group_codes_sorted_keys_and_count() -> None:
    codes, n = group_codes(np.array(["b", "a", "b", "c"], dtype=object))
    assert n == 3 and codes.tolist() == [1, 0, 1, 2]


def test_resample_weights_draw_g_groups_per_resample() -> None:
    w = resample_weights(7, 500, seed=1)
    assert w.shape == (500, 7)
    assert np.all(w.sum(axis=1) == 7)
    assert w.mean() == pytest.approx(1.0, abs=0.05)  # each group drawn once per resample on average


def test_group_bootstrap_two_groups_known_percentiles() -> None:
    # Groups with values 0 and 1; a resample draws 2 groups: mean 0 (p=1/4), 0.5 (1/2), 1 (1/4).
    values = np.array([0.0, 1.0])

    def mean(w: np.ndarray) -> np.ndarray:
        return (w @ values) / w.sum(axis=1)

    assert group_bootstrap(mean, ["x", "y"], n_boot=2000, alpha=0.05) == (0.0, 1.0)
    assert group_bootstrap(mean, 2, n_boot=2000, alpha=0.6) == (0.5, 0.5)  # 30th..70th percentile


def test_group_bootstrap_constant_statistic_and_no_resamples() -> None:
    assert group_bootstrap(lambda w: np.full(len(w), 0.7), 5) == pytest.approx((0.7, 0.7))
    lo, hi = group_bootstrap(lambda w: np.zeros(len(w)), 5, n_boot=0)
    assert np.isnan(lo) and np.isnan(hi)


def test_group_bootstrap_checks_stat_shape() -> None:
    with pytest.raises(ValueError, match="shape"):
        group_bootstrap(lambda w: np.zeros(3), 4, n_boot=10)


def test_percentile_interval_skips_nan_resamples() -> None:
    assert percentile_interval(np.array([np.nan, 1.0, 1.0, np.nan])) == (1.0, 1.0)
    assert all(np.isnan(percentile_interval(np.array([np.nan]))))


def test_row_bootstrap_resamples_whole_groups() -> None:
    # Group a holds rows {0, 1} (values 0, 0), group b row {2} (value 3). A resample is aa, ab/ba or bb:
    # row means 0, (0+0+3)/3 = 1, 3 -> with alpha 0.6 only the middle outcome is inside.
    x = np.array([0.0, 0.0, 3.0])
    seen: set[int] = set()

    def stat(rows: np.ndarray) -> float:
        seen.add(len(rows))
        return float(x[rows].mean())

    assert row_bootstrap(stat, ["a", "a", "b"], n_boot=2000, alpha=0.6) == (1.0, 1.0)
    assert seen == {2, 3, 4}  # bb = 2 rows, ab = 3, aa = 4


def test_paired_gap_known_values() -> None:
    # Group 0: A right, B wrong on both pairs (gap 1); group 1: both right (gap 0).
    a = np.array([1, 1, 1, 1.0])
    b = np.array([0, 0, 1, 1.0])
    g = np.array([0, 0, 1, 1])
    assert paired_bootstrap_gap(a, b, g, n_boot=2000) == (0.0, 1.0)
    assert paired_bootstrap_gap(a, b, g, n_boot=2000, alpha=0.6) == (0.5, 0.5)
    assert paired_bootstrap_gap(a, a, g) == (0.0, 0.0)


def test_paired_gap_averages_dimensions_first() -> None:
    # One group; dim 0 has 3 pairs with gap 1, dim 1 has 1 pair with gap 0: per-dim mean = 0.5
    # (pooling the pairs would give 0.75).
    a = np.array([1, 1, 1, 0.5])
    b = np.array([0, 0, 0, 0.5])
    lo, hi = paired_bootstrap_gap(a, b, np.zeros(4), dims=np.array([0, 0, 0, 1]), n_boot=50)
    assert lo == hi == 0.5


def test_paired_gap_checks_lengths() -> None:
    with pytest.raises(ValueError, match="correct_b"):
        paired_bootstrap_gap(np.ones(3), np.ones(2), np.zeros(3))


def test_thousand_resamples_over_200_groups_well_under_100ms() -> None:
    rng = np.random.default_rng(0)
    s, c = rng.random((200, 19)), np.full((200, 19), 3.0)

    def acc(w: np.ndarray) -> np.ndarray:
        return np.nanmean((w @ s) / (w @ c), axis=1)

    group_bootstrap(acc, 200, n_boot=50)  # warm-up
    start = time.perf_counter()
    group_bootstrap(acc, 200, n_boot=1000)
    assert time.perf_counter() - start < 0.1
