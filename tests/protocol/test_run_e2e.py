"""One whole run of the protocol on the tiny e2e config, then what a user reads: status, report, ledger."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from pianoray.protocol.schema import ResultsJSON, StatusJSON

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "160"}
    return subprocess.run([sys.executable, "-m", "pianoray.cli", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_run_then_status_and_report(fault_run_factory) -> None:
    run = fault_run_factory("e2e", ["audio-frozen", "symbolic-features", "symbolic-gbm", "A1", "S2"])
    proc = run.start()
    assert proc.wait(timeout=900) == 0, proc.tail()
    assert "report:" in proc.tail() and "winner" in proc.tail()
    # the trials' local scratch (staged checkpoints, resume copies) went with them: a long run must not fill the disk
    assert not list(run.tmp.glob("pianoray-scratch-*")), sorted(run.tmp.iterdir())

    # every rung decision is in the ledger with its reason, once per (rung, experiment)
    decisions = run.events("decision")
    assert decisions and all(d["payload"]["reason"] for d in decisions)
    keys = [(d["payload"]["rung"], d["payload"]["experiment"]) for d in decisions]
    assert len(keys) == len(set(keys))
    # the e2e config's rule (demo.yaml: the noise guard) judged every decision on the trainables' recorded pair
    # counts, each with the gap's interval; the last Round-1 epoch (4) is a rung for every neural trial
    assert all(d["payload"]["rule"] == "guard" and d["payload"]["gap_ci"] is not None for d in decisions)
    assert {(d["payload"]["rung"], d["payload"]["final"]) for d in decisions} >= {(2, False), (4, True)}
    assert run.events("paircounts")
    ids = [p.name for p in (run.dir / "ledger" / "events").rglob("*.json")]
    assert len(ids) == len(set(ids))

    status = cli("status", "--storage", str(run.dir), "--json")
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    StatusJSON.model_validate(s)  # the public schema (docs/results-schema.md)
    assert {e["name"] for e in s["experiments"]} == {"audio-frozen", "symbolic-features", "symbolic-gbm", "A1", "S2"}

    report = cli("report", "--storage", str(run.dir), "--json")
    assert report.returncode == 0, report.stderr
    r = json.loads(report.stdout)
    ResultsJSON.model_validate(r)
    assert r["schema_version"] == 1 and set(r) >= {"experiments", "decisions", "winners"}
    assert [t["name"] for t in r["tracks"]] == ["audio", "symbolic"] and set(r["winners"]) == {"audio", "symbolic"}
    by_name = {e["name"]: e for e in r["experiments"]}
    for e in r["experiments"]:
        assert e["status"] in {"eliminated", "promoted", "winner", "vetoed"}, e
        assert e["resource_hours"]["cpu_hours"] > 0, e
    # every Round-2 unit ran, and is billed its running time: a job training several folds bills each its own
    # (not the first fold the whole job and the others nothing)
    units = [x["payload"] for x in run.events("resources") if x["round"] == "round2"]
    assert len(units) == len(run.events("fold")) and all(u["wall_seconds"] > 0 for u in units), units
    # references never win; each track's winner is one of its candidates that reached round 2
    for track, name in r["winners"].items():
        if name is not None:
            assert by_name[name]["role"] == "candidate" and by_name[name]["track"] == track
            assert by_name[name]["furthest_round"] == "round2"
            assert by_name[name]["pairwise_accuracy"]["mean"] is not None
            assert len(by_name[name]["folds"]) == 2
    # the fitted reference: never in a rung, scored on every Round-2 fold like the neural folds
    gbm = by_name["symbolic-gbm"]
    assert (gbm["role"], gbm["furthest_round"], gbm["status"]) == ("reference", "round2", "promoted")
    assert all(d["experiment"] != "symbolic-gbm" for d in r["decisions"]) and gbm["round1"]["epochs"] is None
    assert len(gbm["folds"]) == 2 and all(f["test_r2"] is not None and f["epochs"] == 1 for f in gbm["folds"])
    # every fold job's per-passage pair counts reached its fold event, and selection used them: each winner's
    # comparison with its track's best reference (the symbolic track always has symbolic-gbm) has a paired CI
    folds = run.events("fold")
    assert folds and all(set(f["payload"]["pair_counts"]) == {"val", "test"} for f in folds)
    # each scored neural fold's best model is kept (what Round 3 and export start from) and loads into its model
    from pianoray.config import load_config
    from pianoray.protocol.trials import BestStore
    from pianoray.training.data import ExperimentData
    from pianoray.training.loop import build_model

    store = BestStore(str(run.dir.parent), run.dir.name)
    kept = {(f["experiment"], f["fold"]) for f in folds if f["experiment"] != "symbolic-gbm"}
    assert kept and all(store.has(x, k) for x, k in kept)
    cfg = load_config(run.config, {"data": {"root": str(run.data)}})
    x, k = sorted(kept)[0]
    if x in cfg.experiments:  # a Round-2 name of the config (the e2e config searches nothing)
        build_model(cfg, x, ExperimentData.from_config(cfg), k).load_state_dict(store.weights(x, k))
    metrics = json.loads((run.dir / "best" / x / f"fold{k}" / "metrics.json").read_text())
    assert metrics["fold"] == k and metrics["selectable"]
    sym = r["selection"]["symbolic"]
    if sym["winner"] is not None:
        versus = sym["versus_reference"]
        assert versus["winner"] == sym["winner"] and versus["reference"] in {"symbolic-gbm", "symbolic-features"}
        assert None not in versus["ci_points"] and versus["verdict"] in {"beats", "below", "no clear difference"}
        assert {x["reference"] for x in versus["references"]} >= {"symbolic-gbm"}
    md = (run.dir / "report" / "report.md").read_text()
    for track, name in r["winners"].items():
        if name is not None:
            assert r["selection"][track]["margin"]["winner"] == name
            assert f"{name} against the best reference" in md or f"{name} has no reference to beat" in md
    for f in ("report.md", "report.html", "results.json"):
        assert (run.dir / "report" / f).is_file(), f
    html = (run.dir / "report" / "report.html").read_text()
    assert "learning_curves_round1.png" in html and (run.dir / "report" / "learning_curves_round1.png").is_file()

    # after the run: its symbolic winner exported (Round 3 is off here, so the run has a winner per track and no
    # final model: export asks which), evaluated on the run's own corpus, and run on new MIDI
    model = run.dir.parent / "model"
    asked = cli("export", "--storage", str(run.dir), "--out", str(model))
    assert asked.returncode == 2 and "give --track" in asked.stderr + asked.stdout and not model.exists()
    exported = cli("export", "--storage", str(run.dir), "--out", str(model), "--track", "symbolic")
    assert exported.returncode == 0, exported.stderr + exported.stdout
    manifest = json.loads((model / "pianoray-model.json").read_text())
    assert manifest["experiment"] == r["winners"]["symbolic"] and manifest["members"] == ["fold0", "fold1"]
    evaluated = cli("evaluate", "--model", str(model), "--data", str(run.data), "--json", "--n-boot", "50")
    assert evaluated.returncode == 0, evaluated.stderr
    scores = json.loads(evaluated.stdout)["composite"]
    # the folds hold every labelled segment: all of it is music the model saw
    assert scores["unseen"] is None and scores["seen"]["model"]["n_segments"] == scores["all"]["model"]["n_segments"]
    files = sorted((run.data / "midi" / "perf").glob("*.mid"))[:3]
    predicted = cli("predict", "--model", str(model), "--csv", "--passage", "p", *map(str, files))
    assert predicted.returncode == 0, predicted.stderr
    rows = predicted.stdout.strip().splitlines()
    assert len(rows) == 4 and rows[0].startswith("input,passage,") and "1/3" in predicted.stdout
