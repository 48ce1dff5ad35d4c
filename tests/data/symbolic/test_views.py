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
    build_symbolic_cache([p1, p2], tmp_path / "cache", workers=1)
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


def test_remi_windows_start_at_bars_and_cover_every_token_once() -> None:
    from pianoray.data.symbolic import remi_windows

    ids = np.array([1, 5, 5, 1, 5, 5, 5, 5, 5, 5, 1, 5])  # bar id 1; the second bar is longer than max_len
    assert remi_windows(ids, 4, 1) == [(0, 3), (3, 7), (7, 10), (10, 12)]
    assert remi_windows(ids, 100, 1) == [(0, 12)]
    assert remi_windows(ids[:0], 4, 1) == [(0, 0)]


def _windows(view, corpus, path, max_len):
    c = ctx(corpus, path, train=False, max_len=max_len)
    spans = view.windows(c)
    items = [view.load(SegmentContext(c.row, corpus, False, c.rng, max_len, span=s)) for s in spans]
    assert spans[0][0] == 0 and spans[-1][1] > 0
    assert all(a == prev_b for (a, _), (_, prev_b) in zip(spans[1:], spans[:-1]))  # contiguous, no overlap
    assert all(0 < b - a <= max_len for a, b in spans)
    return spans, items


def test_symbolic_windows_cover_every_item_once(tmp_path: Path) -> None:
    p = midi(tmp_path, 80)
    corpus = FakeCorpus(tmp_path)
    from pianoray.data.symbolic import symbolic_arrays

    c = ctx(corpus, p, train=False, max_len=40)
    ids = symbolic_arrays(c, "remi")
    spans, items = _windows(get_view("remi"), corpus, p, 100)  # bars here hold 60-80 tokens
    bar = RemiTokenizer().vocab()["Bar_None"]
    assert len(spans) > 2 and spans[-1][1] == len(ids)
    assert np.array_equal(np.concatenate(items), ids)
    assert all(item[0] == bar for item in items[1:]), "windows after the first start at a Bar"

    curves = symbolic_arrays(c, "curves")
    spans, items = _windows(get_view("curves"), corpus, p, 40)
    assert len(spans) > 1 and np.array_equal(np.concatenate(items), curves)

    for name in ("graph", "hetero_graph"):
        full = symbolic_arrays(c, name)
        spans, items = _windows(get_view(name), corpus, p, 30)
        assert [a for a, _ in spans] == [0, 30, 60] and spans[-1][1] == 80
        for (a, b), g in zip(spans, items):
            want = crop_graph_arrays(full, a, b)
            store = g["note"] if name == "hetero_graph" else g
            assert torch.equal(store.x, torch.from_numpy(want["x"]))
            if name == "graph":
                assert torch.equal(g.edge_index, torch.from_numpy(want["edge_index"]).long())
        pitch = torch.cat([(g["note"] if name == "hetero_graph" else g).x[:, 0] for g in items])
        assert torch.equal(pitch, torch.from_numpy(full["x"][:, 0]))  # every note once, in order


def test_training_crops_ignore_windows(tmp_path: Path) -> None:
    """A training load draws its crop exactly as before windows existed (seeded training is unchanged)."""
    from pianoray.data.symbolic import crop_window, symbolic_arrays

    p = midi(tmp_path, 80)
    corpus = FakeCorpus(tmp_path)
    curves = symbolic_arrays(ctx(corpus, p, train=False, max_len=20), "curves")
    for seed in range(5):
        a, b = crop_window(len(curves), 20, True, np.random.default_rng(seed))
        got = get_view("curves").load(ctx(corpus, p, train=True, max_len=20, seed=seed))
        assert np.array_equal(got, curves[a:b])
