"""Symbolic features from a NoteTable (REMI tokens, note graphs, continuous curves) and their views.

Registers four views (``pianoray.data.views``):
  remi          inputs["remi"] long [B, L] (PAD = tokenizer pad id 0), inputs["remi_mask"] bool [B, L]
  graph         inputs["graph"] a PyG ``Batch`` of ``Data`` (x [N,6], edge_index, edge_type, edge_attr [E,5])
  hetero_graph  inputs["hetero_graph"] a PyG ``Batch`` of ``HeteroData`` (node type "note")
  curves        inputs["curves"] float [B, T, C], inputs["curves_mask"] bool [B, T]

``load(ctx)`` reads ``ctx.row["perf_midi"]`` (relative paths are relative to ``ctx.corpus.root``) and
``ctx.row["perf_midi_sha"]``. Features come from ``ctx.corpus.symbolic_cache`` (a ``SymbolicCache``) when
one is attached and holds the sha; otherwise they are computed and memoised in this process (LRU by
sha). Training crops each sample to a random window of ``ctx.max_len`` (tokens / notes / frames). Evaluation
covers the whole segment with consecutive non-overlapping windows (``View.windows``; REMI windows start at a Bar
token, graph windows keep the edges inside the window); with no ``ctx.span`` it loads the first ``max_len``.
"""

from __future__ import annotations

from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pianoray.data.midi import file_sha256, load_notes
from pianoray.data.symbolic.cache import (
    FEATURE_KINDS,
    SymbolicCache,
    SymbolicCacheReport,
    SymbolicFeatureConfig,
    build_symbolic_cache,
    compute_feature,
)
from pianoray.data.symbolic.curves import CURVE_CHANNELS, CurveConfig, compute_curves
from pianoray.data.symbolic.graphs import (
    EDGE_ATTR_DIM,
    EDGE_TYPES,
    HETERO_RELATIONS,
    NODE_FEATURES,
    GraphConfig,
    build_graph,
    build_hetero_graph,
    graph_from_arrays,
    hetero_graph_from_arrays,
)
from pianoray.data.symbolic.remi import RemiConfig, RemiTokenizer
from pianoray.data.views import SegmentContext, View, consecutive_windows, register_view

__all__ = [
    "CURVE_CHANNELS", "EDGE_ATTR_DIM", "EDGE_TYPES", "FEATURE_KINDS", "HETERO_RELATIONS", "NODE_FEATURES",
    "CurveConfig", "GraphConfig", "RemiConfig", "RemiTokenizer", "SymbolicCache", "SymbolicCacheReport",
    "SymbolicFeatureConfig", "build_graph", "build_hetero_graph", "build_symbolic_cache", "compute_curves",
    "crop_graph_arrays", "crop_window", "remi_windows", "symbolic_arrays",
]

MEMO_SIZE = 512  # (sha, kind) entries kept per process when no cache is attached


class _Memo:
    """In-process LRU of computed features keyed by (sha, kind)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[tuple[str, str], Any] = OrderedDict()
        self._default_config = SymbolicFeatureConfig()
        self._tokenizer: RemiTokenizer | None = None

    def get(self, sha: str, kind: str, path: Path) -> Any:
        key = (sha, kind)
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        if self._tokenizer is None:
            self._tokenizer = RemiTokenizer(self._default_config.remi)
        value = compute_feature(load_notes(path), kind, self._default_config, self._tokenizer)
        self._items[key] = value
        if len(self._items) > self.size:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()


_MEMO = _Memo(MEMO_SIZE)


def _midi_path(ctx: SegmentContext) -> Path:
    try:
        p = Path(ctx.row["perf_midi"])
    except KeyError:
        raise KeyError(f"segment {ctx.row.get('segment_id')!r}: manifest row has no 'perf_midi'") from None
    root = getattr(ctx.corpus, "root", None)
    return p if p.is_absolute() or root is None else Path(root) / p


def symbolic_arrays(ctx: SegmentContext, kind: str) -> Any:
    """The uncropped arrays of one feature kind for the segment's performance MIDI."""
    path = _midi_path(ctx)
    sha = ctx.row.get("perf_midi_sha") or file_sha256(path)
    cache = getattr(ctx.corpus, "symbolic_cache", None)
    if cache is not None and cache.has(sha):
        return cache.get_arrays(sha, kind)
    return _MEMO.get(sha, kind, path)


def crop_window(length: int, max_len: int, train: bool, rng: np.random.Generator) -> tuple[int, int]:
    """[start, stop) of a window of at most max_len: random start in training, 0 in evaluation."""
    if length <= max_len:
        return 0, length
    start = int(rng.integers(0, length - max_len + 1)) if train else 0
    return start, start + max_len


def _span(ctx: SegmentContext, length: int) -> tuple[int, int]:
    """The evaluation window ``ctx.span`` when set, else the crop of ``crop_window`` (same RNG draws as ever)."""
    return ctx.span if ctx.span is not None else crop_window(length, ctx.max_len, ctx.train, ctx.rng)


