"""A round that Tune ends early (a Ctrl-C: Tune saves its state and returns normally) is an interruption, not
a finished round: nothing is promoted or selected, and the same command resumes."""

from __future__ import annotations

import time
from types import SimpleNamespace

from pianoray.protocol.ledger import Event, Ledger
from pianoray.protocol.run import round1_finished, round1_unfinished, round2_missing
from pianoray.protocol.storage import RunStorage


def _result(name, stop, revived=0, error=None):
    config = {"experiment": name, **({"revived_at": revived} if revived else {})}
    return SimpleNamespace(config=config, metrics={"stop": stop}, error=error)


def test_round1_survivor_that_did_not_reach_its_last_epoch_is_unfinished():
    results = [_result("A1", True), _result("A2", False), _result("S1", False), _result("S1", True, revived=3)]
    assert round1_unfinished(results, ["A1", "A2", "S1"]) == ["A2"]  # S1's newest (revived) trial finished
    assert round1_unfinished(results, ["A1"]) == []  # A2 stopped at a rung is no survivor: not unfinished


def test_a_survivor_the_ledger_saw_finish_is_not_unfinished(tmp_path):
    """Finished in an earlier session, restored by Tune and ended at once, it reports nothing in this one: its
    last Tune result says nothing of its last epoch, but the ledger recorded it."""
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    for epoch, stop in ((9, False), (10, True)):
        ledger.append(Event(kind="epoch", event_id=f"epoch/round1/A1/fold0/e{epoch}", time=time.time(),
                            round="round1", experiment="A1", fold=0, payload={"epoch": epoch, "metrics": {"stop": stop}}))
    ledger.append(Event(kind="epoch", event_id="epoch/round1/A2/fold0/e3", time=time.time(), round="round1",
                        experiment="A2", fold=0, payload={"epoch": 3, "metrics": {"stop": False}}))
    assert round1_finished(ledger) == {"A1"}
    results = [SimpleNamespace(config={"experiment": "A1"}, metrics={}, error=None), _result("A2", False)]
    assert round1_unfinished(results, ["A1", "A2"], round1_finished(ledger)) == ["A2"]
    assert round1_unfinished(results, ["A1", "A2"]) == ["A1", "A2"]  # Tune's results alone would rerun A1


def test_round2_missing_lists_unscored_folds(tmp_path):
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    for name, fold in (("A1", 0), ("A1", 1), ("S2", 0)):
        ledger.append(Event(kind="fold", event_id=f"fold/{name}/fold{fold}", time=time.time(), round="round2",
                            experiment=name, fold=fold, payload={"test": {}}))
    assert round2_missing(ledger, ["A1", "S2"], [0, 1]) == [("S2", 1)]
    assert round2_missing(ledger, ["A1"], [0, 1]) == []
