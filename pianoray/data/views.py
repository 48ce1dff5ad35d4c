"""Views: the encoder inputs a segment can be turned into, and how a list of them is batched.

An encoder names the views it reads (``Encoder.views``); the loaders load only those. Each view is
registered once, by the module that owns its representation:
- ``frames`` (cached MuQ frames) and ``notes`` (per-note features) in ``pianoray.data.loaders``;
- ``remi``, ``graph``, ``hetero_graph``, ``curves`` in ``pianoray.data.symbolic``.

``load(ctx)`` returns one sample's item; ``collate(items)`` returns a dict merged into ``Batch.inputs``
(e.g. ``{"frames": [B,T,D], "frames_mask": [B,T]}``).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np


@dataclass
class SegmentContext:
    """What a view loader gets for one segment.

    row: the segment's manifest row (a dict: segment_id, piece, passage, performer, n_frames, shard,
    offset, perf_midi, perf_midi_sha, score_midi, score_midi_sha, ...).
    corpus: the open Corpus (frame stores, symbolic caches, metadata).
    train: True when loading for training (random crops), False for evaluation (deterministic).
    rng: the per-sample generator to use for any randomness (keeps loading reproducible).
    max_len: the crop length for sequence views (frames or notes/tokens, by the view's unit).
    """

    row: dict[str, Any]
    corpus: Any
    train: bool
    rng: np.random.Generator
    max_len: int
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class View:
    name: str
    load: Callable[[SegmentContext], Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    # Views that read performance MIDI need a manifest row with perf_midi; frames need frames.
    needs: str = "frames"  # "frames" | "perf_midi" | "score_midi"


_VIEWS: dict[str, View] = {}
# Modules that register views on import.
VIEW_MODULES = ("pianoray.data.loaders", "pianoray.data.symbolic")


def register_view(view: View) -> View:
    _VIEWS[view.name] = view
    return view


def get_view(name: str) -> View:
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
        raise KeyError(f"unknown view {name!r}; known: {', '.join(sorted(_VIEWS))}") from None