def crop_graph_arrays(arrays: dict[str, np.ndarray], start: int, stop: int) -> dict[str, np.ndarray]:
    """Keep notes [start, stop) and the edges between them (indices renumbered, onsets re-zeroed).

    Works for both graph layouts: every ``*edge_index`` key is cropped with its matching attributes.
    """
    x = arrays["x"][start:stop].copy()
    if len(x):
        x[:, NODE_FEATURES.index("onset")] -= x[0, NODE_FEATURES.index("onset")]
    out = {"x": x}
    for key, ei in arrays.items():
        if not key.endswith("edge_index"):
            continue
        prefix = key[: -len("edge_index")]
        keep = (ei[0] >= start) & (ei[0] < stop) & (ei[1] >= start) & (ei[1] < stop)
        out[key] = ei[:, keep] - start
        for other in (f"{prefix}edge_type", f"{prefix}edge_attr"):
            if other in arrays:
                out[other] = arrays[other][keep]
    return out


def _load_remi(ctx: SegmentContext) -> np.ndarray:
    """A window of at most max_len ids that starts at a Bar token, so token times (bar count + position,
    S1's value embeddings) are exact within the window; a window with no Bar before it starts at 0."""
    ids = symbolic_arrays(ctx, "remi")
    if ctx.span is not None:  # an evaluation window from remi_windows: already starts at a Bar
        return ids[ctx.span[0] : ctx.span[1]]
    a, b = crop_window(len(ids), ctx.max_len, ctx.train, ctx.rng)
    if a:
        bars = np.flatnonzero(ids[: a + 1] == _bar_id())
        a = int(bars[-1]) if len(bars) else 0
        b = min(a + ctx.max_len, len(ids))
    return ids[a:b]


def remi_windows(ids: np.ndarray, max_len: int, bar_id: int) -> list[tuple[int, int]]:
    """Consecutive windows [a, b) covering ids [L] exactly once, each at most max_len ids, each after the first
    starting at a Bar token (so token times are exact, as in training crops).

    A window ends at the last Bar within max_len of its start; when no Bar is there (one bar longer than
    max_len ids) it ends at max_len and the next window starts mid-bar.
    """
    n = len(ids)
    bars = np.flatnonzero(np.asarray(ids) == bar_id)
    out, a = [], 0
    while a < n:
        b = min(a + max_len, n)
        if b < n:
            k = int(np.searchsorted(bars, b, side="right")) - 1  # the last Bar at or before b
            if k >= 0 and bars[k] > a:
                b = int(bars[k])
        out.append((a, b))
        a = b
    return out or [(0, 0)]


def _remi_windows(ctx: SegmentContext) -> list[tuple[int, int]]:
    return remi_windows(symbolic_arrays(ctx, "remi"), ctx.max_len, _bar_id())


@lru_cache(maxsize=1)
def _bar_id() -> int:
    return RemiTokenizer(SymbolicFeatureConfig().remi).vocab()["Bar_None"]


def collate_remi(items: list[np.ndarray]) -> dict[str, Any]:
    """REMI id arrays [L_i] -> {"remi": long [B, L] (0 = PAD), "remi_mask": bool [B, L]}."""
    import torch

    longest = max(1, max(len(i) for i in items))
    ids = torch.zeros(len(items), longest, dtype=torch.long)  # 0 = PAD in RemiTokenizer
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for b, item in enumerate(items):
        ids[b, : len(item)] = torch.from_numpy(np.asarray(item, dtype=np.int64))
        mask[b, : len(item)] = True
    return {"remi": ids, "remi_mask": mask}


def _load_graph(ctx: SegmentContext):
    arrays = symbolic_arrays(ctx, "graph")
    a, b = _span(ctx, len(arrays["x"]))
    return graph_from_arrays(crop_graph_arrays(arrays, a, b))


def _load_hetero_graph(ctx: SegmentContext):
    arrays = symbolic_arrays(ctx, "hetero_graph")
    a, b = _span(ctx, len(arrays["x"]))
    return hetero_graph_from_arrays(crop_graph_arrays(arrays, a, b))


def _item_windows(kind: str):
    """Evaluation windows of a feature kind: consecutive max_len runs of its items (notes of a graph: a
    window's graph keeps only the edges inside it, as a training crop does; curve frames)."""

    def windows(ctx: SegmentContext) -> list[tuple[int, int]]:
        arrays = symbolic_arrays(ctx, kind)
        return consecutive_windows(len(arrays["x"] if isinstance(arrays, dict) else arrays), ctx.max_len)

    return windows


def _collate_graph(name: str):
    def collate(items: list[Any]) -> dict[str, Any]:
        from torch_geometric.data import Batch as GraphBatch

        return {name: GraphBatch.from_data_list(items)}

    return collate


def _load_curves(ctx: SegmentContext) -> np.ndarray:
    curves = symbolic_arrays(ctx, "curves")
    a, b = _span(ctx, len(curves))
    return curves[a:b]


def _collate_curves(items: list[np.ndarray]) -> dict[str, Any]:
    from pianoray.data.loaders import pad_sequences  # the same padding as the frames view

    out, mask = pad_sequences(items, len(CURVE_CHANNELS))
    return {"curves": out, "curves_mask": mask}


register_view(View("remi", _load_remi, collate_remi, needs="perf_midi", windows=_remi_windows))
register_view(View("graph", _load_graph, _collate_graph("graph"), needs="perf_midi", windows=_item_windows("graph")))
register_view(View("hetero_graph", _load_hetero_graph, _collate_graph("hetero_graph"), needs="perf_midi",
                   windows=_item_windows("hetero_graph")))
register_view(View("curves", _load_curves, _collate_curves, needs="perf_midi", windows=_item_windows("curves")))
