"""Fixtures for fault tests: run `pianoray run` in its own session, wait on ledger events, kill it hard.

The CLI starts its own local Ray head (gcs_server, raylet, dashboard, workers). Started with
``start_new_session=True``, every one of those processes shares the CLI's session id (Ray gives actors
their own process group, but not their own session), so "kill -9 the driver" here means SIGKILL every
process of that session: nothing of the dead run survives to write into the storage, and the rerun
starts a fresh head. We never use ``ray stop``: it would kill other people's Ray on this machine.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import psutil
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
E2E_YAML = REPO / "tests" / "e2e.yaml"
CLI = [sys.executable, "-m", "pianoray.cli"]


def session_processes(sid: int) -> list[psutil.Process]:
    """Every live process whose session id is ``sid`` (the CLI's pid when started in a new session)."""
    out = []
    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return out


def kill_session(sid: int, timeout: float = 20.0) -> None:
    """SIGKILL the whole session (driver, Ray head, workers) and wait until none of it is left."""
    deadline = time.monotonic() + timeout
    while True:
        procs = session_processes(sid)
        if not procs:
            return
        for p in procs:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=2)
        if time.monotonic() > deadline:
            left = ", ".join(f"{p.pid}" for p in session_processes(sid))
            raise AssertionError(f"processes of session {sid} survived SIGKILL: {left}")


