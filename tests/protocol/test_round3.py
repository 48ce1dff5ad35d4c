"""Round 3: the two winners, frozen, fused on every fold; its verdict; a skip when a fused track has no winner;
and a driver killed during Round 3 resumes it without rerunning anything that had finished."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pianoray.config import ProtocolConfig
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.run import RunContext, fusion_verdict, run_round3
from pianoray.protocol.schema import ResultsJSON
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.trials import BestStore
from pianoray.records import ROUND3
from pianoray.training.evaluate import Predictions
from tests.protocol.test_faults import RUN_TIMEOUT, assert_epochs_contiguous


def test_round3_is_skipped_with_its_reason_when_a_fused_track_has_no_winner(tmp_path: Path) -> None:
    cfg = ProtocolConfig.model_validate({"experiments": {"S2": {}}})
    storage = RunStorage(tmp_path, "r", fsync=False)
    ctx = RunContext(cfg, storage, Ledger(storage), {"S2": ("symbolic", "candidate")}, feedback=None)
    r3 = run_round3(ctx, {"audio": None, "symbolic": "S2"})
    assert r3 == {"skipped": "no audio winner to fuse", "experiments": []}
    verdict = fusion_verdict(ctx.ledger, cfg, r3, {"audio": None, "symbolic": "S2"})
    assert verdict["final"] == {"model": "S2", "kind": "single", "reason": "no audio winner to fuse",
                                "versus_references": None}
    assert verdict["comparisons"] == {} and verdict["skipped"] == "no audio winner to fuse"


def _kept(store: BestStore, experiment: str, fold: int, labels: np.ndarray, regression: np.ndarray) -> None:
    """A scored fold's kept test predictions (and its model, which marks the fold as stored whole)."""
    m = len(labels)
    ids = [f"f{fold}-s{i}" for i in range(m)]
    has = np.ones(m, dtype=bool)
    has[-1] = False  # an unlabelled segment: never counted
    store.put_test(experiment, fold, Predictions(ids, regression, regression, labels, has,
                                                 np.array([f"T1:p{i // 3}" for i in range(m)], dtype=object),
                                                 np.zeros((m, 0))))
    store.storage.write_bytes(store.rel(experiment, fold, BestStore.MODEL), b"weights")


def test_fusion_verdict_pairs_r2_and_the_winners_errors_from_the_kept_predictions(tmp_path: Path) -> None:
    """The R2 gap's CI (paired over passages, across folds) and the correlation of the two winners' errors come
    from each scored fold's kept test predictions."""
    cfg = ProtocolConfig.model_validate({"experiments": {"A1": {}, "S2": {}}})
    storage = RunStorage(tmp_path, "r", fsync=False)
    store = BestStore(storage.storage_uri, storage.name)
    rng = np.random.default_rng(0)
    for fold in (0, 1):
        y = rng.uniform(0.2, 0.8, size=(31, 3))
        noise = rng.normal(0, 0.1, size=y.shape)
        _kept(store, "A1", fold, y, y + noise)  # audio: errs by `noise`
        _kept(store, "S2", fold, y, y + 0.9 * noise + rng.normal(0, 0.02, size=y.shape))  # errs alike
        _kept(store, "F3", fold, y, y + 0.1 * noise)  # the fusion: far closer
    assert store.folds("F3") == [0, 1]
    ctx = RunContext(cfg, storage, Ledger(storage), {"A1": ("audio", "candidate"), "S2": ("symbolic", "candidate")},
                     feedback=None)
    v = fusion_verdict(ctx.ledger, cfg, {"experiments": ["F3"], "fuses": {"audio": "A1", "symbolic": "S2"}},
                       {"audio": "A1", "symbolic": "S2"}, store)
    c = v["comparisons"]["F3"]
    assert c["versus"] == "A1" and c["r2_gap"] > 0 and c["r2_ci"][0] > 0 and c["r2_verdict"] == "beats"
    e = v["error_correlation"]
    assert e["between"] == ["A1", "S2"] and e["segments"] == 60 and e["folds"] == 2
    assert 0.9 < e["mean"] < 1.0 and e["ci"][0] < e["mean"] < e["ci"][1] and len(e["per_dim"]) == 3
    # without kept predictions (a store that has none): no figure, never a made-up one
    empty = BestStore(str(tmp_path), "other")
    v = fusion_verdict(ctx.ledger, cfg, {"experiments": ["F3"]}, {"audio": "A1", "symbolic": "S2"}, empty)
    assert v["error_correlation"] is None and v["comparisons"]["F3"]["r2_ci"] == [None, None]


