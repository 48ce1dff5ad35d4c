"""Round-2 aggregation and winner selection. Pure functions (no Ray), so they are tested on their own.

Per experiment, the fold figures are aggregated as the mean with a 95% t-interval over folds (4 folds
give 3 degrees of freedom, so the interval is honest about how few they are).

Winners, per track, among candidates (references never win): the highest mean validation pairwise
accuracy (the folds' inner validation splits: the test parts are only reported). Candidates within
``tie_tolerance`` points of that leader are tied, and mean R2 decides between them (only between them: a
candidate further behind never wins on R2). An audio experiment whose relative robustness drop is over
``veto`` (0.15) is vetoed.

Two statements go with each winner, both from per-passage pair counts (:class:`PairCounts`) that every fold
job records, so that they carry the passages' noise and not only the folds':

- its **margin** over the runner-up (the best other candidate) on the inner validation splits, with a paired
  bootstrap CI over passages, stratified by fold (:func:`pianoray.objectives.metrics.paired_accuracy_gap`);
  a CI that covers 0 is a *statistical tie*: the choice between the two is not resolved by this data;
- whether it **beats the track's best reference** (the reference with the highest mean test pairwise
  accuracy, the hardest one to beat) on the test parts, with the same paired CI over test passages. The test
  parts are reported, never used to choose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
from scipy import stats

from pianoray.objectives.metrics import PairCounts, paired_accuracy_gap
from pianoray.records import PAIR_COUNTS

# Where a fold job puts its pair counts: the fold event payload's "pair_counts" = {"val": ..., "test": ...},
# each PairCounts.to_json() (or None); written by the fold's final report (protocol.trials / run.on_final).


@dataclass
class FoldOutcome:
    """One fold of one experiment. ``val_counts``/``test_counts``: per-passage pair counts of the fold's best
    checkpoint on its inner validation split and its test part (None when the run did not record them)."""

    fold: int
    val_pairwise: float
    val_r2: float
    best_epoch: int
    epochs: int
    val_pairwise_per_dim: list[float] | None = None
    test: dict[str, Any] = field(default_factory=dict)
    val_counts: PairCounts | None = None
    test_counts: PairCounts | None = None


def fold_pair_counts(payload: Mapping[str, Any] | None) -> tuple[PairCounts | None, PairCounts | None]:
    """(inner validation, test) pair counts of one fold from its ``fold`` ledger event payload; None for a
    part that is absent or unreadable (a run recorded before fold jobs wrote them)."""
    counts = (payload or {}).get(PAIR_COUNTS) or {}

    def read(part: str) -> PairCounts | None:
        try:
            return PairCounts.from_json(counts[part]) if counts.get(part) else None
        except (KeyError, TypeError, ValueError):
            return None

    return read("val"), read("test")


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
    """One experiment's Round-2 figures from its folds.

    ``test`` holds :func:`mean_ci` over folds of every real-valued figure the folds' test scores carry (a new
    metric in the scorer's output is summarised without an edit here), pairwise accuracy with its per-dimension
    means."""
    def test(key: str) -> list[float]:
        return [f.test.get(key) for f in folds if f.test.get(key) is not None]

    figures = sorted({k for f in folds for k, v in f.test.items() if isinstance(v, float)})

    per_dim = None
    dims = [f.val_pairwise_per_dim for f in folds if f.val_pairwise_per_dim]
    if dims:
        per_dim = [float(v) for v in np.nanmean(np.array(dims, dtype=float), axis=0)]
    return {
        "pairwise_accuracy": {**mean_ci(f.val_pairwise for f in folds), "per_dim": per_dim},
        "r2": mean_ci(f.val_r2 for f in folds),
        "test": {
            **{k: mean_ci(test(k)) for k in figures},
            "pairwise_accuracy": {**mean_ci(test("pairwise_accuracy")), "per_dim": _mean_lists(
                [f.test.get("pairwise_accuracy_per_dim") for f in folds])},
            "r2": mean_ci(test("r2")),
        },
        "robustness": _maybe({"drop": mean_ci(test("robustness_drop"))["mean"],
                              "pearson": mean_ci(test("robustness_pearson"))["mean"]}),
        "difficulty_rho": mean_ci(test("difficulty_rho"))["mean"],
        "stop_auc": mean_ci(test("stop_auc"))["mean"],
        "stop_group": next((f.test["stop_group"] for f in folds if f.test.get("stop_group")), None),
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
    veto_tracks: Iterable[str] | None = None,
    tie_tolerance: float = 0.5,
    folds: Mapping[str, Sequence[FoldOutcome]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Pick the best candidate per track and say how sure the pick is.

    summaries: name -> :func:`summarise` output; tracks: name -> (track, role); veto_tracks: the tracks whose
    candidates are vetoed for a robustness drop over ``veto`` (default: the registry's tracks with
    ``robustness_veto``); tie_tolerance: in points of
    pairwise accuracy; folds: name -> its :class:`FoldOutcome` list, whose pair counts give the margin and the
    reference comparison their paired bootstrap CIs (``n_boot`` resamples, ``seed``); without them (or
    without counts) those two statements carry the point gap only.

    Returns {"winners": {track: name|None}, "explanations": {track: sentence}, "vetoed": [names],
    "margins": {track: :func:`winner_margin` | None}, "versus_reference": {track: :func:`versus_references`
    | None}, "tie_tolerance_points": tie_tolerance}.
    """
    folds = folds or {}
    if veto_tracks is None:
        from pianoray.models import registry

        veto_tracks = [t.name for t in registry.tracks() if t.robustness_veto]
    veto_tracks = frozenset(veto_tracks)
    winners: dict[str, str | None] = {}
    explanations: dict[str, str] = {}
    margins: dict[str, dict[str, Any] | None] = {}
    versus: dict[str, dict[str, Any] | None] = {}
    vetoed: list[str] = []
    for track in sorted({t for t, _ in tracks.values()}):
        pool = []
        for name, (t, role) in tracks.items():
            if t != track or role != "candidate" or name not in summaries:
                continue
            s = summaries[name]
            drop = (s.get("robustness") or {}).get("drop")
            if track in veto_tracks and drop is not None and drop > veto:
                vetoed.append(name)
                continue
            pw = s["pairwise_accuracy"]["mean"]
            if pw is None or math.isnan(pw):
                continue
            r2 = s["r2"]["mean"]
            pool.append((name, pw, r2 if r2 is not None and not math.isnan(r2) else -math.inf))
        margins[track] = versus[track] = None
        if not pool:
            winners[track] = None
            why = "no candidate finished Round 2" + (f" (vetoed: {', '.join(v for v in vetoed if tracks[v][0] == track)})"
                                                     if any(tracks[v][0] == track for v in vetoed) else "")
            explanations[track] = why
            continue
        top = max(pw for _, pw, _ in pool)
        tied = [p for p in pool if 100 * (top - p[1]) <= tie_tolerance + 1e-9]
        best = max(tied, key=lambda p: (p[2], p[1], p[0]))
        winners[track] = best[0]
        others = sorted((p for p in pool if p[0] != best[0]), key=lambda p: (-p[1], p[0]))
        why = f"{best[0]} has the highest mean validation pairwise accuracy ({100 * best[1]:.1f}%)"
        if len(tied) > 1:
            why = (f"{best[0]} ties on pairwise accuracy (within {tie_tolerance:.1f} points of the leader) with "
                   f"{', '.join(p[0] for p in tied if p[0] != best[0])} and wins on R2 ({best[2]:.3f})")
        if others:
            why += "; next: " + ", ".join(f"{p[0]} {100 * p[1]:.1f}%" for p in others[:3])
        track_vetoed = [v for v in vetoed if tracks[v][0] == track]
        if track_vetoed:
            why += f"; vetoed for a robustness drop over {100 * veto:.0f}%: {', '.join(track_vetoed)}"
        explanations[track] = why
        runner_up = others[0][0] if others else None
        margins[track] = winner_margin(best[0], runner_up, summaries, folds, n_boot=n_boot, seed=seed,
                                       decided_by="r2" if len(tied) > 1 else "pairwise")
        references = [n for n, (t, role) in tracks.items() if t == track and role == "reference" and n in summaries]
        versus[track] = versus_references(best[0], references, summaries, folds, n_boot=n_boot, seed=seed)
    return {"winners": winners, "explanations": explanations, "vetoed": vetoed, "margins": margins,
            "versus_reference": versus, "tie_tolerance_points": float(tie_tolerance)}


