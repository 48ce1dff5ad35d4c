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
