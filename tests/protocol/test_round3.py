"""Round 3: the two winners, frozen, fused on every fold; its verdict; a skip when a fused track has no winner;
and a driver killed during Round 3 resumes it without rerunning anything that had finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pianoray.config import ProtocolConfig
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.run import RunContext, fusion_verdict, run_round3
from pianoray.protocol.schema import ResultsJSON
from pianoray.protocol.storage import RunStorage
from pianoray.records import ROUND3
from tests.protocol.test_faults import RUN_TIMEOUT, assert_epochs_contiguous


def test_round3_is_skipped_with_its_reason_when_a_fused_track_has_no_winner(tmp_path: Path) -> None:
    cfg = ProtocolConfig.model_validate({"experiments": {"S2": {}}})
    storage = RunStorage(tmp_path, "r", fsync=False)
    ctx = RunContext(cfg, storage, Ledger(storage), {"S2": ("symbolic", "candidate")}, feedback=None)
    r3 = run_round3(ctx, {"audio": None, "symbolic": "S2"})
    assert r3 == {"skipped": "no audio winner to fuse", "experiments": []}
    verdict = fusion_verdict(ctx.ledger, cfg, r3, {"audio": None, "symbolic": "S2"})
    assert verdict["final"] == {"model": "S2", "kind": "single", "reason": "no audio winner to fuse"}
    assert verdict["comparisons"] == {} and verdict["skipped"] == "no audio winner to fuse"


@pytest.mark.slow
def test_round3_fuses_the_winners_and_a_kill_resumes_it(fault_run_factory) -> None:
    run = fault_run_factory("r3", ["audio-frozen", "symbolic-features", "A1", "S2"],
                            round3={"enabled": True, "fusions": ["F2", "F3"], "epochs": 3, "patience": 3})
    cli = run.start()
    cli.wait_until("round 3 fold 1 of a fusion", lambda: run.epochs(ROUND3).get(("F2", 1)) or
                   run.epochs(ROUND3).get(("F3", 1)), timeout=RUN_TIMEOUT, poll=0.1)
    kill_t = cli.kill()
    before = {e["event_id"]: e["time"] for k in ("fold", "selection", "round") for e in run.events(k)}
    assert "round/round3/finished" not in before, "round 3 had finished before the kill"
    rerun = run.start()
    assert rerun.wait(RUN_TIMEOUT) == 0, rerun.tail()

    # nothing that had finished ran again: Rounds 1-2, the selection and every scored fold kept their events
    after = {e["event_id"]: e["time"] for k in ("fold", "selection", "round") for e in run.events(k)}
    assert all(after[i] == t for i, t in before.items()), "an event written before the kill was written again"
    assert not [e for e in run.events("epoch") if e["round"] != ROUND3 and e["time"] > kill_t]
    assert_epochs_contiguous(run, ROUND3)
    folds = {(e["experiment"], e["fold"]) for e in run.events("fold") if e["round"] == ROUND3}
    assert folds == {(f, k) for f in ("F2", "F3") for k in (0, 1)}

    (verdict,) = run.events("fusion")
    v = verdict["payload"]
    winners = next(e["payload"]["winners"] for e in run.events("selection"))
    assert v["fuses"] == {"audio": winners["audio"], "symbolic": winners["symbolic"]}
    assert v["best_single"] in v["fuses"].values()
    for f in ("F2", "F3"):
        c = v["comparisons"][f]
        assert c["versus"] == v["best_single"] and c["folds"] == 2 and None not in c["ci_points"]
        assert c["verdict"] in {"beats", "below", "no clear difference"}
    final = v["final"]
    assert final["kind"] == ("fusion" if any(c["verdict"] == "beats" for c in v["comparisons"].values()) else "single")
    assert final["reason"]

    env = {**os.environ, "COLUMNS": "160"}
    report = subprocess.run([sys.executable, "-m", "pianoray.cli", "report", "--storage", str(run.dir), "--json"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert report.returncode == 0, report.stderr
    r = json.loads(report.stdout)
    ResultsJSON.model_validate(r)
    rows = {e["name"]: e for e in r["experiments"]}
    assert {rows[f]["track"] for f in ("F2", "F3")} == {"fusion"}
    assert {rows[f]["furthest_round"] for f in ("F2", "F3")} == {ROUND3}
    assert len(rows["F2"]["folds"]) == 2 and rows["F2"]["pairwise_accuracy"]["mean"] is not None
    assert r["fusion"]["final"] == final and r["winners"]["fusion"] in {"F2", "F3"}
    assert "Fusion track" in (run.dir / "report" / "report.md").read_text()
