"""Views: the encoder inputs a segment can be turned into, and how a list of them is batched.

An encoder names the views it reads (``Encoder.views``); the loaders load only those. Each view is
registered once, by the module that owns its representation:
- ``frames`` (cached MuQ frames) and ``notes`` (per-note features) in ``pianoray.data.loaders``;
- ``remi``, ``graph``, ``hetero_graph``, ``curves`` in ``pianoray.data.symbolic``.

``load(ctx)`` returns one sample's item; ``collate(items)`` returns a dict merged into ``Batch.inputs``
(e.g. ``{"frames": [B,T,D], "frames_mask": [B,T]}``).

Evaluation sees whole segments (labels describe the whole segment): ``windows(ctx)`` lists the [start, stop)
spans, in the view's own unit, that cover every item of the segment exactly once, each at most ``ctx.max_len``
long; ``load`` with ``ctx.span`` set returns exactly that span. Training ignores both and keeps its random
crops. The window predictions are merged per segment by ``pianoray.training.evaluate.segment_mean``.

Every view that reads the performance MIDI has a *score view*, ``score:<view>`` (:func:`score_view`): the same
features built the same way from the segment's score MIDI (``score_midi``) instead, collated under
``score:``-prefixed keys (``inputs["score:remi"]``, ``inputs["score:remi_mask"]``). F-score's encoder reads them
(``Batch.score_batch`` turns them back into plain keys for the symbolic winner).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any, Callable

import numpy as np

from pianoray.errors import InputError, UnknownNameError

SCORE = "score:"  # the prefix of a score view's name and of its batch keys


@dataclass
class SegmentContext:
    """What a view loader gets for one segment.

    row: the segment's manifest row (a dict: segment_id, piece, passage, performer, n_frames, shard,
    offset, perf_midi, perf_midi_sha, score_midi, score_midi_sha, ...).
    corpus: the open Corpus (frame stores, symbolic caches, metadata).
    train: True when loading for training (random crops), False for evaluation (deterministic).
    rng: the per-sample generator to use for any randomness (keeps loading reproducible).
    max_len: the crop length for sequence views (frames or notes/tokens, by the view's unit).
    span: evaluation only: the [start, stop) window to load (one of ``View.windows(ctx)``); None = the
        view's single crop (random in training; the pre-window evaluation crop otherwise).
    """

    row: dict[str, Any]
    corpus: Any
    train: bool
    rng: np.random.Generator
    max_len: int
    extras: dict[str, Any] = field(default_factory=dict)
    span: tuple[int, int] | None = None


@dataclass(frozen=True)
class View:
    name: str
    load: Callable[[SegmentContext], Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    # Views that read performance MIDI need a manifest row with perf_midi; frames need frames.
    needs: str = "frames"  # "frames" | "perf_midi" | "score_midi"
    # The evaluation windows of a segment (see the module docstring); None = one window, the whole load.
    windows: Callable[[SegmentContext], list[tuple[int, int]]] | None = None


def consecutive_windows(n: int, max_len: int, align: int = 1) -> list[tuple[int, int]]:
    """Consecutive, non-overlapping [start, stop) windows covering items 0..n-1, each at most max_len long.

    Starts are multiples of ``align`` (MuQ frame windows) when max_len >= align: the step is max_len rounded
    down to a multiple of align. The last window holds what is left (it may be shorter). An empty sequence
    gets one empty window, so every segment has at least one prediction.
    """
    step = max_len if max_len < align else max_len // max(1, align) * max(1, align)
    return [(a, min(a + step, n)) for a in range(0, n, step)] or [(0, 0)]


_VIEWS: dict[str, View] = {}
# Modules that register views on import.
VIEW_MODULES = ("pianoray.data.loaders", "pianoray.data.symbolic")


def register_view(view: View) -> View:
    _VIEWS[view.name] = view
    return view


def _as_score(ctx: SegmentContext) -> SegmentContext:
    """``ctx`` with the segment's score MIDI standing in for its performance MIDI (the path and its hash)."""
    score = ctx.row.get("score_midi")
    if score is None or (isinstance(score, float) and score != score) or score == "":
        raise InputError(f"segment {ctx.row.get('segment_id')!r}: a score view needs score_midi, but it is empty")
    return replace(ctx, row={**ctx.row, "perf_midi": score, "perf_midi_sha": ctx.row.get("score_midi_sha")})


@lru_cache(maxsize=None)
def score_view(base: View) -> View:
    """The score view of ``base`` (a view that reads perf_midi): ``base`` loaded from the score MIDI, its
    windows planned on the score, and its batch keys prefixed with ``score:``."""
    if base.needs != "perf_midi":
        raise UnknownNameError(f"view {base.name!r} reads {base.needs}, not the performance MIDI: it has no score view")

    def collate(items: list[Any]) -> dict[str, Any]:
        return {SCORE + k: v for k, v in base.collate(items).items()}

    plan = base.windows
    return View(SCORE + base.name, lambda ctx: base.load(_as_score(ctx)), collate, needs="score_midi",
                windows=(lambda ctx: plan(_as_score(ctx))) if plan is not None else None)


def get_view(name: str) -> View:
    if name.startswith(SCORE):
        return score_view(get_view(name[len(SCORE):]))
    if name not in _VIEWS:
        for module in VIEW_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as e:
                if e.name != module:
                    raise
    try:
        return _VIEWS[name]
    except KeyError:
        raise UnknownNameError(f"unknown view {name!r}; known: {', '.join(sorted(_VIEWS))}") from None