# ------------------------------------------------------------------------------- margins and references


def _aligned(a: PairCounts, b: PairCounts) -> tuple[PairCounts, PairCounts] | None:
    """The two models' counts on the pairs both were scored on: unchanged when their passages and totals
    agree (the normal case: same fold, same labels, same threshold), else restricted to the passages they
    share with equal totals (e.g. a segment one model could not read); None when nothing is shared."""
    if a.groups == b.groups and np.array_equal(a.total, b.total):
        return a, b
    ib = {g: i for i, g in enumerate(b.groups)}
    rows = [(i, ib[g]) for i, g in enumerate(a.groups) if g in ib and np.array_equal(a.total[i], b.total[ib[g]])]
    if not rows or a.total.shape[1] != b.total.shape[1]:
        return None
    ia, jb = (np.array(x, dtype=int) for x in zip(*rows))
    groups = tuple(a.groups[i] for i in ia)
    return (PairCounts(groups, a.correct[ia], a.total[ia]), PairCounts(groups, b.correct[jb], b.total[jb]))


def fold_counts(outcomes: Sequence[FoldOutcome] | None, part: str) -> dict[int, PairCounts]:
    """fold -> the per-passage pair counts of ``part`` ("val" or "test") of each fold that has them."""
    out = {}
    for f in outcomes or ():
        c = f.val_counts if part == "val" else f.test_counts
        if c is not None:
            out[int(f.fold)] = c
    return out


