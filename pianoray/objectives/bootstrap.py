"""Percentile bootstrap confidence intervals that resample *groups* (passages, pieces, rounds).

Samples of one passage are not independent (passage identity explains ~40% of PercePiano label
variance), so every CI in pianoray resamples whole groups with replacement.

Two contracts, chosen by how the statistic is built:

- ``group_bootstrap``: the statistic is a function of per-group sums (pairwise accuracy, R2, Pearson
  r, a mean over rounds). ``stat_fn`` receives all resamples at once as a matrix of group
  multiplicities ``weights[n_boot, G]`` and returns ``[n_boot]``; a resample's sum is then one matrix
  product, so 1000 resamples over 200 groups cost about a millisecond.
- ``row_bootstrap``: a statistic that does not decompose into group sums (Spearman rho, ROC AUC).
  ``stat_fn`` receives the row indices of one resample; it is called ``n_boot`` times.

Resamples whose statistic is undefined (NaN, e.g. no valid pair drawn) are left out of the
percentiles; if every resample is NaN the interval is ``(nan, nan)``. ``n_boot=0`` gives ``(nan, nan)``.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

Interval = tuple[float, float]
NAN_INTERVAL: Interval = (float("nan"), float("nan"))


def as_numpy(x: Any) -> np.ndarray:
    """A torch tensor (any device/dtype), list or array -> numpy array (bfloat16 goes through float32)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        t = x.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        return t.numpy()
    return np.asarray(x)


def group_keys(groups: Any) -> tuple[np.ndarray, np.ndarray]:
    """groups [M] (ints, strings, any sortable key) -> (keys [G] sorted unique keys, codes [M] in 0..G-1)."""
    g = as_numpy(groups).reshape(-1)
    try:
        keys, codes = np.unique(g, return_inverse=True)
    except TypeError:  # mixed key types in an object array: compare them as strings
        keys, codes = np.unique(g.astype(str), return_inverse=True)
    return keys, codes.reshape(-1).astype(np.int64)


def group_codes(groups: Any) -> tuple[np.ndarray, int]:
    """groups [M] -> (codes [M] int in 0..G-1, G). Codes follow sorted key order (``group_keys``);
    column g of a bootstrap weight matrix is the group with code g."""
    keys, codes = group_keys(groups)
    return codes, int(len(keys))


def resample_weights(n_groups: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """[n_boot, G] float: how often each group is drawn when G groups are drawn with replacement.

    Drawing G indices uniformly with replacement and counting them is a Multinomial(G, 1/G) vector, so
    sample that directly (one call, no per-resample loop).
    """
    rng = np.random.default_rng(seed)
    if n_groups == 0 or n_boot == 0:
        return np.zeros((n_boot, n_groups))
    return rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=n_boot).astype(np.float64)


def percentile_interval(values: np.ndarray, alpha: float = 0.05) -> Interval:
    """Central (1 - alpha) percentile interval of the finite entries of ``values`` [n_boot]."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return NAN_INTERVAL
    lo, hi = np.percentile(v, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return float(lo), float(hi)


def group_bootstrap(
    stat_fn: Callable[[np.ndarray], np.ndarray],
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """Percentile CI of a group-decomposable statistic, resampling groups with replacement.

    Args:
        stat_fn: weights [n_boot, G] (multiplicity of each group in each resample; column order as in
            ``group_codes``) -> statistic [n_boot]. Typically ``(weights @ sums) / (weights @ counts)``
            from per-group sums computed once.
        groups: [M] group key per sample, or an int G (the number of groups).
    Returns:
        (lo, hi), the alpha/2 and 1-alpha/2 percentiles over resamples with a finite statistic.
    """
    n_groups = groups if isinstance(groups, (int, np.integer)) else group_codes(groups)[1]
    if n_boot <= 0 or n_groups == 0:
        return NAN_INTERVAL
    weights = resample_weights(int(n_groups), n_boot, seed)
    stats = np.asarray(stat_fn(weights), dtype=np.float64).reshape(-1)
    if stats.shape != (n_boot,):
        raise ValueError(f"group_bootstrap: stat_fn returned shape {stats.shape}, expected ({n_boot},)")
    return percentile_interval(stats, alpha)


def row_bootstrap(
    stat_fn: Callable[[np.ndarray], float],
    groups: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """Percentile CI of any statistic, resampling groups with replacement (one call per resample).

    Args:
        stat_fn: row indices [m] of one resample (every row of each drawn group, repeated as often as
            the group is drawn) -> float.
        groups: [M] group key per row; ``None`` makes every row its own group.
    """
    if n_boot <= 0:
        return NAN_INTERVAL
    if isinstance(groups, (int, np.integer)):
        codes, n_groups = np.arange(int(groups)), int(groups)
    else:
        codes, n_groups = group_codes(groups)
    if n_groups == 0:
        return NAN_INTERVAL
    order = np.argsort(codes, kind="stable")
    starts = np.searchsorted(codes[order], np.arange(n_groups + 1))
    members = [order[starts[g] : starts[g + 1]] for g in range(n_groups)]
    singleton = bool(np.all(np.diff(starts) == 1))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    stats = np.empty(n_boot)
    for b in range(n_boot):
        rows = order[draws[b]] if singleton else np.concatenate([members[g] for g in draws[b]])
        stats[b] = stat_fn(rows)
    return percentile_interval(stats, alpha)


def paired_bootstrap_gap(
    correct_a: Any,
    correct_b: Any,
    groups: Any,
    *,
    dims: Any = None,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> Interval:
    """CI of acc(A) - acc(B) for two models scored on the SAME pairs, resampling groups.

    Args:
        correct_a, correct_b: [P] per-pair correctness in {0, 0.5, 1} (0.5 = tied prediction), pair p
            being the same pair (and dimension) for both models.
        groups: [P] the group (passage) of each pair.
        dims: optional [P] dimension index of each pair; then accuracy is the mean over dimensions of
            the per-dimension accuracy (the pairwise-accuracy definition), else the mean over pairs.
    Returns:
        (lo, hi) of the accuracy difference A - B. Pairing matters: the same resampled pairs score both
        models, so the passage-to-passage variation they share cancels out of the gap.
    """
    a = as_numpy(correct_a).astype(np.float64).reshape(-1)
    b = as_numpy(correct_b).astype(np.float64).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"paired_bootstrap_gap: correct_a has {a.size} pairs, correct_b has {b.size}")
    codes, n_groups = group_codes(groups)
    if codes.size != a.size:
        raise ValueError(f"paired_bootstrap_gap: groups has {codes.size} entries for {a.size} pairs")
    if dims is None:
        d_codes, n_dims = np.zeros_like(codes), 1
    else:
        d_codes, n_dims = group_codes(dims)
    cell = codes * n_dims + d_codes
    size = n_groups * n_dims
    diff = np.bincount(cell, weights=a - b, minlength=size).reshape(n_groups, n_dims)
    count = np.bincount(cell, minlength=size).reshape(n_groups, n_dims).astype(np.float64)

    def gap(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            per_dim = (weights @ diff) / (weights @ count)  # [n_boot, n_dims]
        return _nanmean_rows(per_dim)

    return group_bootstrap(gap, n_groups, n_boot=n_boot, seed=seed, alpha=alpha)


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """[R, K] -> [R] mean of the finite entries of each row (NaN where a row has none), without warnings."""
    finite = np.isfinite(x)
    n = finite.sum(axis=1)
    total = np.where(finite, x, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / np.maximum(n, 1), np.nan)
