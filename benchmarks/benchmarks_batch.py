"""A synthetic frames batch for the audio benchmarks (shapes of a real one, random content)."""

from __future__ import annotations

import torch

from pianoray.data.batch import Batch


def synthetic_batch(batch: int, frames: int, width: int, n_dims: int, device: str = "cpu") -> Batch:
    """B labelled T1 segments of [frames, width] random frames, no padding; labels in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    labels = torch.rand(batch, n_dims, generator=g)
    inputs = {
        "frames": torch.randn(batch, frames, width, generator=g),
        "frames_mask": torch.ones(batch, frames, dtype=torch.bool),
    }
    return Batch.supervised(inputs, labels).to(device)