@pytest.mark.slow
def test_round3_fuses_the_winners_and_a_kill_resumes_it(fault_run_factory) -> None:
    run = fault_run_factory("r3", ["audio-frozen", "symbolic-features", "A1", "S2"],
                            round3={"enabled": True, "fusions": ["F2", "F3", "F-score"], "epochs": 3, "patience": 3})
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
    assert folds == {(f, k) for f in ("F2", "F3", "F-score") for k in (0, 1)}

    (verdict,) = run.events("fusion")
    v = verdict["payload"]
    winners = next(e["payload"]["winners"] for e in run.events("selection"))
    assert v["fuses"] == {"audio": winners["audio"], "symbolic": winners["symbolic"]}
    assert v["best_single"] in v["fuses"].values()
    for f in ("F2", "F3", "F-score"):
        c = v["comparisons"][f]
        assert c["versus"] == v["best_single"] and c["folds"] == 2 and None not in c["ci_points"]
        assert c["verdict"] in {"beats", "below", "no clear difference"}
        assert c["r2_gap"] is not None and None not in c["r2_ci"] and c["r2_verdict"] is not None
    assert -1 <= v["error_correlation"]["mean"] <= 1 and v["error_correlation"]["folds"] == 2
    assert set(v["gates"]) == {"F3"} and all(0 < g < 1 for g in v["gates"]["F3"])
    # the planted score-conditioned pairs of each fold's test passages, for every fusion and fused winner; the
    # fusions' difficulty head beside their probe
    assert v["not_run"] == {} and set(v["planted"]) == {"F2", "F3", "F-score", *v["fuses"].values()}
    for p in v["planted"].values():
        assert p["folds"] == 2 and p["pairs"] == 2 * p["passages"] > 0 and 0 <= p["accuracy"] <= 1
        assert p["ci"][0] <= p["accuracy"] <= p["ci"][1]
    assert all(v["difficulty"][f]["probe"] is not None for f in ("F2", "F3", "F-score"))
    assert all(v["difficulty"][w]["head"] is None for w in v["fuses"].values())
    final = v["final"]
    assert final["kind"] == ("fusion" if any(c["verdict"] == "beats" for c in v["comparisons"].values()) else "single")
    # the final model against the fused tracks' references (reported, never used to choose), named in its reason
    against = final["versus_references"]
    assert {r["reference"] for r in against["references"]} == {"audio-frozen", "symbolic-features"}
    assert against["winner"] == final["model"] and None not in against["ci_points"]
    said = f"{final['model']} against the best reference, {against['reference']}, on the test parts"

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
    assert r["fusion"]["final"] == final and r["winners"]["fusion"] in {"F2", "F3", "F-score"}
    md = (run.dir / "report" / "report.md").read_text()
    assert "Fusion track" in md and "R2 95% CI" in md and "errors of" in md and "gates_F3.png" in md
    assert "| Against chance (50%) |" in md and "| Head rho (test parts) | Probe rho |" in md
    fusion_table = md.split("### Fusion track")[1].split("\n\n")[1]  # the seed's Round-3 figures beside the rest
    assert "| Competition rho | STOP AUC |" in fusion_table.splitlines()[0]
    # the demo has no recordings: its caption names the group STOP AUC left out instead, and results.json keeps it
    assert "leaving one performer out at a time" in md.split("### Fusion track")[1].split("\n\n")[2]
    assert {rows[f]["stop_group"] for f in ("F2", "F3")} == {"performer"}
    assert said in md.split("## Round 3: fusion")[1].split("\n\n")[1]  # in Round 3's paragraph


def test_round3_records_the_fusion_track_in_the_run_once(tmp_path: Path) -> None:
    """run.json holds Rounds 1-2's tracks from the start; Round 3 adds the fusion track (its comparison figures:
    the seed's competition rho and STOP AUC too), so that reading the run needs no registry."""
    from pianoray.models import registry
    from pianoray.protocol.run import record_track_specs
    from pianoray.protocol.view import RunView

    storage = RunStorage(tmp_path, "r", fsync=False)
    storage.write_json("run.json", {"name": "r", "track_specs": [t.to_json() for t in registry.tracks(("neural",))]})
    for _ in range(2):
        record_track_specs(storage, registry.tracks(("fusion",)))
    specs = storage.read_json("run.json")["track_specs"]
    assert [t["name"] for t in specs] == ["audio", "symbolic", "fusion"]
    assert specs[-1]["metrics"][:2] == ["competition_rho", "stop_auc"]
    assert [t["name"] for t in RunView.read(Ledger(storage)).track_specs()] == ["audio", "symbolic", "fusion"]