def paired_gap(a: Mapping[int, PairCounts], b: Mapping[int, PairCounts], *, n_boot: int = 2000, seed: int = 0
               ) -> dict[str, Any] | None:
    """acc(A) - acc(B) over the folds both have counts for, in points, with the paired bootstrap CI
    (passages resampled within each fold, both models on the same resample). None when no fold is shared.

    Returns {"gap_points", "ci_points": [lo, hi] (None, None without resamples), "folds", "passages",
    "passages_left_out"} (passages one of the two was not scored on alike, see :func:`_aligned`).
    """
    pairs, left_out = [], 0
    for k in sorted(set(a) & set(b)):
        ab = _aligned(a[k], b[k])
        if ab is not None:
            pairs.append(ab)
            left_out += len(set(a[k].groups) | set(b[k].groups)) - len(ab[0].groups)
    if not pairs:
        return None
    gap, (lo, hi) = paired_accuracy_gap(pairs, n_boot=n_boot, seed=seed)
    ci = [100 * lo, 100 * hi] if math.isfinite(lo) and math.isfinite(hi) else [None, None]
    return {"gap_points": 100 * gap if math.isfinite(gap) else None, "ci_points": ci, "folds": len(pairs),
            "passages": sum(len(x.groups) for x, _ in pairs), "passages_left_out": left_out}


def covers_zero(ci: Sequence[float | None] | None) -> bool | None:
    """Whether a CI [lo, hi] contains 0; None when there is no interval."""
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return bool(ci[0] <= 0.0 <= ci[1])


