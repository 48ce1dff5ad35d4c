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
- Two rules (``Decision.rule``): ``point``, the seed's rule on the observed gap; ``guard`` (the noise
  guard), which stops only when the whole 95% bootstrap interval of the gap lies above ``gap``.
- Every decision, whatever the rule, carries that interval (``gap_ci``, points) when the trials' pair
  counts (:class:`~pianoray.objectives.metrics.PairCounts`: per passage and dimension, correct pairs and
  totals) are known. The interval resamples validation passages, scores every model on the same
  resample with the per-dimension mean that defines pairwise accuracy (so the point gap is exactly the
  difference of the reported metrics), and covers the gap to whichever candidate is truly best: the
  observed leader is the best of several noisy scores, so the observed gap to it overstates the true gap
  when candidates are close, and an interval around that one leader would inherit the bias. The interval
  is simultaneous over the track's candidates (:func:`gap_interval`; ``docs/elimination-rule.md``).
- Under the guard, statistics are required: a trial without pair counts (or counts that do not match its
  metric, or that describe other validation pairs) raises :class:`MissingStatistics`, never a silent
  fallback to the point rule.

``Decision`` is the durable record (one per trial per rung) written to the run's ledger; its
``event_id`` (``rung{r}:{experiment}``) makes re-writing it idempotent, and it carries the leader metric
so that a late arrival after a resume is judged against the same number.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Iterable, Literal, Sequence

import numpy as np

from pianoray.objectives.bootstrap import resample_weights
from pianoray.objectives.metrics import PairCounts
from pianoray.records import Role

ROLES: tuple[str, ...] = ("candidate", "reference")
Verdict = Literal["continue", "stop"]
Mode = Literal["sync", "async"]
Rule = Literal["point", "guard"]

# Gaps are in percentage points; this tolerance only absorbs float error in (a - b) * 100.
_GAP_TOLERANCE = 1e-9
# Pair counts describe a metric when they give it back to this precision (both are float64 of the same sums).
_COUNTS_TOLERANCE = 1e-6
_ALPHA = 0.05


class MissingStatistics(RuntimeError):
    """The noise guard cannot judge: a trial's pair counts are absent or do not describe its metric."""


def decision_event_id(rung: int, experiment: str) -> str:
    """The idempotency key of a rung decision: one decision per (rung, experiment) per run."""
    return f"rung{int(rung)}:{experiment}"


