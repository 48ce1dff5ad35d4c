"""Round-1 decisions that hold under a real Ray Tune run: an errored leader, a driver kill at an undecided
rung, and a restore with a trial that finished before a rung.

Scripted trainables (tests/protocol/scripted_trials.py: flat or stepped curves, a few fast epochs, each
with a checkpoint) run under ``TrackGapScheduler`` built the way ``run_round1`` builds it: from the run's
ledger (``round1_history``), written by a callback (epochs), the scheduler (decisions) and its
re-judgements. The Tuner is made or restored by ``new_or_restored_tuner``, as in a run.

A "driver kill" is a driver subprocess (connected to this module's Ray) killed with SIGKILL while its
trials wait at gates (files the test creates when it wants them to go on): the kill always lands at the
same point. Each resumed run is compared with an uninterrupted run of the same curves.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune

from pianoray.protocol.ledger import Ledger
from pianoray.protocol.run import new_or_restored_tuner, round1_history, round1_outcome, trial_outcomes
from pianoray.protocol.scheduler import TrackGapScheduler
from pianoray.protocol.storage import RunStorage
from tests.protocol.conftest import REPO, kill_session
from tests.protocol.scripted_trials import METRIC, scripted_trainable

pytestmark = pytest.mark.slow

ROUND = "round1"
EXPERIMENT = "round1"  # Tune's experiment folder under the run (as in a run)


# ---------------------------------------------------------------------------------------------- the ledger side
_LEDGERS: dict[str, Ledger] = {}


def run_ledger(run_dir: str) -> Ledger:
    if run_dir not in _LEDGERS:
        _LEDGERS[run_dir] = Ledger(RunStorage(str(Path(run_dir).parent), Path(run_dir).name, fsync=False))
    return _LEDGERS[run_dir]


def write_decision(run_dir: str, decision: Any) -> None:
    run_ledger(run_dir).decision(decision, round=ROUND)


def write_rejudged(run_dir: str, previous: Any, new: Any, errored: str) -> None:
    run_ledger(run_dir).rejudged(previous, new, errored, round=ROUND)


class LedgerEpochs(tune.Callback):
    """Every report becomes an epoch event of the run's ledger (what ProtocolCallback does in a run)."""

    def __init__(self, run_dir: str) -> None:
        self.run_dir = run_dir

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        metrics = {k: result[k] for k in ("epoch", METRIC, "stop") if k in result}
        run_ledger(self.run_dir).epoch(ROUND, trial.config["experiment"], 0, int(result["epoch"]), metrics,
                                       trial=trial.trial_id)


