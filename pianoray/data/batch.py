"""The one batch type every encoder, loss and metric sees.

A batch mixes tiers. Each sample carries its tier; the supervision fields below are filled where the
sample's tier has them and hold a neutral value (and a False mask) elsewhere, so that the multi-task
total can mask each loss term by tier without branching.

Encoder inputs live in ``inputs``, keyed by *view* name ("frames", "notes", "remi", "graph",
"hetero_graph", "curves", ...). An encoder declares the views it reads (``Encoder.views``) and the
data layer loads only those. Sequence views are padded with a boolean mask (True = real position). A score
view (``score:<view>``, ``pianoray.data.views.score_view``) puts the score MIDI's inputs under ``score:`` keys;
:meth:`Batch.score_batch` is the batch an encoder of the plain view reads them from.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

import torch
from torch import Tensor

from pianoray.data.tiers import Tier
from pianoray.data.views import SCORE


@dataclass
class Batch:
    """A collated, tier-mixed batch of B segments with N label dimensions.

    Attributes:
        segment_ids: list[str] of length B.
        tier: [B] long, 1..4 (``pianoray.data.tiers.Tier``).
        labels: [B, N] float in [0, 1]; zeros where ``has_labels`` is False.
        has_labels: [B] bool; True for T1 samples with labels (regression target).
        rank_target: [B, N] float; the value ranked within ``rank_group``: the labels for T1, a
            placement score (1 = best of the round, 0 = worst, the same in every dimension) for T2.
        rank_group: [B] long; samples are compared only within one group (T1: passage, T2: competition
            round); -1 = takes part in no ranking pair.
        piece: [B] long; piece code, for InfoNCE positives (same piece, other performer); -1 = none.
        performer: [B] long; performer code; -1 = unknown.
        pair: [B] long; for T4, the batch index of the sample's clean/augmented twin; -1 = none.
        inputs: view name -> batched encoder input (tensors, masks, or a PyG batch).
        meta: free-form per-batch extras (e.g. passage keys for metrics); never used by encoders.
        difficulty: [B] float in [0, 1], the piece's difficulty grade scaled over the corpus's grades; 0 where
            ``has_difficulty`` is False. None for a split loaded without grades (all but training splits).
        has_difficulty: [B] bool; True where the sample's piece has a grade the difficulty head may train on
            (never a piece of the fold's held-out parts), or None with ``difficulty``.
    """

    segment_ids: list[str]
    tier: Tensor
    labels: Tensor
    has_labels: Tensor
    rank_target: Tensor
    rank_group: Tensor
    piece: Tensor
    performer: Tensor
    pair: Tensor
    inputs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    difficulty: Tensor | None = None
    has_difficulty: Tensor | None = None

    @classmethod
    def supervised(cls, inputs: dict[str, Any], labels: Tensor, groups: Tensor | None = None) -> "Batch":
        """B labelled T1 segments built by hand (tests, benchmarks), with neutral fields elsewhere.

        Args:
            inputs: view name -> batched encoder input, as ``Batch.inputs``.
            labels: [B, N] float; also the ranking target.
            groups: [B] long ranking groups; default one group (all 0).
        The segment ids are "s0".."s{B-1}", each sample its own performer, with no piece and no twin.
        """
        b = labels.shape[0]
        return cls(
            segment_ids=[f"s{i}" for i in range(b)],
            tier=torch.full((b,), int(Tier.T1)),
            labels=labels,
            has_labels=torch.ones(b, dtype=torch.bool),
            rank_target=labels,
            rank_group=torch.zeros(b, dtype=torch.long) if groups is None else groups,
            piece=torch.full((b,), -1),
            performer=torch.arange(b),
            pair=torch.full((b,), -1),
            inputs=inputs,
        )

    @property
    def size(self) -> int:
        return len(self.segment_ids)

    def score_batch(self) -> "Batch":
        """The same segments with their score MIDI's inputs as ``inputs`` (each ``score:<key>`` as ``<key>``),
        so that a symbolic encoder reads the score exactly as it reads a performance. Raises KeyError when the
        batch was loaded without score views."""
        score = {k[len(SCORE):]: v for k, v in self.inputs.items() if k.startswith(SCORE)}
        if not score:
            raise KeyError("score_batch: the batch has no score views (load it with the encoder's views)")
        return replace(self, inputs=score)

    def to(self, device: torch.device | str) -> "Batch":
        """A copy with every tensor (and every object with ``.to``) moved to ``device``."""

        def move(x: Any) -> Any:
            if isinstance(x, dict):
                return {k: move(v) for k, v in x.items()}
            if hasattr(x, "to") and not isinstance(x, (str, bytes)):
                return x.to(device)
            return x

        changes = {
            f.name: move(getattr(self, f.name))
            for f in fields(self)
            if f.name not in ("segment_ids", "meta")
        }
        return replace(self, **changes)
