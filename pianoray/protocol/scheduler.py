"""TrackGapScheduler: the seed's Round-1 elimination rule as a Ray Tune ``TrialScheduler``.

At each rung (an epoch of OUR epoch counter, reported as ``result["epoch"]``; ``training_iteration``
restarts on resume so it is never used), a trial more than ``gap`` percentage points below the best
candidate of its track is stopped (:mod:`pianoray.protocol.decisions` holds the rule itself).

Two modes:

- **sync** (promotion-style, what ASHA cannot do, ray#32634): a trial reaching a rung is PAUSEd until
  every live trial of its track has reported there (or ended); then the whole track is decided at once.
  Losers are stopped, winners resume from their checkpoints through :meth:`choose_trial_to_run` (as
  Ray's HyperBandScheduler does). Pausing also frees the CPU so that, with fewer CPUs than trials, the
  trials still on their way to the rung can run. A trial reaching a rung after it was decided (a late
  arrival: added later, or retried after an error) is judged against the leader recorded there.
- **async** (ASHA-style): each trial is decided as it arrives, against the best candidate recorded at
  that rung so far (itself included).

The **final rung** (``final_rung``, the round's budget): every trial is judged once more on its last report
(``result["stop"]``: budget spent or early-stopped), so one that falls more than ``gap`` behind after the last
listed rung is not promoted. Nothing pauses there: in sync mode the track is decided when every trial still
due there has reported its last epoch or ended, and the decisions of trials already finished are recorded
all the same (the driver promotes only trials without a stop decision).

Statistics: ``pair_counts(experiment, epoch)`` returns a trial's validation pair counts at its reported
``result["epoch"]`` (in a run: from the ledger, written by the trainable before it reports;
:mod:`pianoray.protocol.pair_counts`). Every decision records the gap's bootstrap interval from them
(``gap_ci``) and its ``rule``; under ``noise_guard`` a missing count is an error (:class:`MissingStatistics`,
kept in ``self.failure``), which ends the Tune run at once.

Durability: ``Tuner.restore`` does not restore scheduler state (ray#30838). Every decision goes to
``on_decision`` exactly once (the run's ledger) and the constructor takes ``prior_decisions`` read back
from it: a trial already stopped is stopped again at its first report, decided rungs are not decided
again (their recorded leader judges newcomers), so a resumed run makes the same decisions.

Trial lifecycle (errors, restores, early stopping):

- A trial that errors for good (Tune's retries spent; a retry is ``on_trial_error`` then ``on_trial_add``
  of the same trial) is not a leader: it leaves every rung it reported at, and each rung it led is
  re-judged without it. A trial stopped there that now survives restarts from its checkpoint at the rung,
  as a new Tune trial of the same experiment (``config["revived_at"]`` = the rung);
  ``on_rejudge(previous, new, errored)`` records it (the ledger's ``rejudged`` event) and the new decision
  replaces the old one in ``decisions``.
- A rung is judged on what the trial reported at the rung epoch, whatever happened to its process since
  (``prior_reports``: what the ledger recorded, per experiment and epoch).
- ``Tuner.restore`` re-adds every trial of its snapshot; each takes up where the ledger says it was.
  Finished trials (TERMINATED) never block a rung. A trial that had reported at a rung still undecided
  waits there again, PAUSED (it does not train on first). A trial whose rung was decided meanwhile is
  judged at once; one already judged out is stopped without starting. Its list of checkpoints is re-read
  from storage (the snapshot lags it after a driver kill; :mod:`pianoray.protocol.checkpoints`).
- A trial whose last report (``result[stop_key]``, early stopping) comes before a rung is judged at each
  remaining rung on that last value, without pausing.

Trials must carry ``config["experiment"]`` (unique within the run: decisions are keyed by it so that
they survive new trial ids), ``config["track"]`` and optionally ``config["role"]`` ("candidate", the
default, or "reference": judged, may be stopped, never leads).

Example::

    scheduler = TrackGapScheduler(rungs=[10, 25], final_rung=50, gap=10.0, on_decision=ledger.write,
                                  prior_decisions=ledger.read_decisions(), pair_counts=read_counts)
    tune.Tuner(trainable, param_space=..., tune_config=tune.TuneConfig(scheduler=scheduler))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.checkpoints import reconcile_trial_checkpoints, rung_checkpoint
from pianoray.protocol.decisions import (
    ROLES,
    Decision,
    Leader,
    MissingStatistics,
    RungEntry,
    decision_event_id,
    find_leader,
    judge_rung,
    judge_trial,
)
from pianoray.records import SELECTION_METRIC

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)


RungKey = tuple[str, int]  # (track, rung epoch)
REVIVED_KEY = "revived_at"  # config key of a trial restarted after a re-judgement: the rung it restarts from


@dataclass
class _TrialState:
    """What the scheduler knows about one trial (keyed by trial_id)."""

    trial: Trial
    experiment: str
    track: str
    role: str
    live: bool = True
    next_rung: int = 0  # index into rungs of the first rung this trial has not passed
    waiting_at: int | None = None  # rung epoch this trial is PAUSEd at, awaiting its track
    stop_at_next_result: bool = False  # a loser that was RUNNING when its rung was decided
    final_reported: bool = False  # its last report (the final rung's entry) has been seen
    last_result: dict[str, Any] | None = None  # its latest report in this session


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def _set_status(trial: Trial, status: str) -> None:
    """Set a trial's status while Tune adds it (``on_trial_add`` runs before Tune files it by status)."""
    if hasattr(trial, "set_status"):
        trial.set_status(status)
    else:
        trial.status = status


