"""Run a model over a split and score it with the metrics suite.

Validation (every epoch, for model selection) uses pairwise accuracy and R2 on the fold's inner
validation split. The full suite (test part, once, from the best checkpoint) adds robustness on
augmented twins, competition Spearman, and linear-probe difficulty rho and STOP AUC on z.

Labels describe whole segments, so evaluation loaders cover each segment with windows (one sample per window,
``pianoray.data.loaders.WindowBatchSampler``) and ``predict`` merges them into one prediction per segment with
``segment_mean``: the one aggregation rule for every encoder and reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from pianoray.data.batch import Batch
from pianoray.models.contract import PerformanceModel
from pianoray.objectives import metrics


@dataclass
class Predictions:
    """M evaluated segments: ids [M], scores/regression/labels [M,N], group keys [M], z [M,512]; difficulty [M],
    the difficulty head's scaled grade, or None for a model without one."""

    segment_ids: list[str]
    scores: np.ndarray
    regression: np.ndarray
    labels: np.ndarray
    has_labels: np.ndarray
    groups: np.ndarray
    z: np.ndarray
    difficulty: np.ndarray | None = None

    def subset(self, ids: Iterable[str]) -> "Predictions":
        index = {s: i for i, s in enumerate(self.segment_ids)}
        rows = np.array([index[s] for s in ids if s in index], dtype=int)
        return Predictions(
            [self.segment_ids[i] for i in rows],
            self.scores[rows],
            self.regression[rows],
            self.labels[rows],
            self.has_labels[rows],
            self.groups[rows],
            self.z[rows],
            None if self.difficulty is None else self.difficulty[rows],
        )


