"""Live progress of a run: a rich table fed by a Tune callback, and the ledger writes for each report.

The Ray 2.60 dashboard has no Tune page, so per-trial progress is ours to show: trial, track, round/fold,
epoch/budget, metric, gap to the track's leader, status.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Collection, Iterable

from ray.tune import Callback
from rich.table import Table

from pianoray.protocol.trials import job_units
from pianoray.records import SELECTION_METRIC, EpochRecord


@dataclass
class Row:
    round: str
    experiment: str
    fold: int
    track: str = "?"
    role: str = "candidate"
    epoch: int = 0
    budget: int = 0
    metric: float = float("nan")
    best: float = float("nan")
    status: str = "PENDING"
    started: float = field(default_factory=time.time)
    ended: float | None = None
    # Time spent running (what holds resources): a sync rung PAUSEs a trial, which frees its CPU/GPU until the
    # rung is decided, so a trial's wall time from start to end would bill the wait. ``since``: the start of the
    # running span in progress (None while pending, paused or ended); ``ran``: the spans already closed.
    since: float | None = None
    ran: float = 0.0

    def run(self, now: float) -> None:
        """The row (re)starts running at ``now`` (a trial's start, or its resumption after a pause)."""
        if self.since is None:
            self.since = now

    def hold(self, now: float) -> None:
        """The row stops running at ``now`` (paused or ended): its span is added to ``ran``."""
        if self.since is not None:
            self.ran += max(0.0, now - self.since)
            self.since = None

    def running_seconds(self, now: float) -> float:
        return self.ran + (max(0.0, now - self.since) if self.since is not None else 0.0)


class ProgressBoard:
    """The rows of a run, keyed by (round, experiment, fold); renders the live table."""

    def __init__(self, tracks: dict[str, tuple[str, str]]) -> None:
        self.tracks = tracks  # experiment -> (track, role)
        self.rows: dict[tuple[str, str, int], Row] = {}

    def row(self, round_: str, experiment: str, fold: int) -> Row:
        key = (round_, experiment, fold)
        if key not in self.rows:
            track, role = self.tracks.get(experiment, ("?", "candidate"))
            self.rows[key] = Row(round_, experiment, fold, track, role)
        return self.rows[key]

    def scored_before(self, round_: str, experiment: str, fold: int, budget: int, epochs: Iterable[Any]) -> Row:
        """The row of a unit scored in an earlier session (``epochs``: its ledger epoch events): DONE from the
        start, with its last epoch and best validation figure. Ended, it is never taken for the unit a resumed job
        is running (:meth:`ProtocolCallback._row`), so that unit's time is billed to it."""
        row = self.row(round_, experiment, fold)
        row.status, row.ended, row.budget = "DONE", row.started, budget
        for e in sorted(epochs, key=lambda e: e.data.epoch):
            row.epoch = e.data.epoch
            value = e.data.metrics.get(SELECTION_METRIC)
            if isinstance(value, (int, float)) and math.isfinite(value):
                row.metric = float(value)
                row.best = row.metric if math.isnan(row.best) else max(row.best, row.metric)
        return row

    def leader(self, round_: str, track: str) -> float:
        best = [r.best for r in self.rows.values() if r.round == round_ and r.track == track
                and r.role == "candidate" and not math.isnan(r.best)]
        return max(best) if best else float("nan")

    def render(self, title: str = "pianoray", rounds: Collection[str] | None = None) -> Table:
        """The table of the rows of ``rounds`` (default: every row). A later round's board names only its own
        rounds: the earlier rounds' board is already on screen (or in the log) above it."""
        table = Table(title=title, expand=False)
        for col in ("round", "trial", "track", "fold", "epoch", "pairwise", "best", "gap to leader", "status"):
            table.add_column(col, justify="right" if col not in ("trial", "track", "status", "round") else "left")
        rows = [r for r in self.rows.values() if rounds is None or r.round in rounds]
        for r in sorted(rows, key=lambda r: (r.round, r.track, r.experiment, r.fold)):
            lead = self.leader(r.round, r.track)
            gap = (lead - r.best) * 100 if not (math.isnan(lead) or math.isnan(r.best)) else float("nan")
            style = {"ELIMINATED": "red", "ERROR": "red", "DONE": "green", "PAUSED": "yellow"}.get(r.status, "")
            table.add_row(
                r.round, r.experiment + (" (ref)" if r.role == "reference" else ""), r.track, str(r.fold),
                f"{r.epoch}/{r.budget}", _pct(r.metric), _pct(r.best),
                "-" if math.isnan(gap) else f"{gap:.1f} pts", f"[{style}]{r.status}[/{style}]" if style else r.status,
            )
        return table


def _pct(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f}%"


@dataclass
class RunHooks:
    """What the driver does with each report. Registered in :data:`HOOKS` under a run key, because Tune
    pickles its callbacks and scheduler into the experiment state: those hold only the key."""

    board: ProgressBoard
    on_epoch: Callable[[str, str, int, int, dict[str, Any], dict[str, Any]], None]
    on_trial_end: Callable[[str, Row, Any], None]
    on_final: Callable[[str, str, int, dict[str, Any]], None]
    refresh: Callable[[], None]
    on_decision: Callable[[Any], None] | None = None
    on_rejudge: Callable[[Any, Any, str], None] | None = None  # (previous, new decision, errored leader)


HOOKS: dict[str, RunHooks] = {}


class ProtocolCallback(Callback):
    """Driver-side Tune callback: every report becomes a ledger epoch event and a table update.

    Round-1 trials report epochs directly; Round-2 fold trainables forward their Train workers' reports
    (``TuneReportCallback``), each fold ending with one ``final`` report holding its test metrics. A fold job
    may run several (experiment, fold) units in sequence (``round2.fold_jobs``; Round 3's fusions): its reports
    name their experiment and fold, each unit is a row of its own, and a unit's row ends (and is billed, from
    the previous unit's end) at its final report.
    """

    def __init__(self, run_key: str, round_: str, budget: int) -> None:
        self.run_key = run_key
        self.round = round_
        self.budget = budget

    @property
    def hooks(self) -> RunHooks:
        return HOOKS[self.run_key]

    @property
    def board(self) -> ProgressBoard:
        return self.hooks.board

    def refresh(self) -> None:
        self.hooks.refresh()

    @staticmethod
    def _units(trial: Any) -> list[tuple[str, int]]:
        """The (experiment, fold) rows of a trial, in the order it runs them: a fold job's units
        (``trials.job_units``), or a Round-1 trial's one."""
        cfg = trial.config
        if "experiments" in cfg:
            return job_units(cfg)
        return [(cfg["experiment"], int(cfg.get("fold", 0)))]

    def _row(self, trial: Any, unit: tuple[str, int] | None = None) -> Row:
        """The row of ``unit`` (default: the trial's current one: its first unit whose row has not ended)."""
        if unit is None:
            units = self._units(trial)
            unit = next((u for u in units if self._open(u)), units[-1])
        row = self.board.row(self.round, *unit)
        row.budget = self.budget
        return row

    def _open(self, unit: tuple[str, int]) -> bool:
        row = self.board.rows.get((self.round, *unit))
        return row is None or row.ended is None

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        """A trial's actor started: its first start, or its resumption after a pause or a retry."""
        row = self._row(trial)
        now = time.time()
        if row.status == "PENDING":
            row.started = now
        row.status = "RUNNING"
        row.run(now)
        self.refresh()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        unit = (str(result["experiment"]), int(result["fold"])) if "fold" in result and "experiment" in result else None
        row = self._row(trial, unit)
        if row.status == "PENDING":  # the next unit of a multi-unit job: it starts where the previous ended
            ended = [r.ended for r in self._trial_rows(trial) if r.ended is not None]
            row.status, row.started = "RUNNING", max(ended, default=row.started)
            row.run(row.started)
        if result.get("final"):
            self.hooks.on_final(self.round, row.experiment, row.fold, result)
            if len(self._units(trial)) > 1:
                self._end_row(row, trial, "DONE")
                self._start_next(trial, row)
        elif EpochRecord.is_report(result):
            row.epoch = int(result["epoch"])
            row.metric = float(result[SELECTION_METRIC])
            if result.get("best_metric") is not None:
                row.best = float(result["best_metric"])
            metrics = EpochRecord.ledger_fields(result)
            self.hooks.on_epoch(self.round, row.experiment, row.fold, row.epoch, metrics,
                                {"trial": trial.trial_id})
        self.refresh()

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        now = time.time()
        for trial in trials:
            row = self._row(trial)
            if row.status == "PENDING":  # not started (a job's next unit starts at its report): nothing to bill
                continue
            if trial.status in ("PAUSED", "RUNNING") and row.status not in ("ELIMINATED", "DONE", "ERROR"):
                row.status = trial.status
            if trial.status == "PAUSED":
                row.hold(now)
        self.refresh()

    def _start_next(self, trial: Any, ended: Row) -> None:
        """A multi-unit job's next unit runs from the moment ``ended`` (its previous unit) ended: the job goes
        straight on to it, so its running time (loading, its epochs, its scoring) is billed to it from there."""
        row = self._row(trial)
        if row is not ended and row.status == "PENDING":
            row.status, row.started = "RUNNING", ended.ended
            row.run(row.started)

    def _trial_rows(self, trial: Any) -> list[Row]:
        return [r for u in self._units(trial) if (r := self.board.rows.get((self.round, *u)))]

    def _end_row(self, row: Row, trial: Any, status: str) -> None:
        if row.ended is None:
            row.ended = time.time()
        row.hold(row.ended)
        row.status = status
        self.hooks.on_trial_end(self.round, row, trial)

    def _end(self, trial: Any, status: str) -> None:
        if len(self._units(trial)) == 1:
            self._end_row(self._row(trial), trial, status)
        else:  # a multi-unit job: its scored units ended at their final reports; the one it stopped in ends now
            for row in self._trial_rows(trial):
                if row.status not in ("DONE", "ERROR"):
                    self._end_row(row, trial, status)
        self.refresh()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The scheduler's decision callback marks eliminated rows before Ray completes the trial.
        self._end(trial, "ELIMINATED" if self._row(trial).status == "ELIMINATED" else "DONE")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._end(trial, "ERROR")
