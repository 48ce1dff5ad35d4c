"""Per-fold pretraining (``pretrain.per_fold``) and what a run states about pretraining.

A shared pretraining reads the corpus's own MIDI, so it sees the performances every fold later validates and
tests on (never their labels); per-fold pretraining leaves each fold's validation and test MIDI out. These
tests pin: the exclusion is exactly that fold's files, the folds' caches differ, each fold starts from its own
weights, and the record / report / `pianoray train` say which case a run is in.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pianoray.config import ProtocolConfig, load_config
from pianoray.data.demo import generate_demo
from pianoray.data.tiers import Tier
from pianoray.settings import PROJECT_ROOT
from pianoray.training.data import ExperimentData
from pianoray.training.pretrain import LOG_FILE, pretrain_key, pretraining_files, without
from pianoray.training.provenance import describe, eval_midi

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "d", seed=3, scale=0.3)


def _cfg(demo: Path, cache: Path, **pretrain) -> ProtocolConfig:
    over = {"epochs": 1, "max_files": None, "max_notes": 64, "cache": str(cache), **pretrain}
    return load_config(DEMO_YAML, {"data": {"root": str(demo)}, "pretrain": over})


def _paths(data: ExperimentData, segments: list[str]) -> set[Path]:
    m = data.corpus.manifest(Tier.T1).set_index("segment_id")
    return {data.corpus.path(m.loc[s, "perf_midi"]).resolve() for s in segments}


def test_a_folds_corpus_leaves_out_exactly_its_validation_and_test_midi(demo: Path, tmp_path: Path) -> None:
    cfg = _cfg(demo, tmp_path / "pc")
    data = ExperimentData.from_config(cfg)
    everything = pretraining_files(cfg, data.corpus)
    for k in range(cfg.data.k):
        part = data.fold(k)
        held = _paths(data, part["val"] + part["test"])
        kept, removed, read = without(everything, eval_midi(data, [k])[k])
        assert held and set(everything) - set(kept) == held  # those files, and nothing else
        assert _paths(data, part["train"]) <= set(kept)
        assert len(removed) == len(held) and len(read) == len(kept)


def test_the_left_out_set_and_the_format_enter_the_cache_key(monkeypatch) -> None:
    from pianoray.training import pretrain

    base = pretrain_key("files", "task", {"d": 1}, 2)
    monkeypatch.setattr(pretrain, "PRETRAIN_FORMAT", pretrain.PRETRAIN_FORMAT + 1)  # code that trains otherwise
    assert pretrain_key("files", "task", {"d": 1}, 2) != base
    monkeypatch.undo()
    assert pretrain_key("files", "task", {"d": 1}, 2, []) == base  # a shared pretraining keeps its old key
    assert pretrain_key("files", "task", {"d": 1}, 2, ["a"]) != base
    assert pretrain_key("files", "task", {"d": 1}, 2, ["a"]) != pretrain_key("files", "task", {"d": 1}, 2, ["b"])


def test_pretraining_is_reproducible_whatever_the_global_rng_did_before(demo: Path, tmp_path: Path) -> None:
    """Two pretrainings of one experiment on one corpus give the same weights, though the global torch RNG was
    in different states (a fresh process draws its seed at random): the encoder is built after seeding."""
    from pianoray.training.pretrain import ENCODER_FILE, pretrain_experiment

    weights = []
    for k, cache in enumerate(("a", "b")):
        cfg = _cfg(demo, tmp_path / cache)
        torch.manual_seed(1000 + k)
        torch.rand(k + 1)
        result = pretrain_experiment(cfg, "S2", ExperimentData.from_config(cfg))
        weights.append(torch.load(result.path / ENCODER_FILE, map_location="cpu"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][n], weights[1][n]) for n in weights[0])


def test_per_fold_pretraining_gives_each_fold_its_own_weights(demo: Path, tmp_path: Path) -> None:
    from pianoray.training.loop import build_model
    from pianoray.training.pretrain import ENCODER_FILE
    from pianoray.training.runner import pretrain_for_folds

    cfg = _cfg(demo, tmp_path / "pc", per_fold=True)
    data = ExperimentData.from_config(cfg)
    out, record = pretrain_for_folds(cfg, "S3", data, folds=[0, 1])
    paths = out.experiments["S3"].init_encoder_folds
    assert set(paths) == {0, 1} and paths[0] != paths[1] and out.experiments["S3"].init_encoder is None
    assert record["per_fold"] is True and record["saw_eval_midi"] is False
    assert record["folds"]["0"]["key"] != record["folds"]["1"]["key"]
    everything = len(pretraining_files(cfg, data.corpus))
    for k in (0, 1):
        fold = record["folds"][str(k)]
        assert fold["eval_midi_seen"] == 0 and fold["left_out"] == fold["eval_midi"] > 0
        log = json.loads((paths[k] / LOG_FILE).read_text())
        assert log["files"] == fold["files"] == everything - fold["left_out"]
    # The config travels to Ray trials as JSON: the fold -> weights map must survive it.
    again = ProtocolConfig.model_validate(json.loads(out.model_dump_json()))
    assert again.init_encoder_for("S3", 1) == paths[1] and again.init_encoder_for("S3", None) is None
    model = build_model(again, "S3", data, fold=1)
    want = torch.load(paths[1] / ENCODER_FILE, map_location="cpu")
    got = model.encoder.state_dict()
    assert all(torch.equal(got[n], w) for n, w in want.items())


def test_a_shared_pretraining_says_it_saw_the_evaluation_folds_midi(demo: Path, tmp_path: Path) -> None:
    from pianoray.training.runner import pretrain_for_folds

    cfg = _cfg(demo, tmp_path / "pc")
    data = ExperimentData.from_config(cfg)
    out, record = pretrain_for_folds(cfg, "S3", data, folds=[0, 2])
    assert out.experiments["S3"].init_encoder is not None and not out.experiments["S3"].init_encoder_folds
    assert record["per_fold"] is False and record["saw_eval_midi"] is True and record["labels_used"] is False
    assert record["eval_midi_seen"] == record["eval_midi"] == len(eval_midi(data, [0])[0] | eval_midi(data, [2])[2])
    sentence = describe(record)
    assert sentence.startswith("S3: self-supervised pretraining saw the evaluation folds' MIDI")
    assert "never their labels" in sentence and "folds 0, 2" in sentence


def test_the_report_states_whether_pretraining_saw_the_evaluation_midi(tmp_path: Path) -> None:
    from pianoray.protocol.ledger import Event, Ledger
    from pianoray.protocol.storage import RunStorage
    from pianoray.protocol.view import build_results
    from pianoray.report.document import build_blocks, render_html, render_markdown

    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    shared = {"experiment": "S2", "per_fold": False, "sources": ["/data/asap", "the corpus's performance MIDI"],
              "files": 600, "saw_eval_midi": True, "eval_midi": 900, "eval_midi_seen": 300,
              "folds": {str(k): {"files": 600} for k in range(4)}}
    own = {"experiment": "S1", "per_fold": True, "sources": ["the corpus's performance MIDI"], "files": 900,
           "saw_eval_midi": False, "eval_midi": 900, "eval_midi_seen": 0,
           "folds": {str(k): {"files": 700 + k} for k in range(4)}}
    for rec in (shared, own):
        ledger.append(Event(kind="pretrain", event_id=f"pretrain/{rec['experiment']}", time=1.0,
                            experiment=rec["experiment"], payload=rec))
    results = build_results(ledger)
    assert results["pretraining"]["S2"]["saw_eval_midi"] is True
    assert results["pretraining"]["S1"]["saw_eval_midi"] is False
    md = render_markdown(build_blocks(results, {}))
    assert "S2: self-supervised pretraining saw the evaluation folds' MIDI (300 of the 900" in md
    assert "S1: self-supervised pretraining did not see the evaluation folds' MIDI" in md
    assert "700-703 MIDI files" in md
    assert "did not see the evaluation folds" in render_html(build_blocks(results, {}))
    empty = render_markdown(build_blocks(build_results(Ledger(RunStorage(tmp_path, "other", fsync=False))), {}))
    assert "No self-supervised pretraining is recorded" in empty


def test_the_run_records_each_pretraining_in_its_ledger(demo: Path, tmp_path: Path) -> None:
    from pianoray.protocol.ledger import Ledger
    from pianoray.protocol.run import pretrain_encoders
    from pianoray.protocol.storage import RunStorage

    cfg = _cfg(demo, tmp_path / "pc", per_fold=True)
    for name, exp in cfg.experiments.items():
        exp.enabled = name == "S3"
    cfg.round2.folds = 2
    ledger = Ledger(RunStorage(tmp_path, "run", fsync=False))
    out = pretrain_encoders(cfg, None, ledger)
    (event,) = ledger.events("pretrain")
    assert event.experiment == "S3" and sorted(event.payload["folds"]) == ["0", "1"]  # Round 1's fold 0, Round 2's 0-1
    assert event.payload["saw_eval_midi"] is False
    assert {str(k): str(p) for k, p in out.experiments["S3"].init_encoder_folds.items()} == {
        k: f["path"] for k, f in event.payload["folds"].items()}
