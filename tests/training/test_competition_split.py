"""Competition rounds (T2) are split along with the folds: a fold never trains on the rounds it holds out,
and its competition Spearman is computed on those rounds alone (not reported with fewer than two)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.data.folds import FoldSet, corpus_folds, split_rounds
from pianoray.data.loaders import build_split
from pianoray.data.tiers import Tier
from pianoray.settings import PROJECT_ROOT
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions
from pianoray.training.scoring import _competition


def test_split_rounds_deals_each_round_to_one_fold_deterministically():
    rounds = [f"r{i}" for i in range(10)]
    split = split_rounds(rounds, 4, seed=3)
    assert sorted(r for part in split for r in part) == rounds
    assert [len(p) for p in split] == [3, 3, 2, 2]
    assert split_rounds(list(reversed(rounds)) * 2, 4, seed=3) == split  # order and repeats do not matter
    assert split_rounds(rounds, 4, seed=4) != split


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = generate_demo(tmp_path_factory.mktemp("demo") / "d", seed=5, scale=0.3)
    cfg = load_config(PROJECT_ROOT / "experiments" / "demo.yaml", {"data": {"root": str(root)}})
    return ExperimentData.from_config(cfg)


def test_training_never_sees_a_held_out_round(demo_data, tmp_path):
    rounds = demo_data.folds.competition_rounds
    all_rounds = set(demo_data.corpus.manifest(Tier.T2)["round_id"])
    assert rounds is not None and set().union(*map(set, rounds)) == all_rounds
    for k in range(demo_data.folds.k):
        fold = demo_data.fold(k)
        train = build_split(demo_data.corpus, fold, "train", tiers=[Tier.T1, Tier.T2], views=(),
                            labels=demo_data.labels)
        trained = {r["round_id"] for r in train.parts[Tier.T2].rows}
        assert trained == all_rounds - set(fold["held_rounds"])
    # a folds file keeps its split; one written before rounds were split gets them from the corpus
    path = tmp_path / "folds.json"
    demo_data.folds.save(path)
    assert FoldSet.load(path).competition_rounds == rounds


def _t2_data(rounds: dict[str, list[int]]):
    """A stand-in ExperimentData whose corpus has only a T2 manifest: round -> placements."""
    rows = [{"segment_id": f"{r}_{i}", "round_id": r, "placement": p}
            for r, places in rounds.items() for i, p in enumerate(places)]
    m = pd.DataFrame(rows)
    return SimpleNamespace(corpus=SimpleNamespace(manifest=lambda tier: m)), m


def _pred(ids, overall):
    n = len(ids)
    return Predictions(list(ids), np.repeat(np.asarray(overall, float)[:, None], 2, axis=1), np.zeros((n, 2)),
                       np.zeros((n, 2)), np.zeros(n, bool), np.array(ids, dtype=object), np.zeros((n, 4)))


def test_competition_rho_only_on_held_out_rounds():
    data, m = _t2_data({"a": [1, 2, 3, 4], "b": [1, 2, 3, 4], "c": [1, 2, 3, 4]})
    # perfect (better placement, higher score) on held-out a and b; exactly wrong on trained round c
    overall = np.where(m["round_id"] == "c", m["placement"], -m["placement"]).astype(float)
    out = _competition(data, _pred(m["segment_id"], overall), ["a", "b"])
    assert out["competition_rho"] == pytest.approx(1.0) and out["competition_rounds"] == 2
    assert _competition(data, _pred(m["segment_id"], overall), ["a"])["competition_rho"] is None
    assert _competition(data, None, ["a", "b"])["competition_rho"] is None


@pytest.mark.realdata
def test_real_competition_rounds_split_with_the_folds(shared_data, percepiano_dir):
    """The real competition metadata (Chopin 2021: 3 rounds) beside the real PercePiano folds: each round is
    held out by exactly one fold, its training part drops it, and with fewer than two held-out rounds a
    fold reports no competition Spearman."""
    from pianoray.config import DataConfig
    from pianoray.data.competition import load_competition_segments, t2_manifest
    from pianoray.data.corpus import open_corpus

    pp = open_corpus(DataConfig(root=percepiano_dir, source="percepiano", demo=None))
    t2 = t2_manifest(load_competition_segments(shared_data / "competition")).assign(passage=None)
    manifests = {Tier.T1: pp.manifest(Tier.T1), Tier.T2: t2}
    corpus = SimpleNamespace(tiers=[Tier.T1, Tier.T2], manifest=lambda t: manifests[Tier(t)], path=pp.path,
                             root=pp.root)
    fs = corpus_folds(corpus, k=4, seed=42)
    rounds = sorted(set(t2["round_id"]))
    assert len(rounds) == 3 and sorted(r for part in fs.competition_rounds for r in part) == rounds
    for k, held in enumerate(fs.competition_rounds):
        fold = {"train": list(fs[k].train), "val": list(fs[k].val), "test": list(fs[k].test),
                "held_rounds": list(held)}
        train = build_split(corpus, fold, "train", tiers=[Tier.T1, Tier.T2], views=(),
                            labels=pp.labels("percepiano19")[1])
        assert {r["round_id"] for r in train.parts[Tier.T2].rows} == set(rounds) - set(held)
        scored = _competition(SimpleNamespace(corpus=corpus),
                              _pred(t2["segment_id"], -t2["placement"].to_numpy(float)), list(held))
        assert scored["competition_rho"] is None and scored["competition_rounds"] == len(held) <= 1
