"""Round-2 aggregation and winner selection. Pure functions (no Ray), so they are tested on their own.

Per experiment, the fold figures are aggregated as the mean with a 95% t-interval over folds (4 folds
give 3 degrees of freedom, so the interval is honest about how few they are).

Winners, per track, among candidates (references never win): the highest mean validation pairwise
accuracy (the folds' inner validation splits: the test parts are only reported); a difference within
``tie_tolerance`` is a tie, broken by mean R2; an audio experiment whose relative robustness drop is over
``veto`` (0.15) is vetoed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
from scipy import stats


@dataclass
class FoldOutcome:
    fold: int
    val_pairwise: float
    val_r2: float
    best_epoch: int
    epochs: int
    val_pairwise_per_dim: list[float] | None = None
    test: dict[str, Any] = field(default_factory=dict)


def mean_ci(values: Iterable[float], confidence: float = 0.95) -> dict[str, Any]:
    """Mean and a t-interval over folds; NaN values are left out; one value gives a degenerate interval."""
    x = np.array([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci": [None, None], "n": 0}
    m = float(x.mean())
    if len(x) == 1:
        return {"mean": m, "ci": [m, m], "n": 1}
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": m, "ci": [m - half, m + half], "n": int(len(x))}


def summarise(folds: list[FoldOutcome]) -> dict[str, Any]:
    """One experiment's Round-2 figures from its folds."""
    def test(key: str) -> list[float]:
        return [f.test.get(key) for f in folds if f.test.get(key) is not None]

    per_dim = None
    dims = [f.val_pairwise_per_dim for f in folds if f.val_pairwise_per_dim]
    if dims:
        per_dim = [float(v) for v in np.nanmean(np.array(dims, dtype=float), axis=0)]
    return {
        "pairwise_accuracy": {**mean_ci(f.val_pairwise for f in folds), "per_dim": per_dim},
        "r2": mean_ci(f.val_r2 for f in folds),
        "test": {
            "pairwise_accuracy": {**mean_ci(test("pairwise_accuracy")), "per_dim": _mean_lists(
                [f.test.get("pairwise_accuracy_per_dim") for f in folds])},
            "r2": mean_ci(test("r2")),
        },
        "robustness": _maybe({"drop": mean_ci(test("robustness_drop"))["mean"],
                              "pearson": mean_ci(test("robustness_pearson"))["mean"]}),
        "difficulty_rho": mean_ci(test("difficulty_rho"))["mean"],
        "stop_auc": mean_ci(test("stop_auc"))["mean"],
        "competition_rho": mean_ci(test("competition_rho"))["mean"],
        "folds": [
            {"fold": f.fold, "val_pairwise": f.val_pairwise, "val_r2": f.val_r2,
             "test_pairwise": f.test.get("pairwise_accuracy"), "test_r2": f.test.get("r2"),
             "best_epoch": f.best_epoch, "epochs": f.epochs}
            for f in sorted(folds, key=lambda f: f.fold)
        ],
    }


def _mean_lists(lists: list[list[float] | None]) -> list[float] | None:
    rows = [x for x in lists if x]
    return [float(v) for v in np.nanmean(np.array(rows, dtype=float), axis=0)] if rows else None


def _maybe(d: dict[str, Any]) -> dict[str, Any] | None:
    return d if any(v is not None for v in d.values()) else None


def select_winners(
    summaries: dict[str, dict[str, Any]],
    tracks: dict[str, tuple[str, str]],
    *,
    veto: float = 0.15,
    tie_tolerance: float = 0.0,
) -> dict[str, Any]:
    """Pick the best candidate per track. Returns {"winners": {track: name|None}, "explanations":
    {track: sentence}, "vetoed": [names]}.

    summaries: name -> :func:`summarise` output; tracks: name -> (track, role).
    """
    winners: dict[str, str | None] = {}
    explanations: dict[str, str] = {}
    vetoed: list[str] = []
    for track in sorted({t for t, _ in tracks.values()}):
        pool = []
        for name, (t, role) in tracks.items():
            if t != track or role != "candidate" or name not in summaries:
                continue
            s = summaries[name]
            drop = (s.get("robustness") or {}).get("drop")
            if track == "audio" and drop is not None and drop > veto:
                vetoed.append(name)
                continue
            pw = s["pairwise_accuracy"]["mean"]
            if pw is None or math.isnan(pw):
                continue
            pool.append((name, pw, s["r2"]["mean"] if s["r2"]["mean"] is not None else -math.inf))
        if not pool:
            winners[track] = None
            why = "no candidate finished Round 2" + (f" (vetoed: {', '.join(v for v in vetoed if tracks[v][0] == track)})"
                                                     if any(tracks[v][0] == track for v in vetoed) else "")
            explanations[track] = why
            continue
        top = max(pw for _, pw, _ in pool)
        tied = [p for p in pool if top - p[1] <= tie_tolerance + 1e-12]
        best = max(tied, key=lambda p: (p[2], p[1], p[0]))
        winners[track] = best[0]
        others = sorted((p for p in pool if p[0] != best[0]), key=lambda p: -p[1])
        why = f"{best[0]} has the highest mean validation pairwise accuracy ({100 * best[1]:.1f}%)"
        if len(tied) > 1:
            why = (f"{best[0]} ties on pairwise accuracy (within {100 * tie_tolerance:.1f} points) with "
                   f"{', '.join(p[0] for p in tied if p[0] != best[0])} and wins on R2 ({best[2]:.3f})")
        if others:
            why += "; next: " + ", ".join(f"{p[0]} {100 * p[1]:.1f}%" for p in others[:3])
        track_vetoed = [v for v in vetoed if tracks[v][0] == track]
        if track_vetoed:
            why += f"; vetoed for a robustness drop over {100 * veto:.0f}%: {', '.join(track_vetoed)}"
        explanations[track] = why
    return {"winners": winners, "explanations": explanations, "vetoed": vetoed}
