"""The metrics suite: one definition of every figure the protocol reports (numpy; torch inputs accepted).

Every metric returns a ``MetricResult``: the mean, per-dimension values where the metric has
dimensions, a 95% percentile-bootstrap CI that resamples groups (passages, pieces or rounds; see
``bootstrap.py``), and the number of units the mean is over.

Pairwise accuracy (the selection metric everywhere): per dimension, over all pairs of performances
of the same passage whose label gap is >= ``threshold`` (0.05 on the [0, 1] scale, the same
threshold the ranking loss uses); a pair is correct when the prediction orders it like the labels,
a tied prediction counts 0.5, so a constant model scores exactly 0.5. The mean is over dimensions
that have at least one pair. ``threshold=0`` keeps every pair with unequal labels.
Integer group keys < 0 mean "no group" (the Batch convention for ``rank_group``): such samples join
no pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import r2_score

from pianoray.objectives.bootstrap import (
    NAN_INTERVAL,
    Interval,
    _nanmean_rows,
    as_numpy,
    group_bootstrap,
    group_codes,
    group_keys,
    percentile_interval,
    resample_weights,
    row_bootstrap,
)

# Label gaps within this of the threshold count as reaching it: labels like 0.55 vs 0.50 differ by
# 0.04999999 in floating point and a rater-scale threshold must not hinge on rounding.
GAP_TOLERANCE = 1e-6


def _float(x: float) -> float | None:
    """JSON-safe float: NaN/inf -> None."""
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(frozen=True)
class MetricResult:
    """mean: the headline value; per_dim: [N] values (None for scalar metrics); ci: (lo, hi) 95%
    bootstrap interval ((nan, nan) when not computed); n: units the mean is over (pairs, samples,
    pieces or rounds); n_groups: groups the CI resampled; extra: metric-specific details."""

    mean: float
    per_dim: np.ndarray | None
    ci: Interval
    n: int
    n_groups: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable: NaN becomes None, arrays become lists."""
        return {
            "mean": _float(self.mean),
            "per_dim": None if self.per_dim is None else [_float(v) for v in np.asarray(self.per_dim)],
            "ci": [_float(self.ci[0]), _float(self.ci[1])],
            "n": int(self.n),
            "n_groups": None if self.n_groups is None else int(self.n_groups),
            "extra": _json_safe(self.extra),
        }


def _json_safe(x: Any) -> Any:
    if isinstance(x, MetricResult):
        return x.to_dict()
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple, np.ndarray)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (float, np.floating)):
        return _float(x)
    if isinstance(x, np.integer):
        return int(x)
    return x


# ----------------------------------------------------------------------------------------- helpers


