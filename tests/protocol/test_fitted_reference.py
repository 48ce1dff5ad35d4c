"""A fitted reference in the protocol, without a Ray cluster: no Round-1 trial, its Round-2 fold trainable
fits and reports through the driver's callback into the ledger, and Round-2 summaries, selection and the
results read its per-fold test scores like a neural fold's."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.feedback import Feedback
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.progress import HOOKS, ProgressBoard, ProtocolCallback
from pianoray.protocol.run import (
    DRIVER_CPU,
    ROUND2,
    RunContext,
    _fold_resources_fn,
    _hooks,
    config_dict,
    is_fitted,
    round2_outcomes,
    round2_summaries,
)
from pianoray.protocol.selection import select_winners
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.trials import fitted_fold
from pianoray.protocol.view import build_results
from pianoray.settings import PROJECT_ROOT

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


@pytest.fixture(scope="module")
def cfg(tmp_path_factory: pytest.TempPathFactory):
    root = generate_demo(tmp_path_factory.mktemp("demo") / "d", seed=4, scale=0.3)
    return load_config(DEMO_YAML, {"data": {"root": str(root), "symbolic_cache": str(root / "symbolic")},
                                   "round2": {"folds": 2},
                                   "experiments": {"symbolic-gbm": {"model": {"max_iter": 30}}}})


def test_the_registry_says_which_experiments_are_fitted(cfg) -> None:
    assert "symbolic-gbm" in cfg.enabled_experiments()
    assert is_fitted(cfg, "symbolic-gbm") and not is_fitted(cfg, "symbolic-features")
    resources = _fold_resources_fn(config_dict(cfg))
    assert resources({"experiments": ["S2"]}) == {"cpu": DRIVER_CPU}  # only launches its TorchTrainer
    assert resources({"experiments": ["symbolic-gbm"]}) == {"cpu": cfg.resources_for("symbolic-gbm").cpu, "gpu": 0.0}
    assert resources({"experiments": ["F1", "F2"]}) == {"cpu": DRIVER_CPU}  # a Round-3 job of several fusions


def test_round2_reports_reach_the_ledger_summaries_and_results(cfg, tmp_path) -> None:
    storage = RunStorage(tmp_path, "run", fsync=False)
    ledger = Ledger(storage)
    tracks = {"symbolic-gbm": ("symbolic", "reference")}
    storage.write_json("run.json", {"name": "run", "tracks": tracks, "dimensions": []})
    ctx = RunContext(cfg, storage, ledger, tracks, Feedback(), key="fitted-test")
    board = ProgressBoard(tracks)
    HOOKS[ctx.key] = _hooks(ctx, board, lambda: None)
    try:
        callback = ProtocolCallback(ctx.key, ROUND2, cfg.round2.epochs)
        ledger.round_finished("round1", {"promoted": ["symbolic-gbm"], "exempt": ["symbolic-gbm"]})
        for fold in range(cfg.round2.folds):
            trial = SimpleNamespace(config={"experiments": ["symbolic-gbm"], "folds": [fold]}, trial_id=f"t{fold}",
                                    status="RUNNING")
            callback.on_trial_start(0, [], trial)
            reports = []
            fitted_fold(cfg, "symbolic-gbm", fold, reports.append)
            assert [bool(r.get("final")) for r in reports] == [False, True]
            for r in reports:
                callback.on_trial_result(0, [], trial, r)
            callback.on_trial_complete(0, [], trial)
    finally:
        HOOKS.pop(ctx.key, None)

    # the per-passage pair counts travel as one JSON string in the final report, into the fold event only
    for fold in range(cfg.round2.folds):
        (event,) = [e for e in ledger.events("fold") if e.fold == fold]
        assert set(event.payload["pair_counts"]) == {"val", "test"} and "pair_counts" not in event.payload["test"]
    outcomes = round2_outcomes(ledger, ["symbolic-gbm"])["symbolic-gbm"]
    for f in outcomes:
        # the counts give back the reported accuracies: the epoch's validation figure and the fold's test one
        assert f.val_counts.accuracy() == pytest.approx(f.val_pairwise)
        assert f.test_counts.accuracy() == pytest.approx(f.test["pairwise_accuracy"])
        assert f.test_counts.groups and not any(g.startswith("T1:") for g in f.test_counts.groups)
    summaries = round2_summaries(ledger, ["symbolic-gbm"])
    folds = summaries["symbolic-gbm"]["folds"]
    assert [f["fold"] for f in folds] == [0, 1]
    assert all(f["test_r2"] is not None and f["test_pairwise"] is not None and f["epochs"] == 1 for f in folds)
    assert summaries["symbolic-gbm"]["test"]["pairwise_accuracy"]["n"] == 2
    # a reference never wins, but it is in the summaries the report and #9's comparison read
    sel = select_winners(summaries, tracks)
    assert sel["winners"] == {"symbolic": None}
    ledger.selection({**sel, "summaries": summaries})
    results = build_results(ledger, cfg, storage)
    (exp,) = results["experiments"]
    assert results["selection"]["symbolic"]["margin"] is None  # no candidate, so no winner to compare
    assert results["selection"]["symbolic"]["versus_reference"] is None
    assert all(c["rung_epoch"] == 1 and c["selectable"] for c in results["curves"])
    assert (exp["name"], exp["role"], exp["furthest_round"]) == ("symbolic-gbm", "reference", ROUND2)
    assert exp["test"]["r2"]["mean"] is not None and len(exp["folds"]) == 2
    assert exp["resource_hours"]["cpu_hours"] > 0
