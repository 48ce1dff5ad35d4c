"""Round-1 trial lifecycle without a cluster: errored leaders, restored and early-stopped trials, the ledger's
re-judgements and rung reports, and Tune's checkpoint list re-read from storage.

The fake controller (tests/protocol/fake_tune.py) does what Ray's TuneController does; the real-Tuner
versions of these scenarios are in tests/protocol/test_resume_decisions.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ray.train import Checkpoint, CheckpointConfig
from ray.train._internal.session import _TrainingResult
from ray.train._internal.storage import StorageContext
from ray.tune.experiment import Trial

from pianoray.protocol.checkpoints import reconcile_trial_checkpoints, rung_checkpoint
from pianoray.protocol.decisions import Decision
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.run import round1_history
from pianoray.protocol.scheduler import TrackGapScheduler
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.view import RunView
from pianoray.records import SELECTION_METRIC
from tests.protocol.fake_tune import CONTINUE, PAUSE, STOP, FakeController

METRIC = SELECTION_METRIC


class FakeTrial:
    def __init__(self, experiment: str, track: str = "audio", status: str = Trial.PENDING, **config):
        self.trial_id = f"id-{experiment}-{config.get('revived_at', 0)}"
        self.config = {"experiment": experiment, "track": track, "role": "candidate", **config}
        self.status = status
        self.is_saving = False
        self.retries_left = False

    def should_recover(self) -> bool:
        return self.retries_left

    def __repr__(self) -> str:
        return self.config["experiment"]


def scheduler(**kw) -> tuple[TrackGapScheduler, list[Decision], list[tuple]]:
    log: list[Decision] = []
    rejudged: list[tuple] = []
    sched = TrackGapScheduler(metric=METRIC, rungs=kw.pop("rungs", [5]), on_decision=log.append,
                              on_rejudge=lambda old, new, errored: rejudged.append((old, new, errored)), **kw)
    return sched, log, rejudged


def verdicts(decisions, rung=None) -> dict[str, str]:
    return {d.experiment: d.decision for d in decisions if rung is None or d.rung == rung}


# ---------------------------------------------------------------------------------------------- errored leaders
def test_errored_leader_is_dropped_and_its_losers_rejudged_and_restarted(monkeypatch):
    sched, log, rejudged = scheduler(rungs=[5, 10])
    restarted: list[tuple[str, int]] = []
    monkeypatch.setattr(sched, "_restart", lambda tc, st, rung: restarted.append((st.experiment, rung)))
    t = {n: FakeTrial(n) for n in ("A1", "A2", "A3", "A4")}
    tc = FakeController(sched, list(t.values()))
    tc.report(t["A1"], 5, 0.90)
    tc.report(t["A2"], 5, 0.76)
    tc.report(t["A4"], 5, 0.60)
    t["A2"].status = Trial.RUNNING  # its pause not applied yet: stopped at its next report
    assert tc.report(t["A3"], 5, 0.74) == STOP
    assert verdicts(log) == {"A1": "continue", "A2": "stop", "A3": "stop", "A4": "stop"}
    assert t["A3"].status == Trial.TERMINATED and t["A4"].status == Trial.TERMINATED
    tc.resumable()

    tc.error(t["A1"])  # retries spent
    # Without A1, A2 leads rung 5; A3 is 2 points behind (continues), A4 16 (still stopped).
    assert [(o.experiment, o.decision, n.decision, n.leader, e) for o, n, e in rejudged] == [
        ("A2", "stop", "continue", "A2", "A1"), ("A3", "stop", "continue", "A2", "A1")]
    assert all("Re-judged without A1: A1 errored for good" in n.reason for _, n, _ in rejudged)
    assert verdicts(sched.decisions) == {"A1": "continue", "A2": "continue", "A3": "continue", "A4": "stop"}
    # on_decision saw each decision once, as first taken; the re-judgement went to on_rejudge.
    assert verdicts(log) == {"A1": "continue", "A2": "stop", "A3": "stop", "A4": "stop"} and len(log) == 4
    # A3 had ended: it restarts from its rung; A2 was still running: it simply carries on.
    assert restarted == [("A3", 5)]
    assert tc.report(t["A2"], 6, 0.77) == CONTINUE
    # Late arrivals at rung 5 are judged against the new leader.
    late = FakeTrial("A5")
    tc.add(late)
    assert tc.report(late, 5, 0.70) == CONTINUE and sched._by_event["rung5:A5"].leader == "A2"


def test_errored_trial_never_leads_a_rung_it_reported_at_before_the_decision():
    sched, log, _ = scheduler()
    t = {n: FakeTrial(n) for n in ("A1", "A2", "A3")}
    tc = FakeController(sched, list(t.values()))
    tc.report(t["A1"], 5, 0.90)
    t["A1"].status = Trial.RUNNING  # e.g. still saving its pause checkpoint when it fails
    tc.error(t["A1"])
    tc.report(t["A2"], 5, 0.70)
    assert tc.report(t["A3"], 5, 0.65) == CONTINUE
    assert verdicts(log) == {"A2": "continue", "A3": "continue"} and log[0].leader == "A2"


def test_a_retried_trial_keeps_its_place_at_the_rung():
    sched, log, rejudged = scheduler()
    t = {n: FakeTrial(n) for n in ("A1", "A2")}
    tc = FakeController(sched, list(t.values()))
    assert tc.report(t["A1"], 5, 0.80) == PAUSE
    tc.error(t["A2"], retry=True)  # Tune retries it: the rung still waits for it
    assert log == [] and tc.resumable() == {"A2"}
    assert tc.report(t["A2"], 5, 0.60) == STOP and verdicts(log) == {"A1": "continue", "A2": "stop"}
    assert rejudged == []


# ---------------------------------------------------------------------------------------------- early stopping
def test_trial_stopped_early_before_a_rung_is_judged_there_on_its_last_value():
    sched, log, _ = scheduler(rungs=[5, 10])
    t = {n: FakeTrial(n) for n in ("A1", "A2", "A3")}
    tc = FakeController(sched, list(t.values()))
    assert tc.report(t["A1"], 3, 0.60, stop=True) == CONTINUE  # patience: its last report, never paused
    tc.complete(t["A1"])
    assert tc.report(t["A3"], 3, 0.95, stop=True) == CONTINUE  # the best candidate, finished early: it leads
    tc.complete(t["A3"])
    assert tc.report(t["A2"], 5, 0.80) == STOP
    assert verdicts(log, 5) == {"A1": "stop", "A2": "stop", "A3": "continue"}
    by = {d.experiment: d for d in log}
    assert by["A1"].metric == 0.60 and by["A1"].leader == "A3" and by["A2"].leader == "A3"
    # Rung 10: only A3 is left; A1, stopped at rung 5, is not judged there again.
    assert verdicts(log, 10) == {"A3": "continue"}


def test_async_trial_stopped_early_is_judged_at_once_at_the_rungs_ahead():
    sched, log, _ = scheduler(rungs=[5, 10], sync=False)
    t = {n: FakeTrial(n) for n in ("A1", "A2")}
    tc = FakeController(sched, list(t.values()))
    tc.report(t["A2"], 5, 0.80)
    assert tc.report(t["A1"], 4, 0.60, stop=True) == STOP
    assert [(d.rung, d.experiment, d.decision) for d in log] == [(5, "A2", "continue"), (5, "A1", "stop")]


# ---------------------------------------------------------------------------------------------- restored trials
def reports(*epochs: tuple[int, float], stop_at: int | None = None, trial: str = "old") -> dict[int, dict]:
    return {e: {"epoch": e, METRIC: m, "stop": e == stop_at, "trial_id": trial} for e, m in epochs}


def test_restored_finished_trial_never_blocks_a_rung_and_is_judged_on_its_last_value():
    prior = {"A1": reports((1, 0.5), (2, 0.55), stop_at=2), "A2": reports((1, 0.7), (2, 0.7))}
    sched, log, _ = scheduler(rungs=[4], prior_reports=prior)
    a1, a2 = FakeTrial("A1", status=Trial.TERMINATED), FakeTrial("A2")
    tc = FakeController(sched, [a1, a2])
    assert tc.resumable() == {"A2"}
    tc.report(a2, 3, 0.70)
    assert tc.report(a2, 4, 0.70) == CONTINUE  # nobody else due: decided at once
    assert verdicts(log) == {"A1": "stop", "A2": "continue"}
    assert {d.experiment: d.metric for d in log} == {"A1": 0.55, "A2": 0.70}


def test_restored_trial_waits_again_at_the_undecided_rung_it_had_reported_at():
    # A1 had reported rung 4 (0.58) and was waiting there when the driver died; A2 had not reached it.
    prior = {"A1": reports(*[(e, 0.58) for e in range(1, 5)]), "A2": reports((1, 0.7), (2, 0.7))}
    sched, log, _ = scheduler(rungs=[4], prior_reports=prior)
    a1, a2 = FakeTrial("A1"), FakeTrial("A2")
    tc = FakeController(sched, [a1, a2])
    assert a1.status == Trial.PAUSED  # held at the rung: it does not train past it first
    assert tc.resumable() == {"A2"}
    assert tc.report(a2, 4, 0.70) == CONTINUE
    assert verdicts(log) == {"A1": "stop", "A2": "continue"} and a1.status == Trial.TERMINATED
    assert {d.experiment: d.metric for d in log}["A1"] == 0.58  # the rung epoch's value, from the ledger


def test_restored_trial_whose_rung_was_decided_meanwhile_is_judged_at_once_and_never_started():
    prior = [Decision(4, "old-A2", "A2", "audio", 0.70, "A2", 0.70, 0.0, "continue", "leads", "sync", "rung4:A2")]
    reps = {"A1": reports(*[(e, 0.55) for e in range(1, 5)])}
    sched, log, _ = scheduler(rungs=[4], prior_decisions=prior, prior_reports=reps)
    a1 = FakeTrial("A1")
    tc = FakeController(sched, [a1])
    assert verdicts(log) == {"A1": "stop"} and log[0].leader == "A2"
    assert tc.resumable() == set() and a1.status == Trial.TERMINATED


def test_revived_trial_in_an_earlier_session_supersedes_the_trial_it_restarted_from():
    prior = [Decision(4, "t2", "A2", "audio", 0.76, "A2", 0.76, 0.0, "continue", "Re-judged", "sync", "rung4:A2")]
    sched, log, _ = scheduler(rungs=[4], prior_decisions=prior, revived={"A2": 4}, errored={"A1"},
                              prior_reports={"A2": reports(*[(e, 0.76) for e in range(1, 5)])})
    old, new = FakeTrial("A2"), FakeTrial("A2", revived_at=4)
    tc = FakeController(sched, [old, new])  # snapshot lag: the old one comes back unfinished
    assert old.status == Trial.TERMINATED and tc.resumable() == {"A2"}
    assert tc.report(new, 5, 0.77) == CONTINUE


# ---------------------------------------------------------------------------------------------- ledger
def test_ledger_rejudged_decisions_and_rung_reports(tmp_path):
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    stop = Decision(3, "t2", "A2", "audio", 0.76, "A1", 0.90, 14.0, "stop", "14 points behind", "sync", "rung3:A2")
    ledger.decision(stop, round="round1")
    for e in (1, 2, 3):
        ledger.epoch("round1", "A2", 0, e, {METRIC: 0.7 + e / 100, "rung_epoch": max(0, e - 1)}, trial="t2")
    assert RunView.read(ledger).experiments["A2"].status == "eliminated"
    new = Decision(3, "t2", "A2", "audio", 0.76, "A2", 0.76, 0.0, "continue", "Re-judged without A1", "sync", "rung3:A2")
    ledger.rejudged(stop, new, "A1", round="round1")
    ledger.rejudged(stop, new, "A1", round="round1")  # idempotent

    assert [e.payload["decision"] for e in ledger.decisions("round1", as_decided=True)] == ["stop"]
    [now] = ledger.decisions("round1")
    assert now.event_id == "decision/round1/rung3:A2" and now.payload["decision"] == "continue"
    assert Decision.from_dict(now.payload) == new
    [r] = ledger.rejudgements("round1")
    assert r.payload["errored"] == "A1" and r.payload["previous"]["decision"] == "stop"
    state = RunView.read(ledger)
    assert state.experiments["A2"].status == "running"
    assert [(d["decision"], d["rejudged"]["errored"]) for d in state.decisions] == [("continue", "A1")]

    assert {e: r[METRIC] for e, r in ledger.rung_reports("round1")["A2"].items()} == {1: 0.71, 2: 0.72, 3: 0.73}
    by_rung = ledger.rung_reports("round1", key="rung_epoch")["A2"]
    assert {e: (r["epoch"], r["trial_id"]) for e, r in by_rung.items()} == {0: (1, "t2"), 1: (2, "t2"), 2: (3, "t2")}

    history = round1_history(ledger, fold=0, epoch_key="rung_epoch")
    assert history.errored == {"A1"} and history.revived == {"A2": 3} and history.eliminated == {}
    assert [d.decision for d in history.decisions] == ["continue"]


# ---------------------------------------------------------------------------------------------- checkpoints
def _stub_trial(tmp_path: Path, known: list[int], index: int) -> Trial:
    """A trial as Tune restores it from a lagging snapshot: its manager lists ``known`` checkpoints."""
    trial = Trial("stub", stub=True, checkpoint_config=CheckpointConfig(num_to_keep=2))
    trial.storage = StorageContext(str(tmp_path / "storage"), "exp", trial_dir_name="trial_0")
    folder = Path(trial.storage.trial_fs_path)
    manager = trial.run_metadata.checkpoint_manager
    for i in known:
        manager._checkpoint_results.append(
            _TrainingResult(Checkpoint(str(folder / f"checkpoint_{i:06d}")), {"epoch": i + 1}))
    manager._latest_checkpoint_result = manager._checkpoint_results[-1]
    trial.storage.current_checkpoint_index = index
    return trial


def _write_checkpoint(folder: Path, index: int, epoch: int, complete: bool = True) -> None:
    d = folder / f"checkpoint_{index:06d}"
    d.mkdir(parents=True)
    (d / "state.json").write_text("{}")
    if complete:
        (d / "metrics.json").write_text(json.dumps({"epoch": epoch, "rung_epoch": epoch}))


def test_checkpoint_list_reread_from_storage_after_a_lagging_snapshot(tmp_path):
    # The snapshot lists checkpoints 0 and 1; the dead driver had registered 2 and 3 and deleted 0 and 1.
    trial = _stub_trial(tmp_path, known=[0, 1], index=1)
    folder = Path(trial.storage.trial_fs_path)
    for i in (2, 3):
        _write_checkpoint(folder, i, epoch=i + 1)
    _write_checkpoint(folder, 4, epoch=5, complete=False)  # half-copied when the driver died
    manager = trial.run_metadata.checkpoint_manager

    stale = _stub_trial(tmp_path / "stale", known=[0, 1], index=1)
    _write_checkpoint(Path(stale.storage.trial_fs_path), 2, epoch=3)
    with pytest.raises(FileNotFoundError, match="Path not found"):  # what Tune does without the re-read
        stale.run_metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(Checkpoint(str(Path(stale.storage.trial_fs_path) / "checkpoint_000002")), {"epoch": 3}))

    assert reconcile_trial_checkpoints(trial) is True
    assert [Path(r.checkpoint.path).name for r in manager._checkpoint_results] == [
        "checkpoint_000004", "checkpoint_000002", "checkpoint_000003"]
    assert Path(trial.checkpoint.path).name == "checkpoint_000003" and manager.latest_checkpoint_result.metrics["epoch"] == 4
    assert trial.storage.current_checkpoint_index == 4  # the next report writes checkpoint_000005
    assert reconcile_trial_checkpoints(trial) is False  # idempotent

    _write_checkpoint(folder, 5, epoch=5)
    manager.register_checkpoint(_TrainingResult(Checkpoint(str(folder / "checkpoint_000005")), {"epoch": 5}))
    assert sorted(p.name for p in folder.glob("checkpoint_*")) == ["checkpoint_000003", "checkpoint_000005"]
    assert Path(rung_checkpoint(trial, 4, "rung_epoch").checkpoint.path).name == "checkpoint_000003"
    assert Path(rung_checkpoint(trial, 9, "rung_epoch").checkpoint.path).name == "checkpoint_000005"
