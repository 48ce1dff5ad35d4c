"""A synthetic frames batch for the audio benchmarks (shapes of a real one, random content)."""

from __future__ import annotations

import torch

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier


def synthetic_batch(batch: int, frames: int, width: int, n_dims: int, device: str = "cpu") -> Batch:
    """B labelled T1 segments of [frames, width] random frames, no padding; labels in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(batch, n_dims, generator=g)
    return Batch(
        segment_ids=[f"bench{i}" for i in range(batch)],
        tier=torch.full((batch,), int(Tier.T1)),
        labels=labels,
        has_labels=torch.ones(batch, dtype=torch.bool),
        rank_target=labels,
        rank_group=torch.zeros(batch, dtype=torch.long),
        piece=torch.zeros(batch, dtype=torch.long),
        performer=torch.arange(batch),
        pair=torch.full((batch,), -1),
        inputs={
            "frames": torch.randn(batch, frames, width, generator=g),
            "frames_mask": torch.ones(batch, frames, dtype=torch.bool),
        },
    ).to(device)