@dataclass(frozen=True)
class Decision:
    """One trial's fate at one rung.

    ``metric`` and ``leader_metric`` are in the metric's own units (pairwise accuracy in [0, 1]);
    ``gap_points`` is ``(leader_metric - metric) * 100`` (for mode "min" the sign is flipped so that a
    positive gap is always "worse than the leader"). ``gap_ci`` is the 95% bootstrap interval of the gap to
    the track's best candidate, in points, with the leader re-drawn in every resample (None without pair
    counts); ``leader_bias`` (points) is the bootstrap's estimate of how much taking the best of noisy scores
    inflates the observed gap (information: the interval already allows for it). ``rule`` is the rule that
    decided: "point" or "guard".
    ``epoch`` is the trial's own epoch of the judged report (its pair counts are recorded under it);
    ``final`` marks the rung at the end of the round. ``leader`` is None when the track had no finite
    candidate at the rung.
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
    rule: Rule = "point"
    leader_bias: float | None = None
    epoch: int | None = None
    final: bool = False

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
        """Inverse of :meth:`to_dict`; unknown keys raise, naming them (a ledger from a newer version).
        Fields added after the first ledgers (role, gap_ci, rule, leader_bias, epoch, final) may be absent."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"Decision.from_dict: unknown field(s) {unknown}")
        optional = {"role", "gap_ci", "rule", "leader_bias", "epoch", "final"}
        missing = sorted(f.name for f in fields(cls) if f.name not in d and f.name not in optional)
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

    ``counts``: its pair counts on the round's validation split (every trial of a round is scored on the
    same passages and pairs); ``epoch``: its own epoch of that report (where the counts are recorded).
    """

    trial_id: str
    experiment: str
    track: str
    role: Role
    metric: float
    counts: PairCounts | None = None
    epoch: int | None = None

    @property
    def finite(self) -> bool:
        return self.metric is not None and math.isfinite(self.metric)


@dataclass(frozen=True)
class Leader:
    """The best finite candidate of a track at a rung (or its recorded metric, after a resume).

    ``rivals``: every finite candidate of the track at the rung, the leader included: the bootstrap
    re-draws the leader among them (empty: only the leader's metric is known)."""

    experiment: str
    metric: float
    rivals: tuple[RungEntry, ...] = ()

    @classmethod
    def of(cls, entry: RungEntry, rivals: Iterable[RungEntry] = ()) -> "Leader":
        return cls(entry.experiment, entry.metric, tuple(rivals) or (entry,))


@dataclass(frozen=True)
class GapInterval:
    """The gap of a trial to its track's best candidate, in points: ``gap`` observed (from the counts),
    ``lo``/``hi`` its 95% interval (simultaneous over the candidates), ``bias`` the estimated inflation of
    ``gap`` by taking the best of noisy scores."""

    gap: float
    lo: float
    hi: float
    bias: float


def _sign(mode: str) -> float:
    if mode not in ("max", "min"):
        raise ValueError(f"metric mode must be 'max' or 'min', got {mode!r}")
    return 1.0 if mode == "max" else -1.0


def find_leader(entries: Iterable[RungEntry], metric_mode: str = "max") -> Leader | None:
    """Best finite candidate among ``entries`` (one track); ties go to the first reported. Its rivals are
    every finite candidate among ``entries``."""
    sign = _sign(metric_mode)
    best: RungEntry | None = None
    rivals = []
    for e in entries:
        if e.role != "candidate" or not e.finite:
            continue
        rivals.append(e)
        if best is None or sign * e.metric > sign * best.metric:
            best = e
    return Leader.of(best, rivals) if best is not None else None


def _resampled_accuracy(counts: PairCounts, weights: np.ndarray) -> np.ndarray:
    """[n_boot] pairwise accuracy of one model on each passage resample (weights [n_boot, G]): the per-dimension
    accuracy over the resampled pairs, averaged over the dimensions that have a pair, as PairCounts.accuracy()."""
    with np.errstate(invalid="ignore", divide="ignore"):
        per_dim = (weights @ counts.correct) / (weights @ counts.total)  # [n_boot, N]
    finite = np.isfinite(per_dim)
    n = finite.sum(axis=1)
    total = np.where(finite, per_dim, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _statistics_problem(entry: RungEntry, reference: PairCounts | None = None) -> str | None:
    """Why ``entry``'s counts cannot be used (None: they can): absent, not giving back its metric, or scored
    on other pairs than ``reference``."""
    if entry.counts is None:
        return f"{entry.experiment} has no pair counts" + (f" for epoch {entry.epoch}" if entry.epoch is not None else "")
    acc = entry.counts.accuracy()
    if not (math.isfinite(acc) and abs(acc - entry.metric) <= _COUNTS_TOLERANCE):
        return (f"{entry.experiment}'s pair counts give pairwise accuracy {acc:.6f}, but it reported "
                f"{entry.metric:.6f}: they do not describe the judged report")
    if reference is not None and (entry.counts.groups != reference.groups
                                  or not np.array_equal(entry.counts.total, reference.total)):
        return f"{entry.experiment}'s pair counts describe other validation pairs than its rivals'"
    return None


def gap_interval(entry: RungEntry, rivals: Sequence[RungEntry], *, n_boot: int = 1000, seed: int = 0
                 ) -> tuple[GapInterval | None, str]:
    """The gap of ``entry`` to the best of ``rivals`` (its track's finite candidates at the rung; ``entry``
    counts among them when it is a candidate), with a 95% interval that holds whichever rival is truly best.

    The observed gap ``g = max_j D_j`` (``D_j = acc_j - acc_entry``) is the maximum of noisy differences, so
    it overstates the true gap ``max_j d_j`` when rivals are close; an interval around the observed leader
    alone inherits that bias. Instead every resample draws the validation passages with replacement (the
    same draw for every model, so what they share cancels) and gives ``D*_j``; with ``c_lo`` the 97.5%
    quantile of ``max_j (D*_j - D_j)`` and ``c_hi`` that of ``max_j (D_j - D*_j)``, every ``d_j`` lies in
    ``[D_j - c_lo, D_j + c_hi]`` together with 95% confidence, hence ``max_j d_j`` in
    ``[g - c_lo, g + c_hi]``. With one rival this is the basic bootstrap interval of the paired gap.
    ``bias`` is the bootstrap's estimate of the leader's inflation, ``mean(max_j D*_j) - g`` (information).

    Returns (interval in points, "") or (None, why not).
    """
    if not rivals:
        return None, "the track's candidates at this rung are unknown"
    pool = {r.experiment: r for r in rivals if r.experiment != entry.experiment}
    models = [entry, *pool.values()]
    first = entry.counts
    for m in models:
        why = _statistics_problem(m, first)
        if why:
            return None, why
    assert first is not None
    weights = resample_weights(len(first.groups), n_boot, seed)
    acc = np.array([m.counts.accuracy() for m in models])  # type: ignore[union-attr]
    boot = np.stack([_resampled_accuracy(m.counts, weights) for m in models])  # type: ignore[arg-type]
    diff = acc[1:] - acc[0]  # [K] D_j
    diff_star = boot[1:] - boot[0]  # [K, n_boot] D*_j
    if entry.role == "candidate" and entry.finite:  # its own "gap to itself" is 0, exactly
        diff, diff_star = np.r_[diff, 0.0], np.vstack([diff_star, np.zeros((1, n_boot))])
    if diff.size == 0:
        return None, "no rival to compare with"
    keep = np.isfinite(diff_star).all(axis=0)
    if not keep.any():
        return None, "bootstrap interval undefined (no resample has a pair)"
    dev = diff_star[:, keep] - diff[:, None]
    q = 100 * (1 - _ALPHA / 2)
    c_lo, c_hi = np.percentile(dev.max(axis=0), q), np.percentile((-dev).max(axis=0), q)
    g = float(diff.max())
    bias = float(diff_star[:, keep].max(axis=0).mean()) - g
    return GapInterval(g * 100.0, (g - c_lo) * 100.0, (g + c_hi) * 100.0, bias * 100.0), ""


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
    final: bool = False,
) -> Decision:
    """Decide one trial at ``rung`` against its track's ``leader`` (None: no finite candidate).

    Used both inside :func:`judge_rung` and on its own for a late arrival (judged against the leader
    recorded when the rung was decided) and for ASHA-style async decisions. ``final``: the rung at the end
    of the round. Raises :class:`MissingStatistics` under the noise guard when the statistics are missing.
    """
    sign = _sign(metric_mode)
    rule: Rule = "guard" if noise_guard else "point"
    if noise_guard and metric_mode != "max":
        raise ValueError("noise_guard compares pairwise accuracies, so it needs metric mode 'max'")
    interval: GapInterval | None = None
    why_not = "no leader"
    if leader is not None and entry.finite and metric_mode == "max":
        interval, why_not = gap_interval(entry, leader.rivals or (), n_boot=n_boot, seed=seed)
    if noise_guard and interval is None and leader is not None and entry.finite:
        raise MissingStatistics(
            f"noise guard at rung {rung} (track {entry.track}): cannot judge {entry.experiment}: {why_not}. "
            "The guard needs every trial's pair counts (recorded by the Round-1 trainable); "
            "set round1.noise_guard: false to use the point rule"
        )

    def make(verdict: Verdict, reason: str, gap_points: float | None = None) -> Decision:
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
            gap_ci=(float(round(interval.lo, 6)), float(round(interval.hi, 6))) if interval is not None else None,
            rule=rule,
            leader_bias=float(round(interval.bias, 6)) if interval is not None else None,
            epoch=entry.epoch,
            final=final,
        )

    where = f"at {'the final rung, ' if final else ''}rung {rung} (track {entry.track})"
    if not entry.finite:
        return make("stop", f"{entry.experiment}: metric is NaN {where}, so it is stopped and cannot lead.")
    if leader is None:
        return make("continue", f"{entry.experiment} continues {where}: the track has no finite candidate to compare against.")
    gap_points = round(sign * (leader.metric - entry.metric) * 100.0, 9)
    if leader.experiment == entry.experiment:
        return make("continue", f"{entry.experiment} leads track {entry.track} {where} at {entry.metric:.4f}.", 0.0)
    within = gap_points <= gap + _GAP_TOLERANCE
    point_text = (
        f"{entry.experiment} ({entry.metric:.4f}) is {abs(gap_points):.2f} points "
        f"{'behind' if gap_points >= 0 else 'ahead of'} leader {leader.experiment} ({leader.metric:.4f}) {where}"
    )
    ci_text = (
        f"95% CI of the gap to the best candidate [{interval.lo:.2f}, {interval.hi:.2f}]"
        if interval is not None else ""
    )
    if within:
        return make("continue", f"{point_text}: within the {gap:g}-point gap, continues"
                                f"{f' ({ci_text})' if ci_text else ''}.", gap_points)
    if not noise_guard:
        return make("stop", f"{point_text}: more than the {gap:g}-point gap, stopped (point rule"
                            f"{f'; {ci_text}' if ci_text else ''}).", gap_points)
    assert interval is not None
    if interval.lo > gap + _GAP_TOLERANCE:
        return make("stop", f"{point_text}; {ci_text} lies above the {gap:g}-point gap, stopped (noise guard).",
                    gap_points)
    return make(
        "continue",
        f"{point_text}, but the {ci_text} reaches {gap:g} points or less (noise guard), continues.",
        gap_points,
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
    final: bool = False,
) -> tuple[list[Decision], dict[str, Leader | None]]:
    """Decide every entry at ``rung``, each track independently.

    Returns (decisions in the order of ``entries``, leader per track). Entries of several tracks may be
    mixed; a trial is only ever compared with its own track's candidates.
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
            final=final,
        )
        for e in entries
    ]
    return decisions, leaders
