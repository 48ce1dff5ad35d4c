"""The run's progress callback: rows per (round, experiment, fold), and the running time each trial is billed
(a trial PAUSEd at a sync rung holds no resources while it waits, so the wait is not billed)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from pianoray.protocol import progress
from pianoray.protocol.progress import HOOKS, ProgressBoard, ProtocolCallback, Row, RunHooks


@dataclass
class FakeTrial:
    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"


@dataclass
class Clock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Billed:
    rows: list[tuple[str, float]] = field(default_factory=list)


@pytest.fixture
def callback(monkeypatch: pytest.MonkeyPatch):
    clock, billed = Clock(), Billed()
    monkeypatch.setattr(progress.time, "time", clock)
    board = ProgressBoard({"A1": ("audio", "candidate")})

    def on_trial_end(round_: str, row: Row, trial: Any) -> None:
        billed.rows.append((row.status, row.running_seconds(row.ended)))

    HOOKS["k"] = RunHooks(board, lambda *a: None, on_trial_end, lambda *a: None, lambda: None)
    yield ProtocolCallback("k", "round1", 10), clock, billed
    HOOKS.pop("k", None)


def test_a_trial_paused_at_a_rung_is_billed_its_running_time_only(callback) -> None:
    cb, clock, billed = callback
    trial = FakeTrial("t1", {"experiment": "A1"})
    cb.on_trial_start(0, [trial], trial)  # runs 1000 -> 1030
    trial.status = "RUNNING"
    clock.now = 1030.0
    trial.status = "PAUSED"
    cb.on_step_end(0, [trial])  # waits at the rung 1030 -> 1100
    clock.now = 1100.0
    cb.on_step_end(0, [trial])
    cb.on_trial_start(0, [trial], trial)  # resumed: runs 1100 -> 1120
    trial.status = "RUNNING"
    clock.now = 1120.0
    cb.on_trial_complete(0, [trial], trial)
    assert billed.rows == [("DONE", 50.0)]
    assert cb.board.rows[("round1", "A1", 0)].started == 1000.0  # shown from its first start


def test_a_trial_stopped_while_paused_is_not_billed_the_wait(callback) -> None:
    cb, clock, billed = callback
    trial = FakeTrial("t1", {"experiment": "A1"})
    cb.on_trial_start(0, [trial], trial)
    clock.now = 1040.0
    trial.status = "PAUSED"
    cb.on_step_end(0, [trial])
    clock.now = 1500.0  # the rung is decided much later: stopped
    cb.board.rows[("round1", "A1", 0)].status = "ELIMINATED"
    cb.on_trial_complete(0, [trial], trial)
    assert billed.rows == [("ELIMINATED", 40.0)]


def test_a_later_rounds_board_shows_only_its_rounds():
    """Round 3 draws a board of its own below Rounds 1-2's, which stays on screen (and in a log): it lists only
    Round 3's rows, so that no earlier row is printed twice."""
    board = ProgressBoard({"A1": ("audio", "candidate"), "F3": ("fusion", "candidate")})
    board.row("round1", "A1", 0), board.row("round2", "A1", 1), board.row("round3", "F3", 1)
    assert board.render().row_count == 3
    only = board.render(rounds=("round3",))
    assert only.row_count == 1 and list(only.columns[1].cells) == ["F3"]


def _report(experiment: str, fold: int, epoch: int | None = None) -> dict[str, Any]:
    if epoch is None:
        return {"experiment": experiment, "fold": fold, "final": True}
    return {"experiment": experiment, "fold": fold, "epoch": epoch, "val/pairwise_accuracy": 0.7, "train/total": 1.0}


def test_each_unit_of_a_fold_job_is_billed_from_the_previous_units_end(callback) -> None:
    """A fold job trains its units one after another (F1 then F2 on fold 0, then fold 1). Each unit is billed from
    the previous one's final report to its own, the first from the job's start: together, the job's running
    time. (A step between two units used to mark the next unit RUNNING without starting its clock: every unit but
    the first of each job was billed 0 s, two thirds of a demo run's Round-2 hours.)"""
    _, clock, billed = callback
    cb = ProtocolCallback("k", "round3", 4)
    job = FakeTrial("j1", {"experiments": ["F1", "F2"], "folds": [0, 1]}, status="RUNNING")
    cb.on_trial_start(0, [job], job)  # 1000: Train starts, then F1 fold 0 trains
    steps = [("F1", 0, 1010.0), ("F2", 0, 1030.0), ("F1", 1, 1036.0), ("F2", 1, 1050.0)]
    for name, fold, end in steps:
        clock.now += 1.0
        cb.on_step_end(0, [job])
        cb.on_trial_result(0, [job], job, _report(name, fold, epoch=1))
        clock.now = end
        cb.on_trial_result(0, [job], job, _report(name, fold))
        cb.on_step_end(0, [job])
    clock.now = 1051.0
    cb.on_trial_complete(0, [job], job)
    assert billed.rows == [("DONE", 10.0), ("DONE", 20.0), ("DONE", 6.0), ("DONE", 14.0)]


def test_a_resumed_job_bills_the_unit_it_runs_not_one_scored_before(callback) -> None:
    """Resumed, a job skips the units the ledger has scored. Their rows are DONE from the start
    (``ProgressBoard.scored_before``), so the job's start is the start of the unit it resumes."""
    _, clock, billed = callback
    cb = ProtocolCallback("k", "round3", 4)
    cb.board.scored_before("round3", "F1", 0, 4, [])
    job = FakeTrial("j1", {"experiments": ["F1", "F2"], "folds": [0]}, status="RUNNING")
    cb.on_trial_start(0, [job], job)
    clock.now = 1025.0
    cb.on_trial_result(0, [job], job, _report("F2", 0, epoch=3))
    cb.on_trial_result(0, [job], job, _report("F2", 0))
    cb.on_trial_complete(0, [job], job)
    assert billed.rows == [("DONE", 25.0)]
    assert cb.board.rows[("round3", "F1", 0)].status == "DONE"
