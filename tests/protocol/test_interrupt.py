"""A round that Tune ends early (a Ctrl-C: Tune saves its state and returns normally) is an interruption, not
a finished round: nothing is promoted or selected, and the same command resumes."""

from __future__ import annotations

import time
from types import SimpleNamespace

from pianoray.protocol.ledger import Event, Ledger
from pianoray.protocol.run import (
    TrialOutcome,
    fold_job_failures,
    round1_finished,
    round1_outcome,
    round1_unfinished,
    round2_missing,
    trial_outcomes,
)
from pianoray.protocol.storage import RunStorage


def _result(name, stop, revived=0, error=None):
    config = {"experiment": name, **({"revived_at": revived} if revived else {})}
    return TrialOutcome(config=config, metrics={"stop": stop}, error=error)


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
    results = [TrialOutcome(config={"experiment": "A1"}, metrics={}, error=None), _result("A2", False)]
    assert round1_unfinished(results, ["A1", "A2"], round1_finished(ledger)) == ["A2"]
    assert round1_unfinished(results, ["A1", "A2"]) == ["A1", "A2"]  # Tune's results alone would rerun A1


def test_round2_missing_lists_unscored_folds(tmp_path):
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    for name, fold in (("A1", 0), ("A1", 1), ("S2", 0)):
        ledger.append(Event(kind="fold", event_id=f"fold/{name}/fold{fold}", time=time.time(), round="round2",
                            experiment=name, fold=fold, payload={"test": {}}))
    assert round2_missing(ledger, ["A1", "S2"], [0, 1]) == [("S2", 1)]
    assert round2_missing(ledger, ["A1"], [0, 1]) == []


class _Grid(list):
    """A ``ResultGrid`` as :func:`trial_outcomes` reads it: results in order, built from the trials it keeps."""

    def __init__(self, trials, results):
        super().__init__(results)
        self._experiment_analysis = SimpleNamespace(trials=trials)


def test_a_trial_that_reported_nothing_keeps_its_config():
    """The CI failure this guards: a trial stopped at a rung before a kill -9, restored and ended at once, has no
    report in the new session, so Tune's result has no config; its params.json had not reached storage either.
    Its config comes from the trial, and Round 1's outcome still names it eliminated."""
    trials = [SimpleNamespace(config={"experiment": "A1.c2"}), SimpleNamespace(config={"experiment": "A2"})]
    results = [SimpleNamespace(config=None, metrics={}, error=None, path="/nowhere/A1_c2"),
               SimpleNamespace(config={"experiment": "A2"}, metrics={"stop": True, "config": {"experiment": "A2"}},
                               error=None, path="/nowhere/A2")]
    outcomes = trial_outcomes(_Grid(trials, results))
    assert [o.config["experiment"] for o in outcomes] == ["A1.c2", "A2"]
    assert outcomes[0].metrics == {} and outcomes[1].metrics["stop"] is True
    stop = SimpleNamespace(experiment="A1.c2", stopped=True)
    assert round1_outcome(outcomes, [stop]) == (["A2"], ["A1.c2"], [])


def test_a_failed_fold_job_names_its_experiments_and_folds():
    """A fold job (Round 2 or 3) holds a list of experiments and of folds; the failure line names them all."""
    outcomes = [TrialOutcome({"experiments": ["F1", "F3"], "folds": [0, 2]}, {}, RuntimeError("worker died")),
                TrialOutcome({"experiments": ["A3"], "folds": [1]}, {"final": True}, None)]
    assert fold_job_failures(outcomes) == ["F1, F3 folds 0, 2: worker died"]
