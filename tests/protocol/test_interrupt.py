"""A round that Tune ends early (a Ctrl-C: Tune saves its state and returns normally) is an interruption, not
a finished round: nothing is promoted or selected, and the same command resumes."""

from __future__ import annotations

import time
from types import SimpleNamespace

from pianoray.protocol.ledger import Event, Ledger
from pianoray.protocol.run import round1_unfinished, round2_missing
from pianoray.protocol.storage import RunStorage


def _result(name, stop, revived=0, error=None):
    config = {"experiment": name, **({"revived_at": revived} if revived else {})}
    return SimpleNamespace(config=config, metrics={"stop": stop}, error=error)


def test_round1_survivor_that_did_not_reach_its_last_epoch_is_unfinished():
    results = [_result("A1", True), _result("A2", False), _result("S1", False), _result("S1", True, revived=3)]
    assert round1_unfinished(results, ["A1", "A2", "S1"]) == ["A2"]  # S1's newest (revived) trial finished
    assert round1_unfinished(results, ["A1"]) == []  # A2 stopped at a rung is no survivor: not unfinished


def test_round2_missing_lists_unscored_folds(tmp_path):
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    for name, fold in (("A1", 0), ("A1", 1), ("S2", 0)):
        ledger.append(Event(kind="fold", event_id=f"fold/{name}/fold{fold}", time=time.time(), round="round2",
                            experiment=name, fold=fold, payload={"test": {}}))
    assert round2_missing(ledger, ["A1", "S2"], [0, 1]) == [("S2", 1)]
    assert round2_missing(ledger, ["A1"], [0, 1]) == []
