"""The four symbolic views: load from a cache or compute, crop, collate."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pianoray.data.midi import NoteTable, file_sha256, write_midi
from pianoray.data.symbolic import CURVE_CHANNELS, SymbolicCache, build_symbolic_cache, crop_graph_arrays
from pianoray.data.symbolic.graphs import graph_arrays
from pianoray.data.symbolic.remi import RemiTokenizer
from pianoray.data.views import SegmentContext, get_view


@dataclass
class FakeCorpus:
    root: Path
    symbolic_cache: SymbolicCache | None = None


def midi(folder: Path, n: int = 60) -> Path:
    rng = np.random.default_rng(n)
    onset = np.sort(rng.uniform(0, 10, n))
    path = folder / f"seg_{n}.mid"
    write_midi(NoteTable.from_arrays(rng.integers(40, 90, n), onset, onset + 0.4, rng.integers(20, 120, n)), path)
    return path


def ctx(corpus: FakeCorpus, path: Path, *, train: bool, max_len: int, seed: int = 0) -> SegmentContext:
    row = {"segment_id": path.stem, "perf_midi": path.name, "perf_midi_sha": file_sha256(path)}
    return SegmentContext(row, corpus, train, np.random.default_rng(seed), max_len)


def test_views_from_cache_and_computed_agree(tmp_path: Path) -> None:
    p1, p2 = midi(tmp_path, 60), midi(tmp_path, 45)
    build_symbolic_cache([p1, p2], tmp_path / "cache", workers=1, progress=False)
    cached = FakeCorpus(tmp_path, SymbolicCache(tmp_path / "cache"))
    plain = FakeCorpus(tmp_path, None)
    for name in ("remi", "graph", "hetero_graph", "curves"):
        view = get_view(name)
        assert view.needs == "perf_midi"
        items = [view.load(ctx(cached, p, train=False, max_len=40)) for p in (p1, p2)]
        again = [view.load(ctx(plain, p, train=False, max_len=40)) for p in (p1, p2)]
        batch = view.collate(items)
        same = view.collate(again)
        for key, value in batch.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(value, same[key]), (name, key)
    remi = get_view("remi").collate([get_view("remi").load(ctx(cached, p, train=False, max_len=40)) for p in (p1, p2)])
    assert remi["remi"].shape == (2, 40) and remi["remi_mask"].all()
    curve_items = [get_view("curves").load(ctx(cached, p, train=False, max_len=1000)) for p in (p1, p2)]
    curves = get_view("curves").collate(curve_items)
    assert curves["curves"].shape == (2, max(len(c) for c in curve_items), len(CURVE_CHANNELS))
    assert curves["curves_mask"].sum(1).tolist() == [len(c) for c in curve_items]
    assert len(curve_items[0]) != len(curve_items[1])  # so the padding is exercised
    assert torch.all(curves["curves"][~curves["curves_mask"]] == 0)
    graphs = get_view("graph").collate([get_view("graph").load(ctx(cached, p, train=False, max_len=30)) for p in (p1, p2)])
    assert graphs["graph"].num_graphs == 2 and graphs["graph"].x.shape == (60, 6)
    hetero = get_view("hetero_graph").collate(
        [get_view("hetero_graph").load(ctx(cached, p, train=False, max_len=30)) for p in (p1, p2)]
    )
    assert hetero["hetero_graph"]["note"].x.shape == (60, 6)


def test_train_crops_are_random_eval_crops_fixed(tmp_path: Path) -> None:
    p = midi(tmp_path, 80)
    corpus = FakeCorpus(tmp_path)
    view = get_view("remi")
    evals = {tuple(view.load(ctx(corpus, p, train=False, max_len=20, seed=s)).tolist()) for s in range(5)}
    trains = {tuple(view.load(ctx(corpus, p, train=True, max_len=20, seed=s)).tolist()) for s in range(5)}
    assert len(evals) == 1 and len(trains) > 1
    assert all(len(t) == 20 for t in trains)
    bar = RemiTokenizer().vocab()["Bar_None"]
    assert all(t[0] == bar for t in trains), "REMI crops start at a bar (token times stay exact)"


def test_graph_crop_keeps_internal_edges_renumbered() -> None:
    notes = NoteTable.from_arrays(np.arange(60, 70), np.arange(10) * 0.5, np.arange(10) * 0.5 + 0.4, np.full(10, 64))
    g = graph_arrays(notes)
    c = crop_graph_arrays(g, 3, 7)
    assert c["x"].shape == (4, 6) and c["x"][0, 2] == 0.0
    assert c["edge_index"].min() >= 0 and c["edge_index"].max() < 4
    inside = ((g["edge_index"] >= 3) & (g["edge_index"] < 7)).all(0)
    assert c["edge_index"].shape[1] == int(inside.sum()) == len(c["edge_type"]) == len(c["edge_attr"])