@dataclass
class CliRun:
    """One `pianoray run` subprocess; its output goes to ``log``."""

    args: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen | None = None
    started: float = 0.0

    def start(self) -> "CliRun":
        self.started = time.time()
        with open(self.log, "ab") as fh:
            fh.write(f"\n==== start {time.strftime('%H:%M:%S')}: {' '.join(self.args)}\n".encode())
            self.proc = subprocess.Popen(CLI + self.args, stdout=fh, stderr=subprocess.STDOUT, env=self.env,
                                         cwd=REPO, start_new_session=True)
        return self

    def tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines()
        return "\n".join(line for line in lines[-n:] if "sample_from functions" not in line)

    def kill(self) -> float:
        """kill -9 the driver and everything it started; returns the time (Unix seconds) when none of it is
        left. Not the time the kill began: killing a session takes a moment, and what its workers write in
        that moment (a checkpoint, an epoch event) is the dead run's, not the rerun's."""
        assert self.proc is not None
        kill_session(self.proc.pid)
        self.proc.wait(timeout=10)
        return time.time()

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"pianoray run did not finish in {timeout:.0f}s; log tail:\n{self.tail()}")
        kill_session(self.proc.pid)  # anything the driver's ray.shutdown left behind
        return rc

    def wait_until(self, what: str, predicate: Callable[[], Any], timeout: float, poll: float = 0.2) -> Any:
        """Poll ``predicate`` until it returns a truthy value; fail if the run exits or time runs out."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            if self.proc.poll() is not None:
                raise AssertionError(f"run exited (rc {self.proc.returncode}) before {what}; log:\n{self.tail()}")
            time.sleep(poll)
        self.kill()
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; log:\n{self.tail()}")


@dataclass
class FaultRun:
    """A protocol run folder plus the command line that (re)starts it."""

    config: Path
    data: Path
    storage: Path
    name: str
    log: Path
    runs: list[CliRun] = field(default_factory=list)

    @property
    def dir(self) -> Path:
        return self.storage / self.name

    @property
    def tmp(self) -> Path:
        """The run's temp dir (TMPDIR of the CLI and so of its local Ray's workers: the trials' scratch lands
        here, where a test can see what a run leaves behind). Ray's own session folders stay in /tmp/ray: a
        deeper path would overflow the length of a unix socket's name."""
        return self.storage.parent / "tmp"

    def start(self) -> CliRun:
        self.tmp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160", "TMPDIR": str(self.tmp),
               "RAY_TMPDIR": os.environ.get("RAY_TMPDIR", "/tmp")}
        env.pop("PIANORAY_REQUIRE_DATA", None)
        run = CliRun(["run", "--config", str(self.config), "--data", str(self.data), "--storage",
                      str(self.storage)], self.log, env).start()
        self.runs.append(run)
        return run

    # -- the ledger, read straight from its files (what the fault must not corrupt) -------------------
    def events(self, kind: str) -> list[dict[str, Any]]:
        folder = self.dir / "ledger" / "events" / kind
        if not folder.is_dir():
            return []
        out = []
        for f in sorted(folder.glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (json.JSONDecodeError, OSError):
                continue  # caught mid-write by a poll; the next poll reads it whole
        return out

    def epochs(self, round_: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
        """(experiment, fold) -> its epoch events of ``round_``, ordered by epoch."""
        out: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for e in self.events("epoch"):
            if e["round"] == round_:
                out.setdefault((e["experiment"], int(e["fold"])), []).append(e)
        return {k: sorted(v, key=lambda e: e["payload"]["epoch"]) for k, v in out.items()}

    def tune_results(self, round_: str, experiment: str, fold: int | None = None) -> list[dict[str, Any]]:
        """Every report Tune logged for a trial (result.json), across driver restarts, in order.

        Unlike the ledger (idempotent: a re-reported epoch writes nothing), this shows re-run epochs.
        """
        rows = []
        for d in (self.dir / round_).glob("*_trainable_*"):
            if not (d / "params.json").exists():  # the driver's files of a trial whose upload a kill -9 beat:
                continue  # its result.json never reached storage either
            params = json.loads((d / "params.json").read_text())
            folds = params.get("folds", [params.get("fold")])  # a fold job may run several folds
            names = params.get("experiments", [params.get("experiment")])  # and several experiments (Round 3)
            if experiment not in names or (fold is not None and fold not in folds):
                continue
            for line in (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []:
                row = json.loads(line) if line.strip() else None
                if row is not None and (fold is None or row.get("fold", fold) == fold) \
                        and row.get("experiment", experiment) == experiment:
                    rows.append(row)
        return sorted(rows, key=lambda r: r["timestamp"])


def write_fault_config(path: Path, name: str, experiments: list[str], overrides: dict[str, Any],
                       settings: dict[str, dict[str, Any]] | None = None) -> Path:
    """tests/e2e.yaml with ``overrides``, only ``experiments`` enabled (with ``settings``, experiment -> its
    fields, merged in), written out whole.

    Whole, not as ``extends: e2e.yaml``: a run refuses to resume under a changed config, and e2e.yaml
    (or the demo.yaml it extends) may be edited while a fault test is between its kill and its rerun.
    """
    from pianoray.config import load_config

    base = load_config(E2E_YAML, check_models=False)
    unknown = sorted(set(experiments) - set(base.experiments))
    if unknown:
        raise ValueError(f"{E2E_YAML}: no experiments {unknown} to enable")
    exps = {n: {**(settings or {}).get(n, {}), "enabled": n in experiments} for n in base.experiments}
    cfg = load_config(E2E_YAML, {"name": name, **overrides, "experiments": exps}, check_models=False)
    path.write_text(yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    return path


@pytest.fixture(scope="session")
def e2e_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The e2e demo corpus, generated once per session (the CLI would otherwise race to generate it)."""
    from pianoray.config import load_config
    from pianoray.validation import prepare_data
    root = tmp_path_factory.mktemp("e2e-data")
    cfg = load_config(E2E_YAML, {"data": {"root": str(root)}}, check_models=False)
    prepare_data(cfg)
    return root


@pytest.fixture
def fault_run_factory(tmp_path: Path, e2e_data: Path) -> Iterator[Callable[..., FaultRun]]:
    made: list[FaultRun] = []

    def make(name: str, experiments: list[str], settings: dict[str, dict[str, Any]] | None = None,
             **overrides: Any) -> FaultRun:
        cfg = write_fault_config(tmp_path / f"{name}.yaml", name, experiments, overrides, settings)
        run = FaultRun(cfg, e2e_data, tmp_path / "storage", name, tmp_path / f"{name}.log")
        made.append(run)
        return run

    yield make
    for run in made:  # a failed test must not leave a Ray head running
        for cli in run.runs:
            if cli.proc is not None:
                kill_session(cli.proc.pid)