def _should_recover(trial: Trial) -> bool:
    should = getattr(trial, "should_recover", None)
    return bool(should()) if callable(should) else False


class TrackGapScheduler(TrialScheduler):
    """Stop trials more than ``gap`` points behind their track's best candidate at each rung.

    Args:
        metric: result key of the validation metric (pairwise accuracy in [0, 1]).
        mode: "max" (higher is better) or "min".
        rungs: strictly increasing epochs (1-based, ``result[epoch_key]``) at which trials are judged.
        gap: elimination threshold in percentage points (metric * 100).
        sync: promotion-style rungs (PAUSE until the track has reported) if True, ASHA-style if False.
        noise_guard: stop only when the 95% bootstrap interval of the gap lies above ``gap``
            (needs ``pair_counts``; a trial without counts ends the run with :class:`MissingStatistics`).
        on_decision: called once per new decision (the durable ledger writer).
        prior_decisions: decisions read back from the ledger when resuming a run.
        n_boot, seed: bootstrap resamples and seed of each decision's gap interval (fixed seed: reproducible).
        final_rung: the rung at the end of the round (> every rung; numbered by the budget), reached by a
            trial's last report (``result[stop_key]`` true, or ``result[epoch_key] >= final_rung``); None: none.
        pair_counts: ``(experiment, epoch) -> PairCounts | None``, a trial's validation pair counts at its
            reported ``result["epoch"]``; None: decisions carry no interval (and the guard cannot run).
        on_rejudge: called with (previous decision, new decision, errored leader) when a rung is re-judged
            without a leader that errored for good (the durable ledger writer).
        prior_reports: when resuming, per experiment, what it reported at each value of ``epoch_key``
            (``Ledger.rung_reports``): rungs are judged on these, and restored trials resume from them.
        errored: experiments that errored for good in an earlier session (they never lead).
        revived: experiment -> rung, trials restarted after a re-judgement in an earlier session.
    """

    _supports_buffered_results = False  # every report must reach us, or a rung could be skipped

    def __init__(
        self,
        metric: str | None = SELECTION_METRIC,
        mode: str | None = "max",
        rungs: Sequence[int] = (10, 25),
        gap: float = 10.0,
        sync: bool = True,
        noise_guard: bool = False,
        on_decision: Callable[[Decision], None] | None = None,
        prior_decisions: Iterable[Decision] = (),
        *,
        n_boot: int = 1000,
        seed: int = 0,
        epoch_key: str = "epoch",
        final_rung: int | None = None,
        pair_counts: Callable[[str, int], PairCounts | None] | None = None,
        stop_key: str = "stop",
        on_rejudge: Callable[[Decision, Decision, str], None] | None = None,
        prior_reports: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
        errored: Iterable[str] = (),
        revived: Mapping[str, int] | None = None,
    ) -> None:
        super().__init__()
        rungs = [int(r) for r in rungs]
        if (not rungs and final_rung is None) or any(r < 1 for r in rungs) or sorted(set(rungs)) != rungs:
            raise ValueError(f"TrackGapScheduler: rungs must be strictly increasing epochs >= 1, got {rungs}")
        if final_rung is not None and (int(final_rung) < 1 or any(r >= int(final_rung) for r in rungs)):
            raise ValueError(f"TrackGapScheduler: final_rung={final_rung} must come after every rung {rungs}")
        if noise_guard and pair_counts is None:
            raise ValueError("TrackGapScheduler: noise_guard needs pair_counts, the trials' validation pair counts")
        if not (gap > 0 and math.isfinite(gap)):
            raise ValueError(f"TrackGapScheduler: gap must be a positive number of points, got {gap}")
        if mode not in (None, "max", "min"):
            raise ValueError(f"TrackGapScheduler: mode must be 'max' or 'min', got {mode!r}")
        if noise_guard and mode == "min":
            raise ValueError("TrackGapScheduler: noise_guard compares per-pair correctness, so it needs mode='max'")
        self._metric = metric
        self._mode = mode or "max"
        self.rungs = rungs
        self.gap = float(gap)
        self.sync = bool(sync)
        self.noise_guard = bool(noise_guard)
        self._on_decision = on_decision
        self._n_boot = n_boot
        self._seed = seed
        self._epoch_key = epoch_key
        self.final_rung = int(final_rung) if final_rung is not None else None
        self._pair_counts = pair_counts
        self._stop_key = stop_key
        self._counts: dict[tuple[str, int], PairCounts] = {}  # (experiment, epoch) -> counts read so far
        self.failure: MissingStatistics | None = None  # why the guard could not judge (the run fails on it)
        self._on_rejudge = on_rejudge
        # experiment -> {value of epoch_key: result}: recorded in the ledger before this session / seen in it
        self._prior_reports = {str(x): {int(e): dict(r) for e, r in by.items()} for x, by in (prior_reports or {}).items()}
        self._seen: dict[str, dict[int, dict[str, Any]]] = {}
        self._errored: set[str] = set(errored)  # errored for good: never lead
        self._revived: dict[str, int] = {str(x): int(r) for x, r in (revived or {}).items()}
        self._superseded: dict[str, _TrialState] = {}  # experiment -> the trial a revived one restarted from
        self._to_stop: set[str] = set()  # restored trials judged out: stopped, never started, by choose_trial_to_run
        self._resettle = False  # restored trials joined open rungs: settle them once every trial is added
        self._revivals_checked = not self._revived

        self.decisions: list[Decision] = []
        self._by_event: dict[str, Decision] = {}
        self._states: dict[str, _TrialState] = {}
        self._experiment_trial: dict[str, str] = {}
        self._reports: dict[RungKey, dict[str, RungEntry]] = {}  # experiment -> entry, per rung
        self._decided: dict[RungKey, Leader | None] = {}  # sync: rungs already decided, and their leader
        self._processing = False  # re-entrancy guard: stop_trial() calls back into on_trial_remove
        for d in prior_decisions:
            self._adopt_prior(d)
        self._drop_errored_leaders()

    @property
    def mode_name(self) -> str:
        return "sync" if self.sync else "async"

    # ------------------------------------------------------------------ prior decisions (resume)
    def _adopt_prior(self, d: Decision) -> None:
        if d.event_id in self._by_event:
            return
        self._by_event[d.event_id] = d
        self.decisions.append(d)
        key = (d.track, d.rung)
        if d.leader is not None and d.leader_metric is not None:
            self._decided[key] = Leader(d.leader, float(d.leader_metric))
        else:
            self._decided.setdefault(key, None)
        if d.role == "candidate" and math.isfinite(d.metric):
            # Async rungs compare with the best recorded so far, and every rung's interval re-draws the
            # leader among its candidates: keep the recorded candidates (their counts are read when needed).
            self._reports.setdefault(key, {})[d.experiment] = RungEntry(
                d.trial_id, d.experiment, d.track, "candidate", d.metric, epoch=d.epoch
            )

    def _drop_errored_leaders(self) -> None:
        """After a resume: a trial that errored for good leads no rung; its rungs are led by the leader their
        re-judged decisions name (or the best candidate recorded there)."""
        if not self._errored:
            return
        for reports in self._reports.values():
            for name in self._errored:
                reports.pop(name, None)
        for key, leader in list(self._decided.items()):
            if leader is None or leader.experiment not in self._errored:
                continue
            named = [d for d in self.decisions if (d.track, d.rung) == key and d.leader is not None
                     and d.leader not in self._errored and d.leader_metric is not None]
            self._decided[key] = (Leader(named[-1].leader, float(named[-1].leader_metric)) if named  # type: ignore[arg-type]
                                  else find_leader(self._reports.get(key, {}).values(), self._mode))

    def _prior_stop(self, experiment: str) -> Decision | None:
        stops = [d for d in self.decisions if d.experiment == experiment and d.stopped]
        return min(stops, key=lambda d: d.rung) if stops else None

    # ------------------------------------------------------------------ Tune hooks
    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        if metric and self._metric and metric != self._metric:
            return False
        if mode and self._mode and mode != self._mode:
            return False
        if metric:
            self._metric = metric
        if mode:
            self._mode = mode
        if self._metric is None:
            self._metric = SELECTION_METRIC
        return True

    def on_trial_add(self, tune_controller: "TuneController", trial: Trial) -> None:
        st = self._states.get(trial.trial_id)
        if st is not None:  # re-added after an error (Tune requeues a failed trial for retry)
            st.trial, st.live, st.waiting_at, st.stop_at_next_result = trial, True, None, False
            return
        cfg = trial.config or {}
        for key in ("experiment", "track"):
            if key not in cfg:
                raise ValueError(f"TrackGapScheduler: trial {trial.trial_id} has no config[{key!r}]")
        role = cfg.get("role", "candidate")
        if role not in ROLES:
            raise ValueError(f"TrackGapScheduler: trial {trial.trial_id}: config['role']={role!r}, expected one of {ROLES}")
        experiment = str(cfg["experiment"])
        # Tuner.restore re-adds finished trials as TERMINATED (or ERROR): they never block a rung.
        live = getattr(trial, "status", Trial.PENDING) not in (Trial.TERMINATED, Trial.ERROR)
        if int(cfg.get(REVIVED_KEY) or 0) < self._revived.get(experiment, 0):
            # The trial a re-judged experiment was restarted from (restored): its lineage goes on in the new one.
            st = _TrialState(trial, experiment, str(cfg["track"]), role, live=False)
            self._states[trial.trial_id] = st
            self._superseded[experiment] = st
            self._experiment_trial.setdefault(experiment, trial.trial_id)
            if live:
                _set_status(trial, Trial.TERMINATED)
            return
        other = self._experiment_trial.get(experiment)
        if live and other is not None and other != trial.trial_id and self._states[other].live:
            raise ValueError(
                f"TrackGapScheduler: trials {other} and {trial.trial_id} share config['experiment']={experiment!r}; "
                "decisions are keyed by experiment, so it must be unique within a run"
            )
        st = _TrialState(trial, experiment, str(cfg["track"]), role, live=live)
        self._states[trial.trial_id] = st
        if live or other is None or not self._states[other].live:
            self._experiment_trial[experiment] = trial.trial_id
        if live:
            reconcile_trial_checkpoints(trial)  # a restored trial: its checkpoints as storage has them
        self._restore_progress(st)

    def on_trial_result(self, tune_controller: "TuneController", trial: Trial, result: dict) -> str:
        st = self._states.get(trial.trial_id)
        if st is None:
            self.on_trial_add(tune_controller, trial)
            st = self._states[trial.trial_id]
        st.waiting_at = None  # it is running again, so it is not waiting at a rung any more
        st.last_result = result
        if isinstance(result.get(self._epoch_key), (int, float)):
            self._seen.setdefault(st.experiment, {})[int(result[self._epoch_key])] = result
        if st.stop_at_next_result:
            return TrialScheduler.STOP
        prior = self._prior_stop(st.experiment)
        if prior is not None:
            logger.info("TrackGapScheduler: re-applying %s: stop %s (%s)", prior.event_id, st.experiment, prior.reason)
            return TrialScheduler.STOP
        epoch = result.get(self._epoch_key)
        if epoch is None:
            return TrialScheduler.CONTINUE
        epoch = int(epoch)
        last = self.final_rung is not None and not st.final_reported and (
            bool(result.get(self._stop_key)) or epoch >= self.final_rung)
        while st.next_rung < len(self.rungs) and self.rungs[st.next_rung] <= epoch:
            rung = self.rungs[st.next_rung]
            action = self._at_rung(tune_controller, st, rung, self._reported_at(st, rung, result))
            if action != TrialScheduler.CONTINUE:
                if action == TrialScheduler.PAUSE and last:
                    # Paused at a rung by its last report: when resumed it has nothing left to report, so
                    # its final-rung entry is this report (dropped if the paused rung stops it).
                    st.final_reported = True
                    self._reports.setdefault((st.track, self.final_rung), {})[st.experiment] = self._entry(st, result)
                return action
            st.next_rung += 1
        if result.get(self._stop_key) and self._ended_before_rungs(tune_controller, st, result) == TrialScheduler.STOP:
            return TrialScheduler.STOP
        if last:
            st.final_reported = True
            return self._at_rung(tune_controller, st, self.final_rung, result)  # type: ignore[arg-type]
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: "TuneController", trial: Trial, result: dict) -> None:
        st = self._states.get(trial.trial_id)
        if st is not None and st.live and not st.stop_at_next_result and self._prior_stop(st.experiment) is None:
            # It ended on its own (its last report may not have said so): judged on its last value at the rungs
            # still ahead of it, the final one included.
            last = st.last_result or (result if result.get(self._epoch_key) is not None else None)
            if last is not None and self._ended_before_rungs(tune_controller, st, last) != TrialScheduler.STOP \
                    and self.final_rung is not None and not st.final_reported:
                st.final_reported = True
                self._at_rung(tune_controller, st, self.final_rung, last)
        self._trial_gone(tune_controller, trial)

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial) -> None:
        st = self._states.get(trial.trial_id)
        if st is not None and getattr(trial, "status", None) == Trial.ERROR and _should_recover(trial):
            return  # Tune retries it (on_trial_add of the same trial follows): still due at its rungs
        if st is not None:
            self._errored_for_good(tune_controller, st)
        self._trial_gone(tune_controller, trial)

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._trial_gone(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: "TuneController") -> Trial | None:
        """A PENDING trial first (it may be what a paused rung is waiting for), else a PAUSED trial that
        is not waiting at an undecided rung (a winner to resume). Idempotent; the first call after a restore
        also settles the rungs restored trials rejoined and stops those already judged out."""
        self._after_restore(tune_controller)
        trials = tune_controller.get_trials()
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        for t in trials:
            if t.status != Trial.PAUSED:
                continue
            st = self._states.get(t.trial_id)
            if st is None or (st.waiting_at is None and not st.stop_at_next_result and t.trial_id not in self._to_stop):
                return t
        return None

    def debug_string(self) -> str:
        stopped = sum(d.stopped for d in self.decisions)
        waiting = sorted(f"{s.experiment}@{s.waiting_at}" for s in self._states.values() if s.waiting_at is not None)
        return (
            f"TrackGapScheduler ({self.mode_name}, {'guard' if self.noise_guard else 'point'} rule, gap {self.gap:g} "
            f"points, rungs {self.rungs}, final rung {self.final_rung}): "
            f"{len(self.decisions)} decisions, {stopped} stopped; waiting: {', '.join(waiting) or 'none'}"
        )

    # ------------------------------------------------------------------ rung logic
    def _entry(self, st: _TrialState, result: dict) -> RungEntry:
        epoch = result.get("epoch")
        return RungEntry(
            trial_id=st.trial.trial_id,
            experiment=st.experiment,
            track=st.track,
            role=st.role,  # type: ignore[arg-type]
            metric=_as_float(result.get(self._metric)),
            epoch=int(epoch) if epoch is not None else None,
        )

    def _with_counts(self, entry: RungEntry) -> RungEntry:
        """``entry`` with its pair counts, read from the source at its epoch (once per (experiment, epoch))."""
        if entry.counts is not None or entry.epoch is None or self._pair_counts is None:
            return entry
        key = (entry.experiment, entry.epoch)
        if key not in self._counts:
            try:
                counts = self._pair_counts(entry.experiment, entry.epoch)
            except Exception as e:  # storage trouble: the guard cannot judge; the point rule goes on
                if self.noise_guard:
                    self.failure = MissingStatistics(f"reading {entry.experiment}'s pair counts at epoch {entry.epoch}: {e}")
                    raise self.failure from e
                logger.warning("TrackGapScheduler: no pair counts for %s epoch %s: %s", entry.experiment, entry.epoch, e)
                return entry
            if counts is None:
                return entry
            self._counts[key] = counts
        return replace(entry, counts=self._counts[key])

    def _leader_at(self, key: RungKey, leader: Leader | None) -> Leader | None:
        """The leader recorded at a decided rung, with its rivals (the rung's finite candidates) and their counts."""
        if leader is None:
            return None
        rivals = [e for e in self._reports.get(key, {}).values() if e.role == "candidate" and e.finite]
        return replace(leader, rivals=tuple(self._with_counts(e) for e in rivals))

    def _judge_kwargs(self, rung: int) -> dict[str, Any]:
        return dict(
            rung=rung,
            gap=self.gap,
            mode=self.mode_name,
            metric_mode=self._mode,
            noise_guard=self.noise_guard,
            n_boot=self._n_boot,
            seed=self._seed,
            final=rung == self.final_rung,
        )

    def _judged(self, judge: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Call the rule; a MissingStatistics is kept in ``self.failure`` (the driver reports it) and raised."""
        try:
            return judge(*args, **kwargs)
        except MissingStatistics as e:
            self.failure = e
            raise

    def _at_rung(self, tc: "TuneController", st: _TrialState, rung: int, result: dict) -> str:
        """The action for trial ``st`` reporting at (or past) ``rung``."""
        done = self._by_event.get(decision_event_id(rung, st.experiment))
        if done is not None:  # decided before (a resumed run, or a winner resuming after the rung)
            return TrialScheduler.STOP if done.stopped else TrialScheduler.CONTINUE
        key = (st.track, rung)
        entry = self._entry(st, result)
        if not self.sync:
            reports = self._reports.setdefault(key, {})
            reports[st.experiment] = entry
            for name, e in reports.items():
                reports[name] = self._with_counts(e)
            leader = find_leader(reports.values(), self._mode)
            d = self._judged(judge_trial, reports[st.experiment], leader, **self._judge_kwargs(rung))
            self._emit(d)
            return TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
        if key in self._decided:  # late arrival: judged against the leader recorded at that rung
            leader = self._leader_at(key, self._decided[key])
            d = self._judged(judge_trial, self._with_counts(entry), leader, **self._judge_kwargs(rung))
            self._emit(d)
            return TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
        self._reports.setdefault(key, {})[st.experiment] = entry
        action = self._settle(tc, st.track, current=st)
        if key not in self._decided and rung != self.final_rung:
            st.waiting_at = rung
            return TrialScheduler.PAUSE
        return action  # at the final rung nothing waits: an undecided track is decided when the others end

    def _waiting_for(self, key: RungKey) -> list[str]:
        """Experiments of the track still due at this sync rung: live, not stopped, not yet reported."""
        track, rung = key
        reported = self._reports.get(key, {})
        return [
            s.experiment
            for s in self._states.values()
            if s.track == track
            and s.live
            and not s.stop_at_next_result
            and s.experiment not in reported
            and self._prior_stop(s.experiment) is None
        ]

    def _decide(self, tc: "TuneController", key: RungKey, current: _TrialState | None) -> str:
        """Decide a sync rung for the whole track; apply it to the others; return the current's action."""
        track, rung = key
        reports = self._reports.get(key, {})
        # A trial stopped at an earlier rung has no entry here: one paused by its last report at a rung that then
        # stopped it (final rung), or one whose last report came before the rungs (entered at each of them).
        for name in [n for n in reports if self._prior_stop(n) is not None]:
            del reports[name]
        for name, e in reports.items():
            reports[name] = self._with_counts(e)
        entries = list(reports.values())
        decisions, leaders = self._judged(judge_rung, entries, **self._judge_kwargs(rung))
        self._decided[key] = leaders.get(track)
        action = TrialScheduler.CONTINUE
        self._processing = True
        try:
            for d in decisions:
                st = self._states.get(self._experiment_trial.get(d.experiment, ""))
                if st is None:
                    continue
                # A trial that has ended is judged all the same (at the final rung, or at the rungs after its early
                # stop): its last value is its result. One that errored for good has no entry (see _errored_for_good).
                self._emit(d)
                st.waiting_at = None
                if st is current:
                    action = TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
                elif d.stopped and st.live:
                    self._stop_other(tc, st)
                # a PAUSED winner is now eligible in choose_trial_to_run (waiting_at is None)
        finally:
            self._processing = False
        return action

    def _stop_other(self, tc: "TuneController", st: _TrialState) -> None:
        trial = st.trial
        if trial.status in (Trial.PAUSED, Trial.PENDING) or trial.is_saving:
            tc.stop_trial(trial)
        elif trial.status == Trial.RUNNING:
            # Only the trial whose result is being processed may be stopped by our return value;
            # another running one is stopped at its next report.
            st.stop_at_next_result = True

    def _trial_gone(self, tc: "TuneController", trial: Trial) -> None:
        """A trial ended (completed, errored, stopped): stop waiting for it at any sync rung."""
        st = self._states.get(trial.trial_id)
        if st is None:
            return
        st.live = False
        st.waiting_at = None
        if self._processing or not self.sync:
            return
        self._settle(tc, st.track, current=None)

    def _settle(self, tc: "TuneController", track: str, current: _TrialState | None) -> str:
        """Decide every undecided sync rung of ``track`` that no longer waits for anyone (lowest first).

        Returns the action for ``current`` (CONTINUE unless one of its rungs stopped it). Run after each
        rung report and after each trial leaves: either can be the last thing a rung was waiting for.
        """
        action = TrialScheduler.CONTINUE
        pending = sorted((k for k in self._reports if k[0] == track and k not in self._decided), key=lambda k: k[1])
        for key in pending:
            if self._reports[key] and not self._waiting_for(key):
                if self._decide(tc, key, current) == TrialScheduler.STOP:
                    action = TrialScheduler.STOP
        return action

    def _emit(self, d: Decision) -> None:
        """Record, log and hand a decision to the ledger, once per event_id."""
        if d.event_id in self._by_event:
            return
        self._by_event[d.event_id] = d
        self.decisions.append(d)
        logger.info("TrackGapScheduler %s %s: %s", d.event_id, d.decision.upper(), d.reason)
        if self._on_decision is not None:
            self._on_decision(d)

    # ------------------------------------------------------------------ lifecycle: early stops, errors, restores
    def _reported_at(self, st: _TrialState, rung: int, result: dict) -> dict:
        """What ``st`` reported at epoch ``rung``: the rung is judged on that, not on a later report (after a
        restore, a trial's first report can be the epoch after the checkpoint it paused with)."""
        reported = result.get(self._epoch_key)
        if isinstance(reported, (int, float)) and int(reported) == rung:
            return result
        recorded = self._seen.get(st.experiment, {}).get(rung) or self._prior_reports.get(st.experiment, {}).get(rung)
        if recorded is None:
            logger.warning("TrackGapScheduler: %s has no report at %s %d; judged on its report at %s",
                           st.experiment, self._epoch_key, rung, reported)
            return result
        return recorded

    def _ended_before_rungs(self, tc: "TuneController", st: _TrialState, result: dict) -> str:
        """``st`` will not report again (early stopping): it counts at every rung still ahead of it with
        ``result``, its last value, and never pauses there. Returns STOP if one of those rungs stops it."""
        while st.next_rung < len(self.rungs):
            rung = self.rungs[st.next_rung]
            key = (st.track, rung)
            if not self.sync or key in self._decided or decision_event_id(rung, st.experiment) in self._by_event:
                action = self._at_rung(tc, st, rung, result)  # judged now (async, or a rung already decided)
            else:
                self._reports.setdefault(key, {})[st.experiment] = self._entry(st, result)
                action = self._settle(tc, st.track, current=st) if tc is not None else TrialScheduler.CONTINUE
                self._resettle = self._resettle or tc is None
            if action == TrialScheduler.STOP:
                return action
            st.next_rung += 1
        return TrialScheduler.CONTINUE

    def _errored_for_good(self, tc: "TuneController", st: _TrialState) -> None:
        """``st`` errored with its retries spent: it leaves every rung, and the rungs it led are re-judged."""
        st.live = False
        if st.experiment in self._errored:
            return
        self._errored.add(st.experiment)
        for (track, _rung), reports in self._reports.items():
            if track == st.track:
                reports.pop(st.experiment, None)
        self._rejudge_without(tc, st.track, st.experiment)

    def _rejudge_without(self, tc: "TuneController", track: str, errored: str) -> None:
        """Re-judge every rung of ``track`` that ``errored`` led, without it: a trial stopped there against it
        that now continues gets the new decision (``on_rejudge``) and restarts from its rung checkpoint."""
        for rung in sorted({d.rung for d in self.decisions if d.track == track and d.leader == errored}):
            key = (track, rung)
            entries = {n: e for n, e in self._reports.get(key, {}).items() if n not in self._errored}
            for d in self.decisions:  # decided in an earlier session: only the recorded metric is known here
                if (d.track, d.rung) == key and d.experiment not in entries and d.experiment not in self._errored:
                    entries[d.experiment] = RungEntry(d.trial_id, d.experiment, d.track, d.role,  # type: ignore[arg-type]
                                                      d.metric, epoch=d.epoch)
            entries = {n: self._with_counts(e) for n, e in entries.items()}
            leader = find_leader(entries.values(), self._mode)
            if self.sync:
                self._decided[key] = leader
            losers = [d for d in self.decisions if (d.track, d.rung) == key and d.leader == errored and d.stopped]
            for old in losers:
                entry = entries.get(old.experiment)
                if entry is None:
                    continue
                new = self._judged(judge_trial, entry, leader, **self._judge_kwargs(rung))
                if new.stopped:
                    continue
                why = f"{errored} errored for good (its retries spent), so it cannot lead"
                new = replace(new, reason=f"Re-judged without {errored}: {why}. {new.reason}")
                self._by_event[new.event_id] = new
                self.decisions = [new if d is old else d for d in self.decisions]
                logger.warning("TrackGapScheduler %s RE-JUDGED %s: %s", new.event_id, new.decision.upper(), new.reason)
                if self._on_rejudge is not None:
                    self._on_rejudge(old, new, errored)
                self._revive(tc, old.experiment, rung)

    def _revive(self, tc: "TuneController", experiment: str, rung: int) -> None:
        """Let ``experiment``, stopped at ``rung`` and re-judged to continue, go on from there."""
        st = self._states.get(self._experiment_trial.get(experiment, ""))
        if st is None:
            return
        if st.live:  # a running loser not stopped yet: it simply carries on
            st.stop_at_next_result = False
            return
        ended = rung == self.final_rung or bool((st.last_result or {}).get(self._stop_key)) or bool(
            (self._prior_reports.get(experiment, {}).get(rung) or {}).get(self._stop_key))
        if ended:  # it had finished on its own: its result stands, nothing to restart
            return
        self._restart(tc, st, rung)

    def _restart(self, tc: "TuneController", old: _TrialState, rung: int) -> None:
        """Add a new Tune trial of ``old``'s experiment that starts from ``old``'s checkpoint at ``rung``."""
        import copy

        self._revived[old.experiment] = rung
        self._superseded[old.experiment] = old
        trial = old.trial
        storage = copy.copy(trial.storage)
        storage.trial_dir_name = None  # a folder of its own (Tune names it when the trial starts)
        new = Trial(
            trial.trainable_name,
            config={**trial.config, REVIVED_KEY: int(rung)},
            storage=storage,
            evaluated_params=dict(trial.evaluated_params or {}),
            experiment_tag=f"{trial.experiment_tag}_rejudged_rung{rung}",
            placement_group_factory=trial._default_placement_group_factory,
            stopping_criterion=trial.stopping_criterion,
            checkpoint_config=trial.run_metadata.checkpoint_manager.checkpoint_config,
            export_formats=trial.export_formats,
            trial_name_creator=trial.trial_name_creator,
            trial_dirname_creator=trial.trial_dirname_creator,
            log_to_file=trial.log_to_file,
            max_failures=trial.max_failures,
        )
        start = rung_checkpoint(trial, rung, self._epoch_key)
        if start is None:
            logger.warning("TrackGapScheduler: %s has no checkpoint to restart from at rung %d: it starts over",
                           old.experiment, rung)
        else:
            new.run_metadata.checkpoint_manager._latest_checkpoint_result = start
        logger.warning("TrackGapScheduler: restarting %s from its rung-%d checkpoint as trial %s",
                       old.experiment, rung, new.trial_id)
        getattr(tc, "_tune_controller", tc).add_trial(new)

    def _reports_of(self, st: _TrialState) -> dict[int, dict[str, Any]]:
        """What ``st``'s lineage reported, by epoch, up to the checkpoint it resumes from (a restored or
        restarted trial trains again whatever came after it)."""
        merged = {**self._prior_reports.get(st.experiment, {}), **self._seen.get(st.experiment, {})}
        manager = getattr(getattr(st.trial, "run_metadata", None), "checkpoint_manager", None)
        if not st.live or manager is None:
            return merged
        latest = manager.latest_checkpoint_result
        at = (latest.metrics or {}).get(self._epoch_key) if latest is not None else 0
        if not isinstance(at, (int, float)):
            return merged
        return {e: r for e, r in merged.items() if e <= at}

    def _hold(self, st: _TrialState, stop: bool = False) -> None:
        """Keep a restored trial from starting: PAUSED at its rung, or to be stopped by choose_trial_to_run."""
        if st.trial.status in (Trial.PENDING, Trial.PAUSED):
            _set_status(st.trial, Trial.PAUSED)
            if stop:
                self._to_stop.add(st.trial.trial_id)

    def _restore_progress(self, st: _TrialState) -> None:
        """A trial added with a history (``Tuner.restore``, a restart): take it up where its reports left it.

        Rungs it had reported at and that were decided meanwhile judge it now; at the first one still open it
        waits (PAUSED) if it is unfinished; a finished trial (TERMINATED, or whose last report said so) counts at
        every rung ahead of it with its last value."""
        reports = self._reports_of(st)
        if not reports and st.live:
            return
        if self._prior_stop(st.experiment) is not None:  # judged out already: never runs again
            st.next_rung, st.final_reported = len(self.rungs), True
            if st.live:
                self._hold(st, stop=True)
            return
        last_epoch = max(reports) if reports else None
        last = reports[last_epoch] if last_epoch is not None else None
        ended = not st.live or bool(last is not None and last.get(self._stop_key))
        while st.next_rung < len(self.rungs):
            rung = self.rungs[st.next_rung]
            if decision_event_id(rung, st.experiment) in self._by_event:
                st.next_rung += 1
                continue
            if last_epoch is not None and rung <= last_epoch:
                result = reports.get(rung) or reports[min(e for e in reports if e >= rung)]
            elif ended and last is not None:
                return self._rejoin_ended(st, last)
            else:
                return  # it reports this rung when it runs
            key = (st.track, rung)
            if not self.sync or key in self._decided:
                action = self._at_rung(None, st, rung, result)  # type: ignore[arg-type]  # judged now
            else:
                self._reports.setdefault(key, {})[st.experiment] = self._entry(st, result)
                self._resettle = True
                action = TrialScheduler.PAUSE
            if action == TrialScheduler.STOP:
                if st.live:
                    self._hold(st, stop=True)
                return
            if action == TrialScheduler.PAUSE and not ended:
                st.waiting_at = rung  # waits at the rung again, without training past it first
                self._hold(st)
                return
            st.next_rung += 1
        if ended and last is not None:
            self._rejoin_ended(st, last)

    def _rejoin_ended(self, st: _TrialState, last: dict) -> None:
        """A restored trial that finished: its last value counts at every rung ahead of it, final included."""
        if self._ended_before_rungs(None, st, last) == TrialScheduler.STOP:  # type: ignore[arg-type]
            if st.live:
                self._hold(st, stop=True)
            return
        if self.final_rung is None or st.final_reported:
            return
        st.final_reported = True
        if decision_event_id(self.final_rung, st.experiment) in self._by_event:
            return
        key = (st.track, self.final_rung)
        if not self.sync or key in self._decided:
            self._at_rung(None, st, self.final_rung, last)  # type: ignore[arg-type]
        else:
            self._reports.setdefault(key, {})[st.experiment] = self._entry(st, last)
            self._resettle = True

    def _after_restore(self, tc: "TuneController") -> None:
        """Once every restored trial is added (the first choose_trial_to_run): decide the rungs they rejoined
        that wait for nobody, stop those already judged out, and restart a re-judged experiment whose new trial
        the restored snapshot lacks (the driver died before writing it)."""
        if not self._revivals_checked:
            self._revivals_checked = True
            for experiment, rung in sorted(self._revived.items()):
                current = self._states.get(self._experiment_trial.get(experiment, ""))
                if current is not None and int(current.trial.config.get(REVIVED_KEY) or 0) >= rung:
                    continue
                old = self._superseded.get(experiment) or current
                if old is not None and not old.live and hasattr(old.trial, "run_metadata"):
                    self._restart(tc, old, rung)
        for tid in sorted(self._to_stop):
            self._to_stop.discard(tid)
            st = self._states.get(tid)
            if st is not None and st.trial.status in (Trial.PAUSED, Trial.PENDING):
                tc.stop_trial(st.trial)
        if self._resettle:
            self._resettle = False
            if self.sync:
                for track in sorted({k[0] for k in self._reports}):
                    self._settle(tc, track, current=None)