def _mean_pw(summary: Mapping[str, Any] | None, part: str) -> float | None:
    s = (summary or {}).get("test", {}) if part == "test" else (summary or {})
    v = ((s or {}).get("pairwise_accuracy") or {}).get("mean")
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def winner_margin(winner: str, runner_up: str | None, summaries: Mapping[str, Mapping[str, Any]],
                  folds: Mapping[str, Sequence[FoldOutcome]], *, n_boot: int = 2000, seed: int = 0,
                  decided_by: str = "pairwise") -> dict[str, Any]:
    """The winner's margin over the runner-up on the inner validation splits (what chose it).

    Returns {"winner", "runner_up", "basis": "validation", "decided_by": "pairwise"|"r2", "winner_mean",
    "runner_up_mean", "gap_points", "ci_points", "folds", "passages", "passages_left_out", "statistical_tie"}:
    ``gap_points`` is from the pair counts (the mean over folds of the per-fold gap; the difference of the two
    means when counts are missing, then without a CI); ``statistical_tie`` is whether the CI covers 0 (None
    without a CI, or without a runner-up).
    """
    out: dict[str, Any] = {"winner": winner, "runner_up": runner_up, "basis": "validation", "decided_by": decided_by,
                           "winner_mean": _mean_pw(summaries.get(winner), "val"),
                           "runner_up_mean": _mean_pw(summaries.get(runner_up), "val") if runner_up else None,
                           "gap_points": None, "ci_points": [None, None], "folds": 0, "passages": 0,
                           "passages_left_out": 0, "statistical_tie": None}
    if runner_up is None:
        return out
    gap = paired_gap(fold_counts(folds.get(winner), "val"), fold_counts(folds.get(runner_up), "val"),
                     n_boot=n_boot, seed=seed)
    if gap is not None:
        out.update(gap)
    elif out["winner_mean"] is not None and out["runner_up_mean"] is not None:
        out["gap_points"] = 100 * (out["winner_mean"] - out["runner_up_mean"])
    out["statistical_tie"] = covers_zero(out["ci_points"])
    return out


def verdict(ci: Sequence[float | None] | None) -> str | None:
    """"beats" (the CI of winner - reference is above 0), "below" (under 0), "no clear difference" (it covers
    0), or None without a CI."""
    if not ci or ci[0] is None or ci[1] is None:
        return None
    return "beats" if ci[0] > 0 else "below" if ci[1] < 0 else "no clear difference"


def versus_references(winner: str, references: Iterable[str], summaries: Mapping[str, Mapping[str, Any]],
                      folds: Mapping[str, Sequence[FoldOutcome]], *, n_boot: int = 2000, seed: int = 0
                      ) -> dict[str, Any] | None:
    """The winner against each reference of its track on the test parts (reported, never used to choose).

    The headline is the best reference: the one with the highest mean test pairwise accuracy (the hardest to
    beat). Returns None when the track has no reference in Round 2, else {"winner", "reference", "basis":
    "test", "winner_mean", "reference_mean", "gap_points", "ci_points", "folds", "passages",
    "passages_left_out", "verdict", "beats", "references": [the same per reference, best first]};
    ``beats`` is True only when the whole CI is above 0 (None without a CI).
    """
    rows = []
    for ref in references:
        row: dict[str, Any] = {"reference": ref, "reference_mean": _mean_pw(summaries.get(ref), "test"),
                               "gap_points": None, "ci_points": [None, None], "folds": 0, "passages": 0,
                               "passages_left_out": 0}
        gap = paired_gap(fold_counts(folds.get(winner), "test"), fold_counts(folds.get(ref), "test"), n_boot=n_boot,
                         seed=seed)
        if gap is not None:
            row.update(gap)
        else:
            w = _mean_pw(summaries.get(winner), "test")
            if w is not None and row["reference_mean"] is not None:
                row["gap_points"] = 100 * (w - row["reference_mean"])
        row["verdict"] = verdict(row["ci_points"])
        row["beats"] = None if row["verdict"] is None else row["verdict"] == "beats"
        rows.append(row)
    if not rows:
        return None
    rows.sort(key=lambda r: (r["reference_mean"] is None, -(r["reference_mean"] or 0.0), r["reference"]))
    return {"winner": winner, "basis": "test", "winner_mean": _mean_pw(summaries.get(winner), "test"),
            **rows[0], "references": rows}
