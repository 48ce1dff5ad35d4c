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

Durability: ``Tuner.restore`` does not restore scheduler state (ray#30838). Every decision goes to
``on_decision`` exactly once (the run's ledger) and the constructor takes ``prior_decisions`` read back
from it: a trial already stopped is stopped again at its first report, decided rungs are not decided
again (their recorded leader judges newcomers), so a resumed run makes the same decisions.

Trials must carry ``config["experiment"]`` (unique within the run: decisions are keyed by it so that
they survive new trial ids), ``config["track"]`` and optionally ``config["role"]`` ("candidate", the
default, or "reference": judged, may be stopped, never leads).

Example::

    scheduler = TrackGapScheduler(rungs=[10, 25], gap=10.0, on_decision=ledger.write,
                                  prior_decisions=ledger.read_decisions())
    tune.Tuner(trainable, param_space=..., tune_config=tune.TuneConfig(scheduler=scheduler))
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

import numpy as np
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import TrialScheduler

from pianoray.protocol.decisions import (
    ROLES,
    Decision,
    Leader,
    RungEntry,
    decision_event_id,
    find_leader,
    judge_rung,
    judge_trial,
)

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

DEFAULT_METRIC = "val/pairwise_accuracy"
PAIR_CORRECT_KEY = "val/pair_correct"
PAIR_GROUP_KEY = "val/pair_group"

RungKey = tuple[str, int]  # (track, rung epoch)


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


def _as_float(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


class TrackGapScheduler(TrialScheduler):
    """Stop trials more than ``gap`` points behind their track's best candidate at each rung.

    Args:
        metric: result key of the validation metric (pairwise accuracy in [0, 1]).
        mode: "max" (higher is better) or "min".
        rungs: strictly increasing epochs (1-based, ``result["epoch"]``) at which trials are judged.
        gap: elimination threshold in percentage points (metric * 100).
        sync: promotion-style rungs (PAUSE until the track has reported) if True, ASHA-style if False.
        noise_guard: stop only when the 95% paired-bootstrap CI of the gap lies above ``gap``
            (needs ``val/pair_correct`` and ``val/pair_group`` in the results; else the point rule).
        on_decision: called once per new decision (the durable ledger writer).
        prior_decisions: decisions read back from the ledger when resuming a run.
        n_boot, seed: bootstrap resamples and seed for the noise guard (fixed seed: reproducible).
    """

    _supports_buffered_results = False  # every report must reach us, or a rung could be skipped

    def __init__(
        self,
        metric: str | None = DEFAULT_METRIC,
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
        pair_correct_key: str = PAIR_CORRECT_KEY,
        pair_group_key: str = PAIR_GROUP_KEY,
    ) -> None:
        super().__init__()
        rungs = [int(r) for r in rungs]
        if not rungs or any(r < 1 for r in rungs) or sorted(set(rungs)) != rungs:
            raise ValueError(f"TrackGapScheduler: rungs must be strictly increasing epochs >= 1, got {rungs}")
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
        self._pair_correct_key = pair_correct_key
        self._pair_group_key = pair_group_key

        self.decisions: list[Decision] = []
        self._by_event: dict[str, Decision] = {}
        self._states: dict[str, _TrialState] = {}
        self._experiment_trial: dict[str, str] = {}
        self._reports: dict[RungKey, dict[str, RungEntry]] = {}  # experiment -> entry, per rung
        self._decided: dict[RungKey, Leader | None] = {}  # sync: rungs already decided, and their leader
        self._processing = False  # re-entrancy guard: stop_trial() calls back into on_trial_remove
        for d in prior_decisions:
            self._adopt_prior(d)

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
            # Async rungs compare with the best recorded so far: keep the recorded candidates.
            self._reports.setdefault(key, {})[d.experiment] = RungEntry(
                d.trial_id, d.experiment, d.track, "candidate", d.metric
            )

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
            self._metric = DEFAULT_METRIC
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
        other = self._experiment_trial.get(experiment)
        if other is not None and other != trial.trial_id and self._states[other].live:
            raise ValueError(
                f"TrackGapScheduler: trials {other} and {trial.trial_id} share config['experiment']={experiment!r}; "
                "decisions are keyed by experiment, so it must be unique within a run"
            )
        self._states[trial.trial_id] = _TrialState(trial, experiment, str(cfg["track"]), role)
        self._experiment_trial[experiment] = trial.trial_id

    def on_trial_result(self, tune_controller: "TuneController", trial: Trial, result: dict) -> str:
        st = self._states.get(trial.trial_id)
        if st is None:
            self.on_trial_add(tune_controller, trial)
            st = self._states[trial.trial_id]
        st.waiting_at = None  # it is running again, so it is not waiting at a rung any more
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
        while st.next_rung < len(self.rungs) and self.rungs[st.next_rung] <= epoch:
            action = self._at_rung(tune_controller, st, self.rungs[st.next_rung], result)
            if action != TrialScheduler.CONTINUE:
                return action
            st.next_rung += 1
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: "TuneController", trial: Trial, result: dict) -> None:
        self._trial_gone(tune_controller, trial)

    def on_trial_error(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._trial_gone(tune_controller, trial)

    def on_trial_remove(self, tune_controller: "TuneController", trial: Trial) -> None:
        self._trial_gone(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: "TuneController") -> Trial | None:
        """A PENDING trial first (it may be what a paused rung is waiting for), else a PAUSED trial that
        is not waiting at an undecided rung (a winner to resume). Pure read of state: idempotent."""
        trials = tune_controller.get_trials()
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        for t in trials:
            if t.status != Trial.PAUSED:
                continue
            st = self._states.get(t.trial_id)
            if st is None or (st.waiting_at is None and not st.stop_at_next_result):
                return t
        return None

    def debug_string(self) -> str:
        stopped = sum(d.stopped for d in self.decisions)
        waiting = sorted(f"{s.experiment}@{s.waiting_at}" for s in self._states.values() if s.waiting_at is not None)
        return (
            f"TrackGapScheduler ({self.mode_name}, gap {self.gap:g} points, rungs {self.rungs}): "
            f"{len(self.decisions)} decisions, {stopped} stopped; waiting: {', '.join(waiting) or 'none'}"
        )

    # ------------------------------------------------------------------ rung logic
    def _entry(self, st: _TrialState, result: dict) -> RungEntry:
        correct = result.get(self._pair_correct_key)
        groups = result.get(self._pair_group_key)
        return RungEntry(
            trial_id=st.trial.trial_id,
            experiment=st.experiment,
            track=st.track,
            role=st.role,  # type: ignore[arg-type]
            metric=_as_float(result.get(self._metric)),
            pair_correct=np.asarray(correct, dtype=np.float64) if correct is not None else None,
            pair_group=np.asarray(groups) if groups is not None else None,
        )

    def _judge_kwargs(self, rung: int) -> dict[str, Any]:
        return dict(
            rung=rung,
            gap=self.gap,
            mode=self.mode_name,
            metric_mode=self._mode,
            noise_guard=self.noise_guard,
            n_boot=self._n_boot,
            seed=self._seed,
        )

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
            d = judge_trial(entry, find_leader(reports.values(), self._mode), **self._judge_kwargs(rung))
            self._emit(d)
            return TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
        if key in self._decided:  # late arrival: judged against the leader recorded at that rung
            d = judge_trial(entry, self._decided[key], **self._judge_kwargs(rung))
            self._emit(d)
            return TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
        self._reports.setdefault(key, {})[st.experiment] = entry
        action = self._settle(tc, st.track, current=st)
        if key not in self._decided:
            st.waiting_at = rung
            return TrialScheduler.PAUSE
        return action

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
        entries = list(self._reports.get(key, {}).values())
        decisions, leaders = judge_rung(entries, **self._judge_kwargs(rung))
        self._decided[key] = leaders.get(track)
        action = TrialScheduler.CONTINUE
        self._processing = True
        try:
            for d in decisions:
                st = self._states.get(self._experiment_trial.get(d.experiment, ""))
                if st is None or not st.live:
                    continue  # ended after reporting: it still counted as a possible leader
                self._emit(d)
                st.waiting_at = None
                if st is current:
                    action = TrialScheduler.STOP if d.stopped else TrialScheduler.CONTINUE
                elif d.stopped:
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
