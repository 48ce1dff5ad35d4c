"""evaluate_checkpoint's per-passage pair counts (what selection's paired bootstraps read for a neural fold), the test
predictions it keeps, and its STOP probe's groups."""

from __future__ import annotations

import numpy as np
import pytest

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.objectives.metrics import PairCounts
from pianoray.records import PAIR_COUNTS
from pianoray.settings import PROJECT_ROOT
from pianoray.training.checkpoint import TopKSink
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions
from pianoray.training.loop import Budget, fit
from pianoray.training.scoring import evaluate_checkpoint, passage_counts, stop_groups

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


def test_passage_counts_key_passages_by_name_and_skip_unlabelled() -> None:
    pred = Predictions(["a", "b", "c", "d"], np.array([[0.1], [0.9], [0.5], [0.4]]), np.zeros((4, 1)),
                       np.array([[0.0], [1.0], [0.2], [0.9]]), np.array([True, True, True, False]),
                       np.array(["T1:p", "T1:p", "T1:q", "T1:q"], dtype=object), np.zeros((4, 0)))
    c = passage_counts(pred, threshold=0.05)
    assert c.groups == ("p",) and c.total.tolist() == [[1.0]] and c.accuracy() == 1.0  # q: one labelled segment
    assert PairCounts.from_json(c.to_json()).groups == ("p",)


def test_evaluate_checkpoint_counts_give_back_the_reported_accuracies(tmp_path) -> None:
    root = generate_demo(tmp_path / "demo", seed=5, scale=0.3)
    cfg = load_config(DEMO_YAML, {"data": {"root": str(root), "symbolic_cache": str(root / "symbolic")}})
    data = ExperimentData.from_config(cfg)
    sink = TopKSink(tmp_path / "ckpt", k=1)
    (epoch,) = list(fit(cfg, "audio-frozen", data, 1, Budget(1), sink=sink))
    out, predictions = evaluate_checkpoint(cfg, "audio-frozen", data, 1, sink.best(), n_boot=0)
    val, test = (PairCounts.from_json(out[PAIR_COUNTS][k]) for k in ("val", "test"))
    # the best checkpoint's validation counts are the validation the loop selected it on
    assert val.accuracy() == pytest.approx(epoch.metrics["val/pairwise_accuracy"])
    assert test.accuracy() == pytest.approx(out["pairwise_accuracy"])
    assert set(test.groups).isdisjoint(val.groups) and not any(g.startswith("T1:") for g in test.groups)
    # the predictions it returns (kept beside the fold's best model) are the test part's, scored alike
    assert set(predictions.segment_ids) == set(data.fold(1)["test"]) and "gates" not in out
    assert passage_counts(predictions, 0.05).accuracy() == pytest.approx(out["pairwise_accuracy"])
    # STOP AUC leaves one recording out; the demo has none, so its performers stand in
    labelled = [s for s in data.corpus.stop]
    performers = data.corpus.manifest("T1").set_index("segment_id").loc[labelled, "performer"]
    assert stop_groups(data.corpus, labelled).tolist() == performers.astype(str).tolist()
    assert 3 <= out["stop_groups"] <= performers.nunique() and 0.0 <= out["stop_auc"] <= 1.0
    assert out["stop_group"] == "performer"  # named in the fold's record, so the report can say what stood in


def test_a_probe_that_cannot_be_scored_says_why() -> None:
    """No figure is made up and none goes missing silently: None, with the reason beside it."""
    from types import SimpleNamespace

    import pandas as pd

    from pianoray.training.scoring import _probes

    ids = [f"s{i}" for i in range(24)]
    manifest = pd.DataFrame({"segment_id": ids, "piece": [f"p{i % 3}" for i in range(24)],
                             "performer": [f"v{i % 4}" for i in range(24)]})
    pred = Predictions(ids, np.zeros((24, 1)), np.zeros((24, 1)), np.zeros((24, 1)), np.ones(24, bool),
                       np.array(["T1:p"] * 24, dtype=object), np.random.default_rng(0).normal(size=(24, 4)))

    def probes(stop: dict, grades: dict) -> dict:
        corpus = SimpleNamespace(tiers=["T1"], manifest=lambda t: manifest, difficulty=grades, stop=stop)
        return _probes(SimpleNamespace(corpus=corpus), pred, pred)

    out = probes({}, {"p0": 3.0})
    assert out["difficulty_rho"] is None and out["difficulty_rho_why"] == "1 graded pieces among the scored segments (5 needed)"
    assert out["stop_auc"] is None and out["stop_auc_why"] == "0 scored segments carry a STOP label (20 needed)"
    assert probes({s: 0 for s in ids}, {})["stop_auc_why"] == "every STOP label is the same"
    scored = probes({s: i % 2 for i, s in enumerate(ids)}, {})
    assert scored["stop_groups"] == 4 and 0.0 <= scored["stop_auc"] <= 1.0 and "stop_auc_why" not in scored
    assert scored["stop_group"] == "performer"
    # a corpus with recordings (the seed's masterclass videos) leaves one recording out, not one performer
    manifest["recording"] = [f"r{i % 3}" for i in range(24)]
    scored = probes({s: i % 2 for i, s in enumerate(ids)}, {})
    assert (scored["stop_group"], scored["stop_groups"]) == ("recording", 3)


def test_the_difficulty_head_is_scored_per_test_piece_against_the_grades() -> None:
    """Each graded piece's mean head grade over its test segments against its grade (an ungraded piece counts
    nowhere); fewer than 3 graded pieces: None, saying why."""
    from types import SimpleNamespace

    import pandas as pd

    from pianoray.training.scoring import _difficulty_head

    ids = [f"s{i}" for i in range(10)]
    pieces = ["a", "a", "b", "b", "c", "c", "d", "d", "x", "x"]
    head = np.array([0.1, 0.3, 0.5, 0.5, 0.2, 0.4, 0.9, 0.7, 0.0, 1.0])  # piece means a .2, b .5, c .3, d .8
    test = Predictions(ids, np.zeros((10, 1)), np.zeros((10, 1)), np.zeros((10, 1)), np.ones(10, bool),
                       np.array(["T1:p"] * 10, dtype=object), np.zeros((10, 0)), head)
    manifest = pd.DataFrame({"segment_id": ids, "piece": pieces})

    def scored(grades: dict) -> dict:
        corpus = SimpleNamespace(manifest=lambda t: manifest, difficulty=grades)
        return _difficulty_head(SimpleNamespace(corpus=corpus), test, n_boot=100, seed=0)

    out = scored({"a": 1, "b": 7, "c": 5, "d": 9})  # by grade and by head alike: a < c < b < d
    assert out["difficulty_head_rho"] == pytest.approx(1.0) and out["difficulty_head_pieces"] == 4
    out = scored({"a": 9, "b": 7, "c": 5, "d": 1})
    assert out["difficulty_head_rho"] == pytest.approx(-0.8)  # head ranks 1, 3, 2, 4 against grades 4, 3, 2, 1
    assert scored({"a": 1, "b": 2}) == {"difficulty_head_rho": None,
                                        "difficulty_head_rho_why": "2 graded pieces in the test part (3 needed)"}