def segment_index(keys: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """keys [W] (a segment id per window) -> (the distinct ids [S] in first-seen order, codes [W] into them)."""
    table: dict[str, int] = {}
    codes = np.array([table.setdefault(k, len(table)) for k in keys], dtype=np.int64)
    return list(table), codes


def segment_mean(keys: Sequence[str], weights: np.ndarray, values: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Window predictions -> segment predictions: the mean of each segment's windows weighted by window length.

    The one rule for every encoder and reference (scores, regression and z alike). Weighting by length makes
    every item of the segment (token, note, frame) count once, so a short last window moves the segment's
    prediction in proportion to what it holds; a segment in one window keeps its prediction unchanged.

    Args:
        keys: [W] the segment id of each window.
        weights: [W] window lengths (number of items), > 0.
        values: [W, ...] per-window values, e.g. scores [W, N] or z [W, D].
    Returns:
        ids [S], the distinct keys in first-seen order, and [S, ...] (dtype of ``values``) where row s is
        sum_w weights[w] * values[w] / sum_w weights[w] over the windows w of ids[s].
    """
    ids, codes = segment_index(keys)
    w = np.asarray(weights, dtype=np.float64)
    if len(w) != len(codes) or len(values) != len(codes):
        raise ValueError(f"segment_mean: {len(codes)} keys, {len(w)} weights, {len(values)} values")
    if (w <= 0).any():
        raise ValueError("segment_mean: window weights must be positive")
    v = np.asarray(values, dtype=np.float64)
    total = np.zeros((len(ids),) + v.shape[1:])
    np.add.at(total, codes, v * w.reshape((-1,) + (1,) * (v.ndim - 1)))
    mass = np.bincount(codes, weights=w, minlength=len(ids))
    return ids, (total / mass.reshape((-1,) + (1,) * (v.ndim - 1))).astype(np.asarray(values).dtype)


@torch.no_grad()
def predict(model: PerformanceModel, batches: Iterable[Batch], device: torch.device) -> Predictions:
    """One row per segment (first-seen order): window predictions merged by ``segment_mean`` with the
    weights in ``batch.meta["weight"]`` (1 per sample when absent); labels and group keys from the
    segment's first window (every window of a segment carries the same)."""
    was_training = model.training
    model.eval()
    ids, weights, scores, reg, labels, has, groups, zs, grades = [], [], [], [], [], [], [], [], []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else _null()
    for batch in batches:
        b = batch.to(device)
        with autocast:
            out = model(b)
        ids.extend(batch.segment_ids)
        weights.extend(batch.meta.get("weight") or [1.0] * batch.size)
        scores.append(out.scores.float().cpu().numpy())
        reg.append(out.regression.float().cpu().numpy())
        labels.append(batch.labels.float().numpy())
        has.append(batch.has_labels.numpy())
        groups.extend(_group_keys(batch))
        zs.append(out.z.float().cpu().numpy())
        if out.difficulty is not None:
            grades.append(out.difficulty.float().cpu().numpy())
    model.train(was_training)
    if not ids:
        raise ValueError("nothing to evaluate: the split is empty")
    segments, codes = segment_index(ids)
    first = np.unique(codes, return_index=True)[1]  # row of each segment's first window, in segment order

    def merge(parts: list[np.ndarray]) -> np.ndarray:
        return segment_mean(ids, np.asarray(weights), np.concatenate(parts))[1]

    return Predictions(
        segments,
        merge(scores),
        merge(reg),
        np.concatenate(labels)[first],
        np.concatenate(has)[first],
        np.asarray(groups, dtype=object)[first],
        merge(zs),
        merge(grades) if grades else None,
    )


def _group_keys(batch: Batch) -> list[str]:
    """Global passage keys (batch-local int codes are not comparable across batches); a sample in no
    group gets a key of its own, so it never forms a pair."""
    keys = batch.meta.get("rank_group_keys")
    if keys is None:
        raise ValueError("batch.meta['rank_group_keys'] is required for evaluation")
    return [k if k is not None and g >= 0 else f"solo:{sid}"
            for k, g, sid in zip(keys, batch.rank_group.tolist(), batch.segment_ids)]


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def validation_metrics(
    pred: Predictions, *, threshold: float, n_boot: int = 200, seed: int = 0, prefix: str = "val"
) -> dict[str, Any]:
    """Selection metrics: pairwise accuracy (ranking heads; ties 0.5; |gap| >= threshold, same passage),
    its 95% CI, R2 (regression head), each mean and per dimension. Keys are ``{prefix}/...``."""
    return validation_scores(pred, threshold=threshold, n_boot=n_boot, seed=seed, prefix=prefix)[0]


def validation_scores(
    pred: Predictions, *, threshold: float, n_boot: int = 200, seed: int = 0, prefix: str = "val"
) -> tuple[dict[str, Any], metrics.PairCounts]:
    """:func:`validation_metrics` and, beside them, the pair counts of the same labelled segments and pairs
    (per passage and dimension: correct pairs, ties 0.5, and totals). ``counts.accuracy()`` is exactly
    ``{prefix}/pairwise_accuracy``; the counts are what a rung decision's bootstrap resamples. They stay out
    of the metrics dict, which goes into Ray results and ``metrics.json`` (scalars and short lists)."""
    keep = pred.has_labels.astype(bool)
    p = pred.subset([s for s, k in zip(pred.segment_ids, keep) if k])
    counts = metrics.pair_counts(p.scores, p.labels, p.groups, threshold=threshold)
    pw = metrics.pairwise_accuracy(p.scores, p.labels, p.groups, threshold=threshold, n_boot=n_boot, seed=seed)
    pw0 = metrics.pairwise_accuracy(p.scores, p.labels, p.groups, threshold=0.0, n_boot=0, seed=seed)
    r2 = metrics.r2(p.regression, p.labels, p.groups, n_boot=n_boot, seed=seed)
    summaries = {
        f"{prefix}/pairwise_accuracy": pw.mean,
        f"{prefix}/pairwise_accuracy_ci": list(pw.ci),
        f"{prefix}/pairwise_accuracy_per_dim": _list(pw.per_dim),
        f"{prefix}/pairwise_accuracy_t0": pw0.mean,
        f"{prefix}/r2": r2.mean,
        f"{prefix}/r2_ci": list(r2.ci),
        f"{prefix}/r2_per_dim": _list(r2.per_dim),
        f"{prefix}/n": int(len(p.segment_ids)),
    }
    return summaries, counts


def _list(a: np.ndarray | None) -> list[float] | None:
    return None if a is None else [float(x) for x in np.asarray(a)]