def _matrix(x: Any, name: str) -> np.ndarray:
    """[M] or [M, N] -> float64 [M, N]."""
    a = as_numpy(x).astype(np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ValueError(f"{name}: expected shape [M] or [M, N], got {a.shape}")
    return a


def _check_rows(name: str, m: int, *arrays: tuple[str, np.ndarray]) -> None:
    for other, a in arrays:
        if a.shape[0] != m:
            raise ValueError(f"{name}: {other} has {a.shape[0]} rows, expected {m}")


def _grouped_rows(group: Any, m: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    """group [M] -> (rows [M'] that belong to a group, codes [M'] in 0..G-1). Negative ints = no group."""
    g = as_numpy(group).reshape(-1)
    if g.shape[0] != m:
        raise ValueError(f"{name}: group has {g.shape[0]} entries, expected {m}")
    rows = np.arange(m)
    if np.issubdtype(g.dtype, np.integer):
        rows = rows[g >= 0]
        g = g[g >= 0]
    codes, _ = group_codes(g)
    return rows, codes


@dataclass(frozen=True)
class Pairs:
    """All within-group pairs (i < j) of M samples: i, j [P] row indices; group [P] in 0..n_groups-1,
    numbering (in sorted key order) only the groups that have at least one pair."""

    i: np.ndarray
    j: np.ndarray
    group: np.ndarray
    n_groups: int


def within_group_pairs(group: Any) -> Pairs:
    """Every unordered pair of samples sharing a group, vectorised by group size.

    Groups are small (a passage has a handful of performances) but numerous, so rather than loop
    over groups we loop over the few distinct group *sizes*: for size k, ``triu_indices(k, 1)`` gives
    the pair offsets, added to the start row of every group of that size.
    """
    g = as_numpy(group).reshape(-1)
    rows, codes = _grouped_rows(g, g.shape[0], "within_group_pairs")
    n_all = int(codes.max()) + 1 if codes.size else 0
    order = rows[np.argsort(codes, kind="stable")]
    sorted_codes = np.sort(codes, kind="stable")
    starts = np.searchsorted(sorted_codes, np.arange(n_all))
    sizes = np.bincount(codes, minlength=n_all)
    # Renumber so that only groups with >= 1 pair exist: a passage with one performance says nothing
    # about ranking and must not dilute the bootstrap.
    compact = np.cumsum(sizes >= 2) - 1
    n_groups = int((sizes >= 2).sum())
    ii, jj, gg = [], [], []
    for k in np.unique(sizes):
        if k < 2:
            continue
        which = np.flatnonzero(sizes == k)
        a, b = np.triu_indices(int(k), 1)
        base = starts[which][:, None]
        ii.append(order[(base + a).ravel()])
        jj.append(order[(base + b).ravel()])
        gg.append(np.repeat(compact[which], a.size))
    if not ii:
        empty = np.zeros(0, dtype=np.int64)
        return Pairs(empty, empty, empty, n_groups)
    return Pairs(np.concatenate(ii), np.concatenate(jj), np.concatenate(gg), n_groups)


@dataclass(frozen=True)
class PairOutcomes:
    """Per (pair, dimension) outcomes. correct [P, N] in {0, 0.5, 1}; valid [P, N] bool (label gap
    reaches the threshold); pairs: the pairs the rows refer to."""

    correct: np.ndarray
    valid: np.ndarray
    pairs: Pairs

    def group_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """(correct sums [G, N], valid counts [G, N]) per group, for the bootstrap."""
        n_dims = self.correct.shape[1]
        size = self.pairs.n_groups * n_dims
        cell = (self.pairs.group[:, None] * n_dims + np.arange(n_dims)[None, :]).ravel()
        s = np.bincount(cell, weights=(self.correct * self.valid).ravel(), minlength=size)
        c = np.bincount(cell, weights=self.valid.ravel().astype(np.float64), minlength=size)
        return s.reshape(-1, n_dims), c.reshape(-1, n_dims)

    def flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(correct [V], group [V], dim [V]) over the valid entries: the input of
        ``bootstrap.paired_bootstrap_gap`` (two models' outcomes on the same labels align entry by entry)."""
        p, d = np.nonzero(self.valid)
        return self.correct[p, d], self.pairs.group[p], d


def pair_outcomes(pred: Any, target: Any, group: Any, *, threshold: float = 0.05) -> PairOutcomes:
    """Score every within-group pair. pred, target [M, N] (or [M]); group [M]."""
    p, t = _matrix(pred, "pred"), _matrix(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"pairwise accuracy: pred has shape {p.shape}, target {t.shape}")
    pairs = within_group_pairs(_group_for(group, p.shape[0], "pairwise accuracy"))
    dt = t[pairs.i] - t[pairs.j]  # [P, N]
    dp = p[pairs.i] - p[pairs.j]
    valid = (np.abs(dt) >= threshold - GAP_TOLERANCE) & (dt != 0)
    correct = np.where(dp == 0, 0.5, (np.sign(dp) == np.sign(dt)).astype(np.float64))
    return PairOutcomes(correct, valid, pairs)


def _group_for(group: Any, m: int, name: str) -> np.ndarray:
    g = as_numpy(group).reshape(-1)
    if g.shape[0] != m:
        raise ValueError(f"{name}: group has {g.shape[0]} entries, expected {m}")
    return g


def _accuracy_from_sums(s: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Per-dim accuracy from summed correct [..., N] and counts [..., N]; NaN where no pair."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(c > 0, s / np.where(c > 0, c, 1.0), np.nan)


def _nanmean(x: np.ndarray) -> float:
    return float(_nanmean_rows(np.asarray(x, dtype=np.float64).reshape(1, -1))[0])


# ----------------------------------------------------------------------------------------- metrics


def pairwise_accuracy(
    pred: Any,
    target: Any,
    group: Any,
    *,
    threshold: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """Within-group pairwise ranking accuracy (definition in the module docstring).

    Args:
        pred: [M, N] predicted scores (or [M]). target: [M, N] labels in [0, 1]. group: [M] passage key.
    Returns:
        mean over dimensions with >= 1 pair; per_dim [N] (NaN: no pair); ci by resampling groups;
        n = valid (pair, dimension) entries; extra["n_pairs"] = within-group pairs considered.
    """
    out = pair_outcomes(pred, target, group, threshold=threshold)
    s, c = out.group_sums()
    per_dim = _accuracy_from_sums(s.sum(0), c.sum(0))

    def stat(weights: np.ndarray) -> np.ndarray:
        return _nanmean_rows(_accuracy_from_sums(weights @ s, weights @ c))

    ci = group_bootstrap(stat, out.pairs.n_groups, n_boot=n_boot, seed=seed, alpha=alpha)
    return MetricResult(
        mean=_nanmean(per_dim),
        per_dim=per_dim,
        ci=ci,
        n=int(c.sum()),
        n_groups=out.pairs.n_groups,
        extra={"n_pairs": int(out.pairs.i.size), "threshold": float(threshold)},
    )


@dataclass(frozen=True)
class PairCounts:
    """Sufficient statistics of pairwise accuracy on one evaluated set: per passage and dimension, the
    correct pairs (a tied prediction counts 0.5) and the pairs whose label gap reaches the threshold.

    groups [G] passage keys (sorted); correct [G, N] float; total [G, N] float (whole counts). They are all
    a bootstrap over passages needs, so a rung decision or a winner's margin can be re-judged from them
    without the predictions. Two models scored on the same labels have equal ``groups`` and ``total``.
    """

    groups: tuple[str, ...]
    correct: np.ndarray
    total: np.ndarray

    def accuracy(self) -> float:
        """Pairwise accuracy (the module's definition: the mean over dimensions with a pair)."""
        return _nanmean(_accuracy_from_sums(self.correct.sum(0), self.total.sum(0)))

    def to_json(self) -> dict[str, Any]:
        return {"groups": list(self.groups), "correct": self.correct.tolist(), "total": self.total.tolist()}

    @classmethod
    def from_json(cls, data: Any) -> "PairCounts":
        correct = np.asarray(data["correct"], dtype=np.float64)
        total = np.asarray(data["total"], dtype=np.float64)
        groups = tuple(map(str, data["groups"]))
        if correct.shape != total.shape or correct.ndim != 2 or correct.shape[0] != len(groups):
            raise ValueError(f"PairCounts: {len(groups)} groups, correct {correct.shape}, total {total.shape}")
        return cls(groups, correct, total)


def pair_counts(pred: Any, target: Any, group: Any, *, threshold: float = 0.05) -> PairCounts:
    """Per-passage, per-dimension pair counts. pred, target [M, N] (or [M]); group [M] passage keys."""
    out = pair_outcomes(pred, target, group, threshold=threshold)
    s, c = out.group_sums()
    # group_sums' rows are the groups with a pair (two or more members), in sorted key order.
    g = _group_for(group, _matrix(pred, "pred").shape[0], "pair counts")
    rows, codes = _grouped_rows(g, g.shape[0], "pair counts")
    keys = group_keys(g[rows])[0]
    keys = keys[np.bincount(codes, minlength=len(keys)) >= 2]
    return PairCounts(tuple(str(k) for k in keys), s, c)


def paired_accuracy_gap(
    pairs: list[tuple[PairCounts, PairCounts]], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, Interval]:
    """Gap acc(A) - acc(B) between two models scored on the same sets, with a paired bootstrap CI.

    pairs: one (A, B) per evaluated set (a rung's validation split: one; the Round-2 folds: one per fold),
    with equal groups and totals within each pair. The gap is the mean over sets of the per-set gap, each
    on the per-dimension mean that defines pairwise accuracy (so the point gap is exactly the difference of
    the reported accuracies). The bootstrap resamples passages within each set (stratified by set) and
    scores both models on the same resample, so the passage-to-passage variation they share cancels.
    Returns (gap, (lo, hi)); fractions, not points.
    """
    if not pairs:
        raise ValueError("paired_accuracy_gap: no evaluated sets")
    point, boots = [], []
    for k, (a, b) in enumerate(pairs):
        if a.groups != b.groups or not np.array_equal(a.total, b.total):
            raise ValueError(f"paired_accuracy_gap: set {k}: the two models were not scored on the same pairs")
        point.append(a.accuracy() - b.accuracy())
        if n_boot > 0:
            w = resample_weights(len(a.groups), n_boot, seed + k)
            with np.errstate(invalid="ignore", divide="ignore"):
                boots.append(_nanmean_rows((w @ (a.correct - b.correct)) / (w @ a.total)))
    gap = float(np.mean(point))
    if n_boot <= 0:
        return gap, NAN_INTERVAL
    return gap, percentile_interval(np.mean(np.stack(boots), axis=0), alpha)


def r2(
    pred: Any,
    target: Any,
    group: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """Coefficient of determination: sklearn ``r2_score`` per dimension, uniform mean over dimensions.

    Args:
        pred, target: [M, N] (or [M]). group: [M] keys for the bootstrap (None: every sample its own group).
    The bootstrap recomputes R2 = 1 - SS_res / SS_tot from per-group sums of y, y^2, (y - p)^2 and
    counts (SS_tot = sum y^2 - (sum y)^2 / n), so it stays vectorised; resamples where a dimension's
    target is constant give NaN there and are skipped in that resample's mean.
    """
    p, t = _matrix(pred, "pred"), _matrix(target, "target")
    if p.shape != t.shape:
        raise ValueError(f"r2: pred has shape {p.shape}, target {t.shape}")
    m = p.shape[0]
    if m < 2:
        nan_dims = np.full(p.shape[1], np.nan)
        return MetricResult(float("nan"), nan_dims, NAN_INTERVAL, m)
    per_dim = np.asarray(r2_score(t, p, multioutput="raw_values"), dtype=np.float64)
    codes, n_groups = group_codes(np.arange(m) if group is None else _group_for(group, m, "r2"))
    count = np.bincount(codes, minlength=n_groups).astype(np.float64)[:, None]  # [G, 1]
    sy, syy, sres = (_group_sums(codes, n_groups, v) for v in (t, t * t, (t - p) ** 2))

    def stat(weights: np.ndarray) -> np.ndarray:
        n = weights @ count
        tot = weights @ syy - (weights @ sy) ** 2 / np.maximum(n, 1.0)
        with np.errstate(invalid="ignore", divide="ignore"):
            score = np.where(tot > 1e-12, 1.0 - (weights @ sres) / tot, np.nan)
        return _nanmean_rows(score)

    ci = group_bootstrap(stat, n_groups, n_boot=n_boot, seed=seed, alpha=alpha)
    return MetricResult(float(per_dim.mean()), per_dim, ci, m, n_groups)


def _group_sums(codes: np.ndarray, n_groups: int, v: np.ndarray) -> np.ndarray:
    """Per-group column sums of ``v`` [M, N] -> [G, N]."""
    out = np.zeros((n_groups, v.shape[1]))
    np.add.at(out, codes, v)
    return out


def paired_r2_gap(
    sets: list[tuple[Any, Any, Any, Any]], *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, Interval]:
    """Gap R2(A) - R2(B) between two models' predictions of the same targets, with a paired bootstrap CI.

    sets: one (target [M, N], pred_a [M, N], pred_b [M, N], group [M]) per evaluated set (a fold's test part).
    The gap is the mean over sets of R2(A) - R2(B), each :func:`r2` (per dimension, uniform mean), so the point
    gap is the difference of the reported figures. The bootstrap resamples groups (passages) within each set
    and scores both models on the same resample, from per-group sums as :func:`r2` does (the SS_tot they share
    is computed once). Returns (gap, (lo, hi)).
    """
    if not sets:
        raise ValueError("paired_r2_gap: no evaluated sets")
    point, boots = [], []
    for k, (target, pred_a, pred_b, group) in enumerate(sets):
        t, pa, pb = _matrix(target, "target"), _matrix(pred_a, "pred_a"), _matrix(pred_b, "pred_b")
        if not (t.shape == pa.shape == pb.shape):
            raise ValueError(f"paired_r2_gap: set {k}: shapes {t.shape}, {pa.shape}, {pb.shape} differ")
        point.append(float(np.mean(r2_score(t, pa, multioutput="raw_values"))
                           - np.mean(r2_score(t, pb, multioutput="raw_values"))))
        if n_boot > 0:
            codes, g = group_codes(_group_for(group, t.shape[0], "paired_r2_gap"))
            w = resample_weights(g, n_boot, seed + k)
            n = w @ np.bincount(codes, minlength=g).astype(np.float64)[:, None]
            tot = w @ _group_sums(codes, g, t * t) - (w @ _group_sums(codes, g, t)) ** 2 / np.maximum(n, 1.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                ra = np.where(tot > 1e-12, 1.0 - (w @ _group_sums(codes, g, (t - pa) ** 2)) / tot, np.nan)
                rb = np.where(tot > 1e-12, 1.0 - (w @ _group_sums(codes, g, (t - pb) ** 2)) / tot, np.nan)
            boots.append(_nanmean_rows(ra) - _nanmean_rows(rb))
    gap = float(np.mean(point))
    if n_boot <= 0:
        return gap, NAN_INTERVAL
    return gap, percentile_interval(np.mean(np.stack(boots), axis=0), alpha)


def error_correlation(
    err_a: Any, err_b: Any, group: Any = None, *, n_boot: int = 1000, seed: int = 0, alpha: float = 0.05
) -> MetricResult:
    """Pearson r between two models' errors (prediction - target) on the same segments, per dimension, and
    their mean over dimensions, with a bootstrap CI over ``group`` (passages).

    err_a, err_b: [M, N]; group: [M] (None: every row its own group). Why: a fusion gains little when its
    inputs err alike (the seed's concat fusion lost to audio alone with r = 0.74). NaN for a dimension where
    either error is constant.
    """
    a, b = _matrix(err_a, "err_a"), _matrix(err_b, "err_b")
    if a.shape != b.shape:
        raise ValueError(f"error_correlation: err_a has shape {a.shape}, err_b {b.shape}")
    m = a.shape[0]
    codes, g = group_codes(np.arange(m) if group is None else _group_for(group, m, "error_correlation"))
    count = np.bincount(codes, minlength=g).astype(np.float64)[:, None]
    sums = [_group_sums(codes, g, v) for v in (a, b, a * a, b * b, a * b)]

    def stat(weights: np.ndarray) -> np.ndarray:
        return _nanmean_rows(_pearson_from_sums(weights @ count, *(weights @ s for s in sums)))

    per_dim = _pearson_from_sums(count.sum(), *(s.sum(axis=0) for s in sums))
    ci = group_bootstrap(stat, g, n_boot=n_boot, seed=seed, alpha=alpha) if m >= 2 else NAN_INTERVAL
    return MetricResult(_nanmean(per_dim), per_dim, ci, m, g)


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rho (average ranks for ties); NaN when either side is constant or fewer than 2 points."""
    if x.size < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    den = math.sqrt(float((rx * rx).sum() * (ry * ry).sum()))
    return float((rx * ry).sum() / den) if den > 0 else float("nan")


def spearman_difficulty(
    pred: Any,
    grade: Any,
    group: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """Spearman rho between a predicted difficulty [P] and the pieces' grades [P].

    group: [P] keys for the bootstrap (None: every piece its own group, i.e. resample pieces).
    """
    x = as_numpy(pred).astype(np.float64).reshape(-1)
    y = as_numpy(grade).astype(np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman_difficulty: pred has {x.size} entries, grade {y.size}")
    groups = np.arange(x.size) if group is None else _group_for(group, x.size, "spearman_difficulty")
    rho = _spearman(x, y)
    ci = (
        row_bootstrap(lambda rows: _spearman(x[rows], y[rows]), groups, n_boot=n_boot, seed=seed, alpha=alpha)
        if x.size >= 2
        else NAN_INTERVAL
    )
    return MetricResult(rho, None, ci, int(x.size), group_codes(groups)[1])


@dataclass(frozen=True)
class RobustnessResult:
    """drop: relative drop in pairwise accuracy (clean - aug) / clean, per dim and mean (the
    selection veto is drop > 0.15); pearson: Pearson r between clean and augmented predictions
    (mean = over all M*N entries flattened, per_dim = per dimension); clean / augmented: the two
    pairwise accuracies on the same pairs."""

    drop: MetricResult
    pearson: MetricResult
    clean: MetricResult
    augmented: MetricResult

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k).to_dict() for k in ("drop", "pearson", "clean", "augmented")}


def _pearson_from_sums(n, sx, sy, sxx, syy, sxy):  # type: ignore[no-untyped-def]
    """Pearson r from (weighted) sums, elementwise; NaN where a side has no variance."""
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sy / n
        vx = sxx - sx * sx / n
        vy = syy - sy * sy / n
        return np.where((vx > 1e-12) & (vy > 1e-12), cov / np.sqrt(np.maximum(vx * vy, 1e-300)), np.nan)


def robustness(
    pred_clean: Any,
    pred_aug: Any,
    target: Any,
    group: Any,
    *,
    threshold: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> RobustnessResult:
    """How much augmentation hurts: pairwise accuracy of clean vs augmented predictions of the same
    segments, and how well the two predictions agree.

    Args:
        pred_clean, pred_aug: [M, N] predictions for each segment and its augmented twin (same row).
        target: [M, N] labels. group: [M] passage keys.
    The drop is the relative drop of the mean accuracies, (clean - aug) / clean; per_dim uses each
    dimension's accuracies. CIs resample groups; each resample recomputes both accuracies and the
    Pearson sums from per-group sums.
    """
    pc, pa, t = _matrix(pred_clean, "pred_clean"), _matrix(pred_aug, "pred_aug"), _matrix(target, "target")
    if not (pc.shape == pa.shape == t.shape):
        raise ValueError(f"robustness: shapes differ: clean {pc.shape}, aug {pa.shape}, target {t.shape}")
    oc = pair_outcomes(pc, t, group, threshold=threshold)
    oa = pair_outcomes(pa, t, group, threshold=threshold)
    sc, cnt = oc.group_sums()
    sa, _ = oa.group_sums()
    n_groups = pairs_groups = oc.pairs.n_groups

    acc_c = _accuracy_from_sums(sc.sum(0), cnt.sum(0))
    acc_a = _accuracy_from_sums(sa.sum(0), cnt.sum(0))
    mean_c, mean_a = _nanmean(acc_c), _nanmean(acc_a)
    with np.errstate(invalid="ignore", divide="ignore"):
        drop_dim = (acc_c - acc_a) / acc_c
    drop = (mean_c - mean_a) / mean_c if mean_c > 0 else float("nan")

    def drop_stat(weights: np.ndarray) -> np.ndarray:
        c_ = _nanmean_rows(_accuracy_from_sums(weights @ sc, weights @ cnt))
        a_ = _nanmean_rows(_accuracy_from_sums(weights @ sa, weights @ cnt))
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(c_ > 0, (c_ - a_) / c_, np.nan)

    drop_ci = group_bootstrap(drop_stat, pairs_groups, n_boot=n_boot, seed=seed, alpha=alpha)

    # Pearson: per-group sums over the samples that have a group (all rows when keys are not ints).
    rows, codes = _grouped_rows(group, pc.shape[0], "robustness")
    n_sample_groups = int(codes.max()) + 1 if codes.size else 0
    x, y = pc[rows], pa[rows]

    def gsum(v: np.ndarray) -> np.ndarray:
        out = np.zeros((n_sample_groups, v.shape[1]))
        np.add.at(out, codes, v)
        return out

    cnt_s = np.bincount(codes, minlength=n_sample_groups).astype(np.float64)[:, None]
    sums = [gsum(v) for v in (x, y, x * x, y * y, x * y)]  # each [G, N]
    n_dims = pc.shape[1]

    def pearson_dims(w: np.ndarray) -> np.ndarray:
        n = w @ cnt_s
        sx, sy, sxx, syy, sxy = (w @ s for s in sums)
        return _pearson_from_sums(n, sx, sy, sxx, syy, sxy)

    def pearson_flat(w: np.ndarray) -> np.ndarray:
        n = (w @ cnt_s)[:, 0] * n_dims
        sx, sy, sxx, syy, sxy = ((w @ s).sum(axis=1) for s in sums)
        return _pearson_from_sums(n, sx, sy, sxx, syy, sxy)

    ones = np.ones((1, n_sample_groups))
    r_dims = pearson_dims(ones)[0]
    r_flat = float(pearson_flat(ones)[0]) if rows.size >= 2 else float("nan")
    r_ci = group_bootstrap(pearson_flat, n_sample_groups, n_boot=n_boot, seed=seed, alpha=alpha)

    def acc_result(acc: np.ndarray, s: np.ndarray) -> MetricResult:
        def stat(w: np.ndarray) -> np.ndarray:
            return _nanmean_rows(_accuracy_from_sums(w @ s, w @ cnt))

        ci = group_bootstrap(stat, pairs_groups, n_boot=n_boot, seed=seed, alpha=alpha)
        return MetricResult(_nanmean(acc), acc, ci, int(cnt.sum()), n_groups)

    return RobustnessResult(
        drop=MetricResult(float(drop), drop_dim, drop_ci, int(cnt.sum()), n_groups),
        pearson=MetricResult(r_flat, r_dims, r_ci, int(rows.size), n_sample_groups),
        clean=acc_result(acc_c, sc),
        augmented=acc_result(acc_a, sa),
    )


def competition_spearman(
    score: Any,
    placement: Any,
    round_id: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """Per competition round, Spearman rho between the predicted score and -placement.

    Args:
        score: [M] predicted quality. placement: [M] final placement (1 = best). round_id: [M] round key.
    Returns:
        mean rho over rounds with a defined rho (>= 2 entries, neither side constant); a model that
        ranks the winner highest scores +1. extra["per_round"] = {round key: rho (None if undefined)}.
        The CI resamples rounds.
    """
    s = as_numpy(score).astype(np.float64).reshape(-1)
    pl = as_numpy(placement).astype(np.float64).reshape(-1)
    rid = as_numpy(round_id).reshape(-1)
    if not (s.size == pl.size == rid.size):
        raise ValueError(f"competition_spearman: score {s.size}, placement {pl.size}, round_id {rid.size} entries")
    keys, codes = group_keys(rid)
    n_rounds = len(keys)
    rho = np.array([_spearman(s[codes == r], -pl[codes == r]) for r in range(n_rounds)])
    ok = np.isfinite(rho)
    rho_ok = rho[ok]

    def stat(weights: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights @ rho_ok) / weights.sum(axis=1)

    ci = group_bootstrap(stat, int(ok.sum()), n_boot=n_boot, seed=seed, alpha=alpha)
    mean = float(rho_ok.mean()) if rho_ok.size else float("nan")
    per_round = {str(k): _float(v) for k, v in zip(keys, rho)}
    return MetricResult(mean, None, ci, int(ok.sum()), int(ok.sum()), {"per_round": per_round})


def planted_outcomes(expressive: Any, wrong: Any) -> np.ndarray:
    """Planted score-conditioned pairs: [P] overall scores of each pair's expressive take and of its wrong-notes
    take -> [P] outcomes, 1 where the expressive take scores higher, 1/2 on a tie, 0 otherwise."""
    e = as_numpy(expressive).astype(np.float64).reshape(-1)
    w = as_numpy(wrong).astype(np.float64).reshape(-1)
    if e.size != w.size:
        raise ValueError(f"planted_outcomes: expressive has {e.size} entries, wrong {w.size}")
    return (e > w) + 0.5 * (e == w)


def planted_accuracy(
    correct: Any,
    pairs: Any,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """Accuracy of telling planted pairs apart (chance = 0.5), from per-passage sums.

    Args:
        correct: [G] per passage, the sum of its pairs' :func:`planted_outcomes`. pairs: [G] its number of pairs.
    Returns:
        mean = sum(correct) / sum(pairs); the CI resamples passages; n pairs, n_groups passages.
    """
    c = as_numpy(correct).astype(np.float64).reshape(-1)
    n = as_numpy(pairs).astype(np.float64).reshape(-1)
    if c.size != n.size:
        raise ValueError(f"planted_accuracy: correct has {c.size} entries, pairs {n.size}")
    if (n < 1).any() or (c < 0).any() or (c > n).any():
        raise ValueError("planted_accuracy: each passage needs >= 1 pair and 0 <= correct <= pairs")

    def stat(weights: np.ndarray) -> np.ndarray:
        return (weights @ c) / (weights @ n)

    mean = float(c.sum() / n.sum()) if n.size else float("nan")
    ci = group_bootstrap(stat, int(n.size), n_boot=n_boot, seed=seed, alpha=alpha) if n.size else NAN_INTERVAL
    return MetricResult(mean, None, ci, int(n.sum()), int(n.size))


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC via the rank-sum (Mann-Whitney) identity, ties counted 1/2 (equals sklearn's
    ``roc_auc_score``); NaN when one class is absent."""
    n1 = int(positive.sum())
    n0 = positive.size - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def stop_auc(
    score: Any,
    stopped: Any,
    group: Any = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> MetricResult:
    """ROC AUC of ``score`` [M] for the binary ``stopped`` [M] (1 = the teacher stopped the student);
    NaN if only one class is present. group: [M] bootstrap keys (None: resample samples)."""
    s = as_numpy(score).astype(np.float64).reshape(-1)
    y = as_numpy(stopped).reshape(-1).astype(np.float64)
    if s.size != y.size:
        raise ValueError(f"stop_auc: score has {s.size} entries, stopped {y.size}")
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("stop_auc: stopped must be binary (0/1)")
    pos = y == 1
    auc = _auc(s, pos)
    groups = np.arange(s.size) if group is None else _group_for(group, s.size, "stop_auc")
    ci = (
        row_bootstrap(lambda rows: _auc(s[rows], pos[rows]), groups, n_boot=n_boot, seed=seed, alpha=alpha)
        if math.isfinite(auc)
        else NAN_INTERVAL
    )
    return MetricResult(auc, None, ci, int(s.size), group_codes(groups)[1], {"n_positive": int(pos.sum())})


def evaluate(
    pred_regression: Any,
    pred_scores: Any,
    target: Any,
    group: Any,
    *,
    threshold: float = 0.05,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, MetricResult]:
    """The validation bundle for labelled segments. pred_regression, pred_scores, target [M, N]; group [M].

    Keys: "pairwise_accuracy" (ranking heads; the selection metric), "pairwise_accuracy_regression"
    (regression outputs ranked), "pairwise_accuracy_t0" (ranking heads, threshold 0), "r2"
    (regression outputs). ``evaluation_to_dict`` makes it JSON-serialisable.
    """
    boot = {"n_boot": n_boot, "seed": seed}
    return {
        "pairwise_accuracy": pairwise_accuracy(pred_scores, target, group, threshold=threshold, **boot),
        "pairwise_accuracy_regression": pairwise_accuracy(pred_regression, target, group, threshold=threshold, **boot),
        "pairwise_accuracy_t0": pairwise_accuracy(pred_scores, target, group, threshold=0.0, **boot),
        "r2": r2(pred_regression, target, group, **boot),
    }


def evaluation_to_dict(results: dict[str, Any]) -> dict[str, Any]:
    """{name: MetricResult | RobustnessResult} -> nested JSON-safe dict."""
    return {k: v.to_dict() if hasattr(v, "to_dict") else _json_safe(v) for k, v in results.items()}