def test_f_score_is_left_out_with_its_reason_where_a_segment_has_no_score(tmp_path: Path) -> None:
    """A fusion that reads the score runs only when every segment has one; the verdict carries why it did not."""
    from pianoray.data.cache import CacheWriter
    from pianoray.data.corpus import open_cache
    from pianoray.data.midi import NoteTable
    from pianoray.protocol.run import score_missing

    w = CacheWriter(tmp_path / "c", width=4, window_frames=4)
    midi, sha = w.write_midi(NoteTable.from_arrays([60, 62], [0.0, 0.5], [0.4, 0.9], [80, 80]), "midi/x.mid")
    for k in range(3):
        w.add("T1", {"segment_id": f"s-{k}", "piece": "A", "passage": "p", "performer": f"q{k}", "perf_midi": midi,
                     "perf_midi_sha": sha, **({"score_midi": midi, "score_midi_sha": sha} if k else {})},
              np.zeros((4, 4), dtype=np.float32))
    w.close()
    corpus = open_cache(tmp_path / "c")
    cfg = ProtocolConfig.model_validate({"experiments": {"A1": {}, "S2": {}}})
    assert score_missing("F1", corpus) is None
    assert score_missing("F-score", corpus) == ("1 of 3 segments have no score MIDI (e.g. s-0); it reads the "
                                                     "score of every segment it trains and is scored on")
    storage = RunStorage(tmp_path, "r", fsync=False)
    r3 = {"experiments": [], "fuses": {"audio": "A1", "symbolic": "S2"}, "not_run": {"F-score": "no score"}}
    v = fusion_verdict(Ledger(storage), cfg, r3, {"audio": "A1", "symbolic": "S2"})
    assert v["not_run"] == {"F-score": "no score"} and v["planted"] == {}


def test_planted_pairs_pool_each_folds_own_test_passages() -> None:
    from pianoray.protocol.run import planted_figure
    from pianoray.protocol.selection import FoldOutcome

    def fold(k: int, test: dict) -> FoldOutcome:
        return FoldOutcome(fold=k, val_pairwise=0.6, val_r2=0.1, best_epoch=1, epochs=2, test=test)

    folds = [fold(0, {"planted_passages": ["a", "b"], "planted_correct": [2.0, 1.5], "planted_pairs": [2, 2]}),
             fold(1, {"planted_passages": ["c"], "planted_correct": [2.0], "planted_pairs": [2]}),
             fold(2, {"planted_accuracy": None, "planted_why": "no planted pair of this fold's test passages"})]
    p = planted_figure(folds, n_boot=500, seed=0)
    assert p["accuracy"] == pytest.approx(5.5 / 6) and (p["pairs"], p["passages"], p["folds"]) == (6, 3, 2)
    assert p["ci"][0] <= p["accuracy"] <= p["ci"][1] <= 1.0 and p["verdict"] == "above chance"
    assert planted_figure(folds[2:], n_boot=500, seed=0) is None


def test_difficulty_figures_set_the_head_beside_the_probe_over_the_folds_that_have_them() -> None:
    from pianoray.protocol.run import difficulty_figures
    from pianoray.protocol.selection import FoldOutcome

    def fold(k: int, test: dict) -> FoldOutcome:
        return FoldOutcome(fold=k, val_pairwise=0.6, val_r2=0.1, best_epoch=1, epochs=2, test=test)

    folds = [fold(0, {"difficulty_head_rho": 0.8, "difficulty_rho": 0.4}),
             fold(1, {"difficulty_head_rho": 0.4, "difficulty_rho": None}),
             fold(2, {"difficulty_head_rho": None, "difficulty_head_rho_why": "2 pieces", "difficulty_rho": 0.2})]
    assert difficulty_figures(folds) == {"head": pytest.approx(0.6), "head_folds": 2, "probe": pytest.approx(0.3),
                                         "probe_folds": 2}
    assert difficulty_figures([fold(0, {"difficulty_rho": 0.5})]) == {"head": None, "head_folds": 0, "probe": 0.5,
                                                                      "probe_folds": 1}
    assert difficulty_figures([fold(0, {})]) is None
