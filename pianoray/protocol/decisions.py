"""The seed's elimination rule at a rung, as pure functions (no Ray): who leads a track, who is stopped.

Rule (seed, Round 1): within a track (audio / symbolic), a trial whose validation pairwise accuracy is
more than ``gap`` percentage points below the track's best CANDIDATE at a rung is stopped; if all are
within ``gap``, all continue. Details fixed here so every caller (the Ray scheduler, the replay
benchmark, the report) applies the same rule:

- "more than gap below": a gap exactly equal to ``gap`` (or a tie with the leader) continues. Gaps are
  compared after rounding to 1e-9 points, because 0.8 - 0.7 is 10.000000000000009 points in floats.
- Only candidates lead; references (published baselines re-run as trials) are judged against the
  leader and may be stopped.
- A NaN metric is stopped ("metric is NaN") and never leads. A track with no finite candidate has no
  leader: its other trials continue.
- Noise guard (option): when the leader and the trial report per-pair correctness on the same
  validation pairs, stop only when the lower end of the 95% paired-bootstrap CI of the gap (groups =
  passages) exceeds ``gap``. Without the vectors the point rule is used and the reason says so.

``Decision`` is the durable record (one per trial per rung) written to the run's ledger; its
``event_id`` (``rung{r}:{experiment}``) makes re-writing it idempotent, and it carries the leader metric
so that a late arrival after a resume is judged against the same number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from pianoray.objectives.bootstrap import paired_bootstrap_gap

Role = Literal["candidate", "reference"]
ROLES: tuple[str, ...] = ("candidate", "reference")
Verdict = Literal["continue", "stop"]
Mode = Literal["sync", "async"]

# Gaps are in percentage points; this tolerance only absorbs float error in (a - b) * 100.
_GAP_TOLERANCE = 1e-9


def decision_event_id(rung: int, experiment: str) -> str:
    """The idempotency key of a rung decision: one decision per (rung, experiment) per run."""
    return f"rung{int(rung)}:{experiment}"


@dataclass(frozen=True)
class Decision:
    """One trial's fate at one rung.

    ``metric`` and ``leader_metric`` are in the metric's own units (pairwise accuracy in [0, 1]);
    ``gap_points`` is ``(leader_metric - metric) * 100`` (for mode "min" the sign is flipped so that a
    positive gap is always "worse than the leader"); ``gap_ci`` is the 95% bootstrap interval of that
    gap in points when the noise guard had per-pair vectors. ``leader`` is None when the track had no
    finite candidate at the rung.
    """

    rung: int
    trial_id: str
    experiment: str
    track: str
    metric: float
    leader: str | None
    leader_metric: float | None
    gap_points: float | None
    decision: Verdict
    reason: str
    mode: Mode
    event_id: str
    role: Role = "candidate"
    gap_ci: tuple[float, float] | None = None

    @property
    def stopped(self) -> bool:
        return self.decision == "stop"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN metrics stay float NaN; json.dumps writes them as NaN)."""
        d = asdict(self)
        d["gap_ci"] = list(self.gap_ci) if self.gap_ci is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Decision":
        """Inverse of :meth:`to_dict`; unknown keys raise, naming them (a ledger from a newer version)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Decision.from_dict: unknown field(s) {unknown}")
        missing = sorted(f.name for f in fields(cls) if f.name not in d and f.name not in ("role", "gap_ci"))
        if missing:
            raise ValueError(f"Decision.from_dict: missing field(s) {missing}")
        args = dict(d)
        if args.get("gap_ci") is not None:
            lo, hi = args["gap_ci"]
            args["gap_ci"] = (float(lo), float(hi))
        args["metric"] = float(args["metric"])
        return cls(**args)


@dataclass(frozen=True)
class RungEntry:
    """What one trial reported at a rung.

    ``pair_correct`` [P] in {0, 0.5, 1} and ``pair_group`` [P] (group = passage) are optional; they
    must describe the same ordered validation pairs for every trial of a fold (the noise guard checks
    lengths and groups before pairing them).
    """

    trial_id: str
    experiment: str
    track: str
    role: Role
    metric: float
    pair_correct: np.ndarray | None = None
    pair_group: np.ndarray | None = None

    @property
    def finite(self) -> bool:
        return self.metric is not None and math.isfinite(self.metric)


@dataclass(frozen=True)
class Leader:
    """The best finite candidate of a track at a rung (or its recorded metric, after a resume)."""

    experiment: str
    metric: float
    pair_correct: np.ndarray | None = None
    pair_group: np.ndarray | None = None

    @classmethod
    def of(cls, entry: RungEntry) -> "Leader":
        return cls(entry.experiment, entry.metric, entry.pair_correct, entry.pair_group)


def _sign(mode: str) -> float:
    if mode not in ("max", "min"):
        raise ValueError(f"metric mode must be 'max' or 'min', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


def find_leader(entries: Iterable[RungEntry], metric_mode: str = "max") -> Leader | None:
    """Best finite candidate among ``entries`` (one track); ties go to the first reported."""
    sign = _sign(metric_mode)
    best: RungEntry | None = None
    for e in entries:
        if e.role != "candidate" or not e.finite:
            continue
        if best is None or sign * e.metric > sign * best.metric:
            best = e
    return Leader.of(best) if best is not None else None


def _bootstrap_gap_points(
    leader: Leader, entry: RungEntry, n_boot: int, seed: int
) -> tuple[tuple[float, float] | None, str]:
    """95% CI (points) of leader - trial from paired per-pair vectors, or (None, why not)."""
    if leader.pair_correct is None or entry.pair_correct is None:
        return None, "no per-pair vectors reported"
    a = np.asarray(leader.pair_correct, dtype=np.float64).reshape(-1)
    b = np.asarray(entry.pair_correct, dtype=np.float64).reshape(-1)
    if a.size != b.size or a.size == 0:
        return None, f"per-pair vectors differ in length ({a.size} vs {b.size})"
    groups = entry.pair_group if entry.pair_group is not None else leader.pair_group
    if groups is None:
        return None, "no pair groups reported"
    g = np.asarray(groups).reshape(-1)
    if g.size != a.size:
        return None, f"pair groups have {g.size} entries for {a.size} pairs"
    if leader.pair_group is not None and entry.pair_group is not None:
        if not np.array_equal(np.asarray(leader.pair_group).reshape(-1), g):
            return None, "pair groups differ between trials (not the same validation pairs)"
    lo, hi = paired_bootstrap_gap(a, b, g, n_boot=n_boot, seed=seed)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return None, "bootstrap interval undefined"
    return (lo * 100.0, hi * 100.0), ""


def judge_trial(
    entry: RungEntry,
    leader: Leader | None,
    *,
    rung: int,
    gap: float,
    mode: Mode,
    metric_mode: str = "max",
    noise_guard: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> Decision:
    """Decide one trial at ``rung`` against its track's ``leader`` (None: no finite candidate).

    Used both inside :func:`judge_rung` and on its own for a late arrival (judged against the leader
    recorded when the rung was decided) and for ASHA-style async decisions.
    """
    sign = _sign(metric_mode)

    def make(verdict: Verdict, reason: str, gap_points: float | None = None, ci=None) -> Decision:
        return Decision(
            rung=int(rung),
            trial_id=entry.trial_id,
            experiment=entry.experiment,
            track=entry.track,
            metric=float(entry.metric) if entry.metric is not None else float("nan"),
            leader=leader.experiment if leader is not None else None,
            leader_metric=float(leader.metric) if leader is not None else None,
            gap_points=gap_points,
            decision=verdict,
            reason=reason,
            mode=mode,
            event_id=decision_event_id(rung, entry.experiment),
            role=entry.role,
            gap_ci=ci,
        )

    where = f"at rung {rung} (track {entry.track})"
    if not entry.finite:
        return make("stop", f"{entry.experiment}: metric is NaN {where}, so it is stopped and cannot lead.")
    if leader is None:
        return make("continue", f"{entry.experiment} continues {where}: the track has no finite candidate to compare against.")
    gap_points = round(sign * (leader.metric - entry.metric) * 100.0, 9)
    if leader.experiment == entry.experiment:
        return make("continue", f"{entry.experiment} leads track {entry.track} {where} at {entry.metric:.4f}.", 0.0)
    within = gap_points <= gap + _GAP_TOLERANCE
    point_text = (
        f"{entry.experiment} ({entry.metric:.4f}) is {gap_points:.2f} points "
        f"{'behind' if gap_points >= 0 else 'ahead of'} leader {leader.experiment} ({leader.metric:.4f}) {where}"
    )
    if within:
        return make("continue", f"{point_text}: within the {gap:g}-point gap, continues.", gap_points)
    if not noise_guard:
        return make("stop", f"{point_text}: more than the {gap:g}-point gap, stopped.", gap_points)
    if metric_mode != "max":
        raise ValueError("noise_guard compares per-pair correctness, so it needs metric mode 'max'")
    ci, why_not = _bootstrap_gap_points(leader, entry, n_boot, seed)
    if ci is None:
        return make(
            "stop",
            f"{point_text}: more than the {gap:g}-point gap, stopped (noise guard fell back to the point rule: {why_not}).",
            gap_points,
        )
    lo, hi = ci
    if lo > gap + _GAP_TOLERANCE:
        return make(
            "stop",
            f"{point_text}; 95% CI of the gap [{lo:.2f}, {hi:.2f}] lies above the {gap:g}-point gap, stopped.",
            gap_points,
            ci,
        )
    return make(
        "continue",
        f"{point_text}, but the 95% CI of the gap [{lo:.2f}, {hi:.2f}] reaches {gap:g} points or less "
        f"(noise guard), continues.",
        gap_points,
        ci,
    )


def judge_rung(
    entries: Sequence[RungEntry],
    *,
    rung: int,
    gap: float,
    mode: Mode = "sync",
    metric_mode: str = "max",
    noise_guard: bool = False,
    n_boot: int = 1000,
    seed: int = 0,
) -> tuple[list[Decision], dict[str, Leader | None]]:
    """Decide every entry at ``rung``, each track independently.

    Returns (decisions in the order of ``entries``, leader per track). Entries of several tracks may be
    mixed; a trial is only ever compared with its own track's best candidate.
    """
    by_track: dict[str, list[RungEntry]] = {}
    for e in entries:
        by_track.setdefault(e.track, []).append(e)
    leaders = {t: find_leader(es, metric_mode) for t, es in by_track.items()}
    decisions = [
        judge_trial(
            e,
            leaders[e.track],
            rung=rung,
            gap=gap,
            mode=mode,
            metric_mode=metric_mode,
            noise_guard=noise_guard,
            n_boot=n_boot,
            seed=seed,
        )
        for e in entries
    ]
    return decisions, leaders
