"""Fitted references (symbolic-gbm): one fit per fold, scored with the same metrics as the neural models, on
the demo corpus and on every fold of the real PercePiano subset; features cached by MIDI content hash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.objectives.metrics import PairCounts
from pianoray.settings import PROJECT_ROOT
from pianoray.training import reference
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions, validation_metrics
from pianoray.training.reference import ReferenceDataError, fit_and_score, segment_features

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"
PERCEPIANO_YAML = PROJECT_ROOT / "experiments" / "percepiano.yaml"
SMALL = {"max_iter": 40}  # a quick fit: these tests check plumbing and metrics, not the reference's quality
# What evaluate_checkpoint adds to the validation metrics for a neural fold (None where a metric does not apply).
SCORING_KEYS = {"epoch", "robustness_drop", "robustness_pearson", "competition_rho", "difficulty_rho", "stop_auc"}


def metric_keys(prefix: str) -> set[str]:
    """The keys validation_metrics produces (so this test follows evaluate.py), without their prefix."""
    p = Predictions(["a", "b"], np.array([[0.1], [0.9]]), np.array([[0.1], [0.9]]), np.array([[0.0], [1.0]]),
                    np.ones(2, bool), np.array(["p", "p"], dtype=object), np.zeros((2, 0)))
    return {k.removeprefix(f"{prefix}/") for k in validation_metrics(p, threshold=0.05, n_boot=0, prefix=prefix)}


@pytest.fixture(scope="module")
def demo_cfg(tmp_path_factory: pytest.TempPathFactory):
    root = generate_demo(tmp_path_factory.mktemp("demo") / "d", seed=3, scale=0.3)
    return load_config(DEMO_YAML, {"data": {"root": str(root), "symbolic_cache": str(root / "symbolic")},
                                   "experiments": {"symbolic-gbm": {"model": SMALL}}})


def test_fit_and_score_on_every_demo_fold(demo_cfg) -> None:
    data = ExperimentData.from_config(demo_cfg)
    for k in range(demo_cfg.data.k):
        val, test = fit_and_score(demo_cfg, "symbolic-gbm", data, k, n_boot=20)
        assert {f"val/{m}" for m in metric_keys("val")} <= set(val)
        assert metric_keys("test") | SCORING_KEYS <= set(test)
        for m in ("pairwise_accuracy", "pairwise_accuracy_t0", "r2"):
            assert math.isfinite(val[f"val/{m}"]) and math.isfinite(test[m]), (k, m)
        assert 0.0 <= test["pairwise_accuracy"] <= 1.0 and test["n"] == len(data.fold(k)["test"])
        assert len(test["r2_per_dim"]) == len(data.label_names) and test["epoch"] == 1
        # per-passage counts of both parts, for selection's paired bootstraps: they give back the accuracies
        counts = {k: PairCounts.from_json(v) for k, v in test["pair_counts"].items()}
        assert counts["val"].accuracy() == pytest.approx(val["val/pairwise_accuracy"], nan_ok=True)
        assert counts["test"].accuracy() == pytest.approx(test["pairwise_accuracy"])
    with pytest.raises(ValueError, match="not a fitted reference"):
        fit_and_score(demo_cfg, "symbolic-features", data, 0)


def test_features_are_cached_on_disk_by_content_hash(demo_cfg, monkeypatch: pytest.MonkeyPatch) -> None:
    data = ExperimentData.from_config(demo_cfg)
    spec = reference.fitted_spec(demo_cfg, "symbolic-gbm")
    ids = data.fold(0)["test"][:5]
    cache = reference.features_cache_file(demo_cfg, data.corpus, spec.features_id)
    # an empty process cache: another test may have computed this corpus's features (the same MIDI content)
    monkeypatch.setattr(reference, "_MEMORY", {})
    x, passages = segment_features(spec, data.corpus, ids, cache)
    assert cache.is_file() and x.shape == (5, len(spec.features(_notes(data, ids[0]))))
    assert passages.tolist() == data.corpus.manifest("T1").set_index("segment_id").loc[ids, "passage"].tolist()

    class NoCompute:  # the same feature definition, but computing anything fails: rows must come from disk
        name, features_id = spec.name, spec.features_id

        @staticmethod
        def features(notes):
            raise AssertionError("recomputed a cached segment")

    monkeypatch.setattr(reference, "_MEMORY", {})
    again, _ = segment_features(NoCompute, data.corpus, ids, cache)
    assert np.array_equal(again, x)
    with pytest.raises(ReferenceDataError, match="not in T1"):
        segment_features(spec, data.corpus, ["no-such-segment"], cache)


def _notes(data, segment_id: str):
    from pianoray.data.midi import load_notes

    m = data.corpus.manifest("T1").set_index("segment_id")
    return load_notes(data.corpus.path(m.at[segment_id, "perf_midi"]))


@pytest.mark.realdata
def test_scored_on_every_percepiano_fold_with_the_neural_metric_keys(percepiano_dir: Path, tmp_path: Path) -> None:
    cfg = load_config(PERCEPIANO_YAML, {"data": {"root": str(percepiano_dir), "labels": "percepiano19",
                                                 "symbolic_cache": str(tmp_path / "symbolic")},
                                        "experiments": {"symbolic-gbm": {"model": SMALL}}})
    data = ExperimentData.from_config(cfg)
    assert len(data.folds.folds) == 4 and len(data.label_names) == 19
    for k in range(4):
        val, test = fit_and_score(cfg, "symbolic-gbm", data, k, n_boot=20)
        assert metric_keys("test") | SCORING_KEYS <= set(test), k
        assert {f"val/{m}" for m in metric_keys("val")} <= set(val), k
        # a few hundred test segments of unseen music; the features carry real signal even with a quick fit
        assert test["n"] > 150 and test["pairwise_accuracy"] > 0.6 and test["r2"] > 0.1, (k, test["r2"])