def drive(run_dir: str, specs: dict[str, dict], *, rungs: list[int], epochs: int, final_rung: int | None,
          log: str, max_failures: int = 0, time_budget_s: float | None = None):
    """One session of a scripted Round 1 (new, or restored from an earlier session's folder): the scheduler is
    built from the ledger, as ``run_round1`` builds it. Returns (result grid, scheduler)."""
    history = round1_history(run_ledger(run_dir), fold=0, epoch_key="epoch")
    scheduler = TrackGapScheduler(
        metric=METRIC, mode="max", rungs=rungs, final_rung=final_rung, gap=10.0, sync=True,
        on_decision=functools.partial(write_decision, run_dir),
        on_rejudge=functools.partial(write_rejudged, run_dir),
        **history.scheduler_kwargs(),
    )
    param_space = {"experiment": tune.grid_search(sorted(specs)), "track": "audio", "role": "candidate",
                   "specs": specs, "epochs": epochs, "log": log}
    trainable = tune.with_resources(scripted_trainable, {"cpu": 1})
    tune_config = tune.TuneConfig(scheduler=scheduler, reuse_actors=True, time_budget_s=time_budget_s)
    run_config = tune.RunConfig(
        name=EXPERIMENT, storage_path=run_dir, verbose=0, callbacks=[LedgerEpochs(run_dir)],
        failure_config=tune.FailureConfig(max_failures=max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    grid = new_or_restored_tuner(run_dir, trainable, param_space, tune_config, run_config).fit()
    return grid, scheduler


def drive_in_subprocess(address: str, run_dir: str, kwargs: dict, out: Path) -> subprocess.Popen:
    """The same session as :func:`drive`, in a driver process of its own (this module's Ray cluster), to kill."""
    code = (
        "import json, sys; sys.path.insert(0, %r)\n"
        "import ray; ray.init(address=%r, log_to_driver=False)\n"
        "from tests.protocol.test_resume_decisions import drive\n"
        "kw = json.loads(%r)\n"
        "drive(%r, **kw)\n"
    ) % (str(REPO), address, json.dumps(kwargs), run_dir)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TUNE_GLOBAL_CHECKPOINT_S": "0.5", "PYTHONUNBUFFERED": "1"}
    with open(out, "ab") as fh:
        return subprocess.Popen([sys.executable, "-c", code], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=REPO, start_new_session=True)


def wait_for(what: str, predicate, proc: subprocess.Popen | None = None, out: Path | None = None,
             timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"driver exited (rc {proc.returncode}) before {what}:\n"
                                 + (out.read_text()[-4000:] if out else ""))
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}" + (f":\n{out.read_text()[-4000:]}" if out else ""))


def ledger_epochs(run_dir: str) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for e in Ledger(RunStorage(str(Path(run_dir).parent), Path(run_dir).name)).epochs(round=ROUND):
        out.setdefault(e.experiment, []).append(int(e.payload["epoch"]))
    return {k: sorted(v) for k, v in out.items()}


def decisions_of(run_dir: str) -> list[tuple]:
    """The run's rung decisions as they stand: what must not depend on the driver having died."""
    ledger = Ledger(RunStorage(str(Path(run_dir).parent), Path(run_dir).name))
    return sorted((d["rung"], d["experiment"], d["decision"], round(d["metric"], 6), d["leader"],
                   None if d["leader_metric"] is None else round(d["leader_metric"], 6))
                  for d in (e.payload for e in ledger.decisions(ROUND)))


def trial_dirs(run_dir: str, experiment: str) -> list[Path]:
    return [d for d in (Path(run_dir) / EXPERIMENT).glob("scripted_trainable_*")
            if (d / "params.json").exists() and json.loads((d / "params.json").read_text())["experiment"] == experiment]


def restores(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


class CheckpointErrors(logging.Handler):
    """Collects Tune's checkpoint-manager errors (``Error handling checkpoint ... Path not found``)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage() + (logging.Formatter().formatException(record.exc_info) if record.exc_info else "")
        if "Error handling checkpoint" in text or "Path not found" in text:
            self.messages.append(text)


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def checkpoint_errors():
    handler = CheckpointErrors()
    loggers = [logging.getLogger(n) for n in ("ray.tune.execution.tune_controller", "ray.tune", "ray")]
    for lg in loggers:
        lg.addHandler(handler)
    yield handler
    for lg in loggers:
        lg.removeHandler(handler)


# ---------------------------------------------------------------------------------------------- the tests
def test_leader_that_errors_for_good_is_not_a_leader_and_its_rung_is_rejudged(local_ray, tmp_path):
    # Rung 3: A1 leads at 0.90; A2 (0.76) and A3 (0.74) are more than 10 points behind and stopped. A1 then
    # errors for good (no retries) before epoch 5. Without it, A2 leads rung 3 and A3 is 2 points behind:
    # both survive, restart from their rung-3 checkpoints as new trials, and finish the round.
    run_dir, log = str(tmp_path / "run"), tmp_path / "restores.jsonl"
    specs = {"A1": {"curve": [0.90], "error_at": 5}, "A2": {"curve": [0.76]}, "A3": {"curve": [0.74]}}
    grid, scheduler = drive(run_dir, specs, rungs=[3], epochs=6, final_rung=6, log=str(log))

    ledger = run_ledger(run_dir)
    as_decided = {(e.payload["rung"], e.payload["experiment"]): e.payload for e in ledger.decisions(ROUND, as_decided=True)}
    assert as_decided[(3, "A2")]["decision"] == as_decided[(3, "A3")]["decision"] == "stop"
    assert as_decided[(3, "A2")]["leader"] == "A1"
    rejudged = {e.experiment: e.payload for e in ledger.rejudgements(ROUND)}
    assert sorted(rejudged) == ["A2", "A3"]
    for name, r in rejudged.items():
        assert r["errored"] == "A1" and r["previous"]["decision"] == "stop" and r["decision"]["decision"] == "continue"
        assert r["decision"]["leader"] == "A2" and "A1 errored for good" in r["reason"]
    now = {(e.payload["rung"], e.payload["experiment"]): e.payload for e in ledger.decisions(ROUND)}
    assert now[(3, "A2")]["decision"] == now[(3, "A3")]["decision"] == "continue"
    assert {d.experiment: d.decision for d in scheduler.decisions if d.rung == 3} == {
        "A1": "continue", "A2": "continue", "A3": "continue"}
    # Nobody was judged against the errored trial at the end of the round, and it is nowhere a leader after.
    assert {(d.experiment, d.decision, d.leader) for d in scheduler.decisions if d.rung == 6} == {
        ("A2", "continue", "A2"), ("A3", "continue", "A2")}

    # The survivors restarted from their rung-3 checkpoints as new trials of the same experiments.
    by_exp: dict[str, list] = {}
    for r in grid:
        by_exp.setdefault(r.config["experiment"], []).append(r)
    assert len(by_exp["A1"]) == 1 and by_exp["A1"][0].error is not None
    for name in ("A2", "A3"):
        first, restarted = sorted(by_exp[name], key=lambda r: r.config.get("revived_at", 0))
        assert restarted.config["revived_at"] == 3 and restarted.config["experiment"] == name
        assert first.metrics["epoch"] == 3 and restarted.metrics["epoch"] == 6
        assert list(restarted.metrics_dataframe["epoch"]) == [4, 5, 6]  # resumed after the rung, not over
    restarted_ids = {r.metrics["trial_id"] for name in ("A2", "A3") for r in by_exp[name] if r.config.get("revived_at")}
    assert {(e["experiment"], e["restored"]) for e in restores(log) if e["trial"] in restarted_ids} == {
        ("A2", 3), ("A3", 3)}
    assert ledger_epochs(run_dir) == {"A1": [1, 2, 3, 4], "A2": [1, 2, 3, 4, 5, 6], "A3": [1, 2, 3, 4, 5, 6]}
    assert round1_outcome(trial_outcomes(grid), scheduler.decisions) == (["A2", "A3"], [], ["A1"])


def test_driver_killed_while_a_trial_waits_at_an_undecided_rung_resumes_with_the_same_decisions(
        local_ray, tmp_path, checkpoint_errors):
    # Rung 4. A1 is fast: it reaches the rung at 0.58 and waits there; its curve jumps to 0.80 at epoch 5, so
    # judging it on any report after the rung would make it the leader. A2 (0.70) and A3 (0.68) are held back
    # by gates. The driver dies with A1 paused at the rung and the rung undecided. The uninterrupted decision:
    # A2 leads, A3 continues, A1 (12 points behind) is stopped.
    gates = {name: {str(e): str(tmp_path / f"gate-{name}-{e}") for e in es}
             for name, es in {"A2": (3, 4), "A3": (1,)}.items()}
    specs = {"A1": {"curve": [0.58] * 4 + [0.80]}, "A2": {"curve": [0.70], "gates": gates["A2"]},
             "A3": {"curve": [0.68], "gates": gates["A3"]}}
    kw = {"rungs": [4], "epochs": 6, "final_rung": 6}

    reference_dir = str(tmp_path / "uninterrupted")
    for files in gates.values():
        for f in files.values():
            Path(f + ".open").touch()
    open_specs = {n: {**s, "gates": {e: f + ".open" for e, f in s.get("gates", {}).items()}} for n, s in specs.items()}
    drive(reference_dir, open_specs, log=str(tmp_path / "reference.jsonl"), **kw)
    expected = decisions_of(reference_dir)
    assert [(r, e, d) for r, e, d, *_ in expected if r == 4] == [(4, "A1", "stop"), (4, "A2", "continue"),
                                                                 (4, "A3", "continue")]

    run_dir, log, out = str(tmp_path / "run"), tmp_path / "restores.jsonl", tmp_path / "driver.log"
    driver = drive_in_subprocess(local_ray, run_dir, {"specs": specs, "log": str(log), **kw}, out)
    try:
        a2 = lambda: (trial_dirs(run_dir, "A2") or [None])[0]  # noqa: E731
        wait_for("A1 at the rung and A2 at epoch 2", lambda: ledger_epochs(run_dir).get("A1", [])[-1:] == [4]
                 and ledger_epochs(run_dir).get("A2", [])[-1:] == [2] and a2() and (a2() / "checkpoint_000001").exists(),
                 driver, out)
        state = wait_for("Tune's snapshot", lambda: sorted((Path(run_dir) / EXPERIMENT).glob("experiment_state-*.json")),
                         driver, out)[-1]
        seen = time.time()
        wait_for("a snapshot after A2's epoch 2", lambda: state.stat().st_mtime > seen + 0.6, driver, out)
        snapshot = state.read_bytes()  # the snapshot a kill right now would leave
        Path(gates["A2"]["3"]).touch()
        wait_for("A2's epoch 3 (its oldest checkpoint deleted)", lambda: not (a2() / "checkpoint_000000").exists()
                 and ledger_epochs(run_dir)["A2"][-1] == 3, driver, out)
    finally:
        kill_session(driver.pid)
        driver.wait(timeout=10)
    assert not decisions_of(run_dir), "the rung was decided before the kill: the test did not interrupt it"
    # The kill landed before Tune's next snapshot: the one it restores lags A2's checkpoints in storage
    # (it lists the epoch-1 checkpoint, already deleted, and not the epoch-3 one).
    state.write_bytes(snapshot)
    epochs_at_kill = ledger_epochs(run_dir)

    for files in gates.values():
        for f in files.values():
            Path(f).touch()
    grid, scheduler = drive(run_dir, specs, log=str(log), **kw)

    assert decisions_of(run_dir) == expected
    epochs = ledger_epochs(run_dir)
    assert epochs["A1"] == [1, 2, 3, 4], f"A1 trained past the rung it was waiting at: {epochs['A1']}"
    assert epochs_at_kill["A2"] == [1, 2, 3] and epochs["A2"] == [1, 2, 3, 4, 5, 6]
    restored = [(e["experiment"], e["restored"]) for e in restores(log)]
    assert ("A2", 3) in restored, f"A2 did not resume from its newest checkpoint: {restored}"
    assert ("A2", 2) not in restored and ("A1", 4) not in restored, restored
    assert not checkpoint_errors.messages, "Tune's checkpoint manager failed:\n" + "\n".join(checkpoint_errors.messages)
    # Every checkpoint Tune kept for A2 is in storage, and nothing else is.
    kept = sorted(p.name for p in trial_dirs(run_dir, "A2")[0].glob("checkpoint_*"))
    assert len(kept) == 2, kept
    assert round1_outcome(trial_outcomes(grid), scheduler.decisions) == (["A2", "A3"], ["A1"], [])


def test_restore_with_a_trial_that_finished_before_a_rung(local_ray, tmp_path):
    # A1 stops early (patience) at epoch 2, before rung 4, at 0.55; A2 (0.70) is held before epoch 3. The driver
    # dies with A1 finished and A2 on its way to the rung; Tune restores A1 as TERMINATED. It must not hold the
    # rung (A2 would wait for it forever), and it is judged there on its last value: 15 points behind, stopped.
    gate = str(tmp_path / "gate-A2-3")
    specs = {"A1": {"curve": [0.55], "stop_at": 2}, "A2": {"curve": [0.70], "gates": {"3": gate}}}
    kw = {"rungs": [4], "epochs": 6, "final_rung": 6}

    reference_dir = str(tmp_path / "uninterrupted")
    Path(gate + ".open").touch()
    drive(reference_dir, {**specs, "A2": {**specs["A2"], "gates": {"3": gate + ".open"}}},
          log=str(tmp_path / "reference.jsonl"), time_budget_s=60, **kw)
    expected = decisions_of(reference_dir)
    assert expected[0][:3] == (4, "A1", "stop") and expected[0][3] == 0.55

    run_dir, out = str(tmp_path / "run"), tmp_path / "driver.log"
    driver = drive_in_subprocess(local_ray, run_dir, {"specs": specs, "log": str(tmp_path / "r.jsonl"), **kw}, out)
    try:
        wait_for("A1 finished, A2 at epoch 2", lambda: ledger_epochs(run_dir).get("A1") == [1, 2]
                 and ledger_epochs(run_dir).get("A2", [])[-1:] == [2], driver, out)
        state = wait_for("Tune's snapshot", lambda: sorted((Path(run_dir) / EXPERIMENT).glob("experiment_state-*.json")),
                         driver, out)[-1]
        seen = time.time()
        wait_for("a snapshot with A1 finished", lambda: state.stat().st_mtime > seen + 1.0, driver, out)
    finally:
        kill_session(driver.pid)
        driver.wait(timeout=10)
    assert b"TERMINATED" in state.read_bytes()
    assert not decisions_of(run_dir)

    Path(gate).touch()
    start = time.monotonic()
    grid, scheduler = drive(run_dir, specs, log=str(tmp_path / "r.jsonl"), time_budget_s=60, **kw)
    assert time.monotonic() - start < 50, "the restored run waited for a finished trial"
    assert decisions_of(run_dir) == expected
    assert ledger_epochs(run_dir) == {"A1": [1, 2], "A2": [1, 2, 3, 4, 5, 6]}
    assert round1_outcome(trial_outcomes(grid), scheduler.decisions)[:2] == (["A2"], ["A1"])
