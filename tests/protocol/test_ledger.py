import dataclasses
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from pianoray.protocol.ledger import (
    Event,
    Ledger,
    sanitise_event_id,
)
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.view import RunView
from pianoray.records import SELECTION_METRIC
from tests.protocol.s3server import moto_s3, moto_server  # noqa: F401  (pytest fixtures)


class Clock:
    """Scripted wall clock: each call advances by one second."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        self.t += 1.0
        return self.t


@pytest.fixture
def storage(tmp_path):
    return RunStorage(tmp_path, "run", fsync=False)


@pytest.fixture
def ledger(storage):
    return Ledger(storage, now=Clock())


def test_sanitised_ids_are_safe_and_distinct():
    assert sanitise_event_id("epoch/round1/S1/fold0/e0007") == "epoch~round1~S1~fold0~e0007"
    ids = ["a/b", "a~b", "a b", "a%20b", ".hidden", "é/x", "x" * 400, "x" * 399 + "y"]
    names = [sanitise_event_id(i) for i in ids]
    assert len(set(names)) == len(ids)
    for n in names:
        assert "/" not in n and not n.startswith(".") and len(n) <= 180


def test_epoch_event_is_stored_under_its_kind(ledger, storage):
    e = ledger.epoch("round1", "S1", 0, 7, {SELECTION_METRIC: 0.61, "val/r2": np.float32(0.25)})
    assert e.event_id == "epoch/round1/S1/fold0/e0007"
    assert storage.list("ledger") == ["ledger/events/epoch/epoch~round1~S1~fold0~e0007.json"]
    (back,) = Ledger(storage).events()
    assert back == e
    assert back.payload["metrics"]["val/r2"] == pytest.approx(0.25)


def test_append_is_idempotent(storage):
    first = Ledger(storage, now=Clock(0))
    e = first.epoch("round1", "A1", 0, 3, {SELECTION_METRIC: 0.5})
    # The same event re-appended, by this writer and by a fresh (resumed) one with another time: one event.
    assert first.append(e) is False
    again = Ledger(storage, now=Clock(5000)).epoch("round1", "A1", 0, 3, {SELECTION_METRIC: 0.9})
    assert again.event_id == e.event_id
    events = Ledger(storage).events()
    assert len(events) == 1 and events[0].payload["metrics"][SELECTION_METRIC] == 0.5


def test_events_are_ordered_by_time_then_id(storage):
    led = Ledger(storage)
    for eid, t in [("trial/b", 5.0), ("trial/a", 5.0), ("trial/c", 1.0)]:
        led.append(Event(event_id=eid, kind="trial", time=t, payload={"trial": eid[-1], "state": "started"}))
    led.append(Event(event_id="round/r1/started", kind="round", time=3.0, round="r1"))
    assert [e.event_id for e in Ledger(storage).events()] == ["trial/c", "round/r1/started", "trial/a", "trial/b"]
    assert [e.event_id for e in Ledger(storage).events("trial")] == ["trial/c", "trial/a", "trial/b"]
    assert Ledger(storage).events("epoch") == []


def test_payloads_are_typed_by_kind(storage, tmp_path):
    """records.PAYLOADS: a payload missing a field its kind's readers rely on is refused when built and when
    read back (naming the file); fields a newer writer adds are kept; a kind without a type is free-form."""
    with pytest.raises(ValueError, match="amount_hours"):
        Event(event_id="resources/x", kind="resources", time=1.0, payload={"trial": "t", "resource": "cpu"})
    ok = Event(event_id="epoch/round1/S1/fold0/e0001", kind="epoch", time=1.0,
               payload={"epoch": 1, "metrics": {}, "from_a_newer_writer": 3})
    assert ok.payload["from_a_newer_writer"] == 3
    Event(event_id="note/x", kind="note", time=1.0, payload={"anything": True})
    bad = storage.local_dir() / "ledger" / "events" / "fold" / "fold~S1~fold0.json"
    bad.parent.mkdir(parents=True)
    bad.write_text('{"event_id": "fold/S1/fold0", "kind": "fold", "time": 1.0, "payload": {"pair_counts": {}}}')
    with pytest.raises(ValueError, match=r"(?s)fold~S1~fold0\.json: not a valid ledger event.*payload\.test: Field required"):
        Ledger(storage).events()


def test_compacted_and_loose_events_merge_without_duplicates(storage):
    led = Ledger(storage, now=Clock())
    for ep in range(5):
        led.epoch("round1", "S1", 0, ep, {SELECTION_METRIC: 0.5 + ep / 100})
    led.round_finished("round1", {"promoted": ["S1"]})
    assert led.compact("round1") == "ledger/compacted/round1.parquet"
    led.epoch("round2", "S1", 1, 0, {SELECTION_METRIC: 0.7})  # after compaction: loose only
    led.epoch("round1", "S1", 0, 4, {SELECTION_METRIC: 0.0})  # duplicate id: no-op
    fresh = Ledger(storage)
    ids = [e.event_id for e in fresh.events()]
    assert len(ids) == len(set(ids)) == 7
    assert ids[-1] == "epoch/round2/S1/fold1/e0000"
    # Events that exist only in the parquet (loose objects lost or pruned) are still read.
    for rel in storage.list("ledger/events/epoch"):
        if "round1" in rel:
            storage.delete(rel)
    assert [e.event_id for e in Ledger(storage).events("epoch")] == [
        *(f"epoch/round1/S1/fold0/e{ep:04d}" for ep in range(5)),
        "epoch/round2/S1/fold1/e0000",
    ]
    assert Ledger(storage).is_round_finished("round1")


def test_loose_objects_covered_by_compaction_are_not_read(storage, monkeypatch):
    led = Ledger(storage, now=Clock())
    for ep in range(4):
        led.epoch("round1", "A2", 0, ep, {})
    led.compact("round1")
    led.epoch("round1", "A2", 0, 4, {})
    reads: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda rel: reads.append(rel) or real(rel))
    assert len(Ledger(storage).events()) == 5
    assert reads == ["ledger/compacted/round1.parquet", "ledger/events/epoch/epoch~round1~A2~fold0~e0004.json"]


def test_a_reader_sees_later_appends_and_reads_only_new_objects(storage, monkeypatch):
    writer, reader = Ledger(storage, now=Clock()), Ledger(storage)
    writer.round_started("round1")
    assert len(reader.events()) == 1
    writer.epoch("round1", "S2", 0, 0, {})
    reads: list[str] = []
    real = storage.read_bytes
    monkeypatch.setattr(storage, "read_bytes", lambda rel: reads.append(rel) or real(rel))
    assert len(reader.events()) == 2
    assert reads == ["ledger/events/epoch/epoch~round1~S2~fold0~e0000.json"]


def test_two_concurrent_writers_lose_nothing(storage):
    def write(experiment: str) -> None:
        led = Ledger(storage)
        for ep in range(100):
            led.epoch("round1", experiment, 0, ep, {SELECTION_METRIC: ep / 100})
            led.epoch("round1", "shared", 0, ep, {})  # both write the same ids too

    threads = [threading.Thread(target=write, args=(x,)) for x in ("A1", "S1")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    led = Ledger(storage)
    assert len(led.epochs("A1")) == len(led.epochs("S1")) == len(led.epochs("shared")) == 100
    assert len(led.events()) == 300


def test_two_writer_processes(storage, tmp_path):
    script = (
        "import sys; from pianoray.protocol.storage import RunStorage; from pianoray.protocol.ledger import Ledger\n"
        "led = Ledger(RunStorage(sys.argv[1], 'run', fsync=False))\n"
        "for ep in range(50): led.epoch('round1', sys.argv[2], 0, ep, {})\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(tmp_path), x]) for x in ("A3", "S3")]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]
    led = Ledger(storage)
    assert len(led.epochs("A3")) == len(led.epochs("S3")) == 50


def test_partially_written_tmp_file_is_never_an_event(ledger, storage):
    ledger.round_started("round1")
    folder = storage.local_dir() / "ledger" / "events" / "epoch"
    folder.mkdir(parents=True)
    (folder / ".tmp-0123-epoch~round1~S1~fold0~e0000.json").write_bytes(b'{"event_id": "epoch/rou')
    assert [e.kind for e in Ledger(storage).events()] == ["round"]


def test_corrupt_event_object_is_an_error_naming_the_file(ledger, storage):
    ledger.round_started("round1")
    bad = storage.local_dir() / "ledger" / "events" / "round" / "broken.json"
    bad.write_text('{"event_id": "x"}')
    with pytest.raises(ValueError, match="broken.json"):
        Ledger(storage).events()


def test_event_validation():
    with pytest.raises(ValueError, match="kind"):
        Event(event_id="x", kind="Epoch!", time=0)
    with pytest.raises(ValueError, match="event_id"):
        Event(event_id=" ", kind="epoch", time=0)
    with pytest.raises(TypeError, match="object"):
        Event(event_id="x", kind="epoch", time=0, payload={"v": object()})
    with pytest.raises(ValueError):
        Event(event_id="x", kind="epoch", time=0, extra=1)


def test_scheduler_decisions_round_trip(ledger):
    from pianoray.protocol.decisions import Decision, decision_event_id

    stop = Decision(rung=4, trial_id="t1", experiment="S1", track="symbolic", metric=float("nan"), leader="S2",
                    leader_metric=0.7, gap_points=None, decision="stop", reason="metric is NaN", mode="sync",
                    event_id=decision_event_id(4, "S1"), gap_ci=(10.5, 12.0))
    e = ledger.decision(stop, round="round1")
    assert e.event_id == "decision/round1/rung4:S1" and e.round == "round1" and e.experiment == "S1"
    assert ledger.decision(stop, round="round1").time == e.time + 1  # a new Event object, but not stored
    ledger.decision(stop, round="optuna")  # the same rung in another round is another event
    fresh = Ledger(ledger.storage)
    (back,) = fresh.decisions("round1")
    again = Decision.from_dict(back.payload)
    assert again.event_id == stop.event_id and again.gap_ci == stop.gap_ci and again.metric != again.metric
    assert len(fresh.decisions()) == 2
    assert RunView.read(fresh).experiments["S1"].status == "eliminated"


def test_decision_from_plain_dicts_and_dataclasses(ledger):
    @dataclasses.dataclass
    class Plain:
        rung: int
        experiment: str
        action: str

    assert ledger.decision({"rung": 2, "experiment": "A1", "action": "continue"}).event_id == "decision/rung2:A1"
    assert ledger.decision(Plain(3, "A1", "promote")).event_id == "decision/rung3:A1"
    assert ledger.decision({"event_id": "custom-1", "round": "r9", "action": "pause"}).event_id == "decision/r9/custom-1"
    with pytest.raises(ValueError, match="rung"):
        ledger.decision({"experiment": "A1"})
    with pytest.raises(TypeError):
        ledger.decision(42)
    assert [x.event_id for x in ledger.decisions()] == ["decision/rung2:A1", "decision/rung3:A1", "decision/r9/custom-1"]
    assert [x.event_id for x in ledger.decisions("r9")] == ["decision/r9/custom-1"]
    assert RunView.read(ledger).experiments["A1"].status == "promoted"


def test_readers(ledger):
    assert ledger.selected() is None and not ledger.is_round_finished("round1")
    for fold in (0, 1):
        for ep in range(3):
            ledger.epoch("round2", "A1", fold, ep + fold, {})
    assert ledger.last_epoch("round2", "A1", 1) == 3
    assert ledger.last_epoch("round2", "A1", 2) is None
    assert len(ledger.epochs("A1", fold=0)) == 3 and ledger.epochs("S1") == []
    ledger.round_finished("round1", {"promoted": ["A1"]})
    assert ledger.is_round_finished("round1") and ledger.round_summary("round1") == {"promoted": ["A1"]}
    ledger.selection({"winners": {"audio": "A1"}}, name="round2")
    ledger.selection({"winners": {"audio": "A1", "fusion": "F3"}}, name="round3")
    assert ledger.selected()["winners"] == {"audio": "A1", "fusion": "F3"}
    assert ledger.selected("round2")["winners"] == {"audio": "A1"}
    ledger.resources("A1", "t0", "gpu", 1.5, 5400, round="round2", fold=0)
    ledger.resources("A1", "t0", "gpu", 1.5, 5400, round="round2", fold=0)  # idempotent
    (rec,) = ledger.resource_records()
    assert (rec.experiment, rec.resource, rec.amount_hours, rec.fold) == ("A1", "gpu", 1.5, 0)


def scripted_run(led: Ledger) -> None:
    """Round 1 of four experiments, a rung decision, Round 2 of the survivors, selection."""
    exps = {
        "A1": {"track": "audio", "role": "candidate"},
        "A2": {"track": "audio", "role": "candidate"},
        "S1": {"track": "symbolic", "role": "candidate"},
        "S2": {"track": "symbolic", "role": "candidate"},
    }
    led.round_started("round1", exps)
    r1 = {"A1": [0.60, 0.66, 0.64], "A2": [0.50, 0.52, 0.51], "S1": [0.55, 0.58, 0.61], "S2": [0.56, 0.57, 0.60]}
    for ep in range(3):
        for name, accs in r1.items():
            led.epoch("round1", name, 0, ep, {SELECTION_METRIC: accs[ep], "val/r2": float("nan")})
    led.decision({"rung": 2, "experiment": "A2", "action": "stop", "track": "audio", "round": "round1"})
    led.decision({"rung": 2, "experiment": "A1", "action": "continue", "track": "audio", "round": "round1"})
    led.resources("A1", "t1", "cpu", 0.5, 900, round="round1")
    led.resources("A2", "t2", "cpu", 0.25, 450, round="round1")
    led.round_finished("round1", {"promoted": ["A1", "S1", "S2"], "eliminated": ["A2"]})
    led.round_started("round2", {k: v for k, v in exps.items() if k != "A2"})
    for fold in range(2):
        for ep in range(2):
            led.epoch("round2", "A1", fold, ep, {SELECTION_METRIC: 0.70 + fold / 100 + ep / 1000})
            led.epoch("round2", "S1", fold, ep, {SELECTION_METRIC: 0.65})
        led.resources("A1", "cv", "gpu", 2.0, 7200, round="round2", fold=fold)
    led.epoch("round2", "S2", 0, 0, {SELECTION_METRIC: 0.62})
    led.epoch("round1", "S1", 0, 9, {SELECTION_METRIC: 0.99})  # a late Round-1 report does not count
    led.selection({"winners": {"audio": "A1", "symbolic": "S1"}})


def test_run_state_from_a_scripted_ledger(ledger):
    scripted_run(ledger)
    state = RunView.read(Ledger(ledger.storage))
    assert state.rounds == {"round1": "finished", "round2": "running"}
    assert state.winners == {"audio": "A1", "symbolic": "S1"}
    assert [(d["experiment"], d["action"]) for d in state.decisions] == [("A2", "stop"), ("A1", "continue")]
    assert state.results()["winners"] == {"audio": "A1", "symbolic": "S1"}
    x = state.experiments
    assert (x["A1"].status, x["A2"].status, x["S1"].status, x["S2"].status) == (
        "winner", "eliminated", "winner", "promoted")
    assert (x["A1"].track, x["A1"].role, x["S2"].track) == ("audio", "candidate", "symbolic")
    assert (x["A1"].round, x["A1"].last_epoch, x["A1"].best_metric) == ("round2", 1, pytest.approx(0.711))
    assert (x["A2"].round, x["A2"].last_epoch, x["A2"].best_metric) == ("round1", 2, pytest.approx(0.52))
    assert (x["S1"].round, x["S1"].best_metric) == ("round2", pytest.approx(0.65))
    assert (x["A1"].gpu_hours, x["A1"].cpu_hours) == (4.0, 0.5)
    assert (x["A2"].gpu_hours, x["A2"].cpu_hours) == (0.0, 0.25)
    assert [e["name"] for e in state.results()["experiments"]] == ["A1", "A2", "S1", "S2"]


def test_run_state_is_the_same_after_compaction(ledger):
    scripted_run(ledger)
    before = RunView.read(ledger)
    ledger.compact("round2")
    after = RunView.read(Ledger(ledger.storage))
    assert after.results() == before.results() and after.decisions == before.decisions


def test_run_state_of_an_empty_ledger(ledger):
    state = RunView.read(ledger)
    assert not state.experiments and not state.rounds and not state.decisions and state.winners == {}
    assert state.results()["run"]["status"] == "running" and state.results()["experiments"] == []


def test_reading_5000_local_events_is_fast(storage):
    # Written straight to disk (writing through the ledger is timed by the ledger's users, not here).
    folder = storage.local_dir() / "ledger" / "events" / "epoch"
    folder.mkdir(parents=True)
    for i in range(5000):
        e = Event(event_id=f"epoch/round1/X{i % 7}/fold0/e{i:04d}", kind="epoch", time=float(i),
                  round="round1", experiment=f"X{i % 7}", fold=0,
                  payload={"epoch": i, "metrics": {SELECTION_METRIC: 0.5, "val/r2": 0.1}})
        (folder / (sanitise_event_id(e.event_id) + ".json")).write_bytes(e.to_json())
    led = Ledger(storage)
    t0 = time.perf_counter()
    events = led.events()
    elapsed = time.perf_counter() - t0
    assert len(events) == 5000 and events[0].time == 0.0 and events[-1].time == 4999.0
    assert elapsed < 1.5, f"reading 5000 events took {elapsed:.2f} s"  # ~0.35 s here; margin for shared cores


# -- S3 (a real moto server on loopback: tests/protocol/s3server.py) ----------------------------------
def test_ledger_on_s3(moto_s3):
    storage = RunStorage("s3://pianoray/runs", "demo", attempts=2)
    assert storage.uri == "s3://pianoray/runs/demo" and storage.local_dir() is None
    led = Ledger(storage, now=Clock())
    scripted_run(led)
    assert led.append(led.events("selection")[0]) is False
    # A fresh writer re-appending an existing id does not overwrite it (create-if-absent on S3).
    Ledger(storage, now=Clock(9999)).epoch("round2", "S2", 0, 0, {SELECTION_METRIC: 0.1})
    expected = RunView.read(Ledger(storage)).results()["experiments"]
    assert expected[0]["status"] == "winner"
    led.compact("round2")
    after = Ledger(storage)
    assert RunView.read(after).results()["experiments"] == expected
    assert "ledger/compacted/round2.parquet" in storage.list("ledger/compacted")
    assert storage.read_json(led.events("round")[0].relpath())["event_id"] == "round/round1/started"
    with pytest.raises(FileNotFoundError, match="s3://pianoray/runs/demo/absent"):
        storage.read_bytes("absent")
