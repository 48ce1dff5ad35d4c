"""A tiny learnable in-memory dataset with the ExperimentData interface, for testing the loop alone.

Each segment has frames [T, W]; its N labels are a fixed nonlinear function of the frames' mean, so an
encoder that pools frames can learn them. Segments come in passages of 6 performers, so within-passage
pairs exist. Batches depend only on (seed, epoch), like the real loaders.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier
from pianoray.models.registry import DataSpec


@dataclass
class SyntheticData:
    n_passages: int = 24
    per_passage: int = 6
    frames: int = 12
    width: int = 8
    n_dims: int = 3
    seed: int = 0
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        rng = np.random.default_rng(self.seed)
        n = self.n_passages * self.per_passage
        passage_mean = rng.normal(0, 1, (self.n_passages, self.width))
        skill = rng.normal(0, 1, (n, self.width))
        self.passage = np.repeat(np.arange(self.n_passages), self.per_passage)
        base = passage_mean[self.passage] + 0.8 * skill
        self.x = (base[:, None, :] + 0.3 * rng.normal(0, 1, (n, self.frames, self.width))).astype(np.float32)
        w = rng.normal(0, 1, (self.width, self.n_dims)) / np.sqrt(self.width)
        self.y = (1 / (1 + np.exp(-(base @ w)))).astype(np.float32)
        self.ids = [f"seg{i:04d}" for i in range(n)]
        self.label_names = [f"dim{j}" for j in range(self.n_dims)]
        # folds: passages 0..15 train, 16..19 val, 20..23 test
        self._split = {
            "train": np.flatnonzero(self.passage < 16),
            "val": np.flatnonzero((self.passage >= 16) & (self.passage < 20)),
            "test": np.flatnonzero(self.passage >= 20),
        }

    def data_spec(self) -> DataSpec:
        return DataSpec(n_dims=self.n_dims, frame_width=self.width)

    def loader(self, fold, split, tiers, views, batch_size, *, epoch, seed=0, rank=0, world_size=1):
        assert world_size == 1, "the synthetic stand-in is single-process"
        idx = self._split[split].copy()
        if split == "train":
            rng = np.random.default_rng(seed * 100_003 + epoch)
            # shuffle passages, keep members together so ranking pairs exist in a batch
            order = rng.permutation(np.unique(self.passage[idx]))
            idx = np.concatenate([idx[self.passage[idx] == p] for p in order])
        return [self._batch(idx[i : i + batch_size]) for i in range(0, len(idx), batch_size)]

    def _batch(self, rows: np.ndarray) -> Batch:
        b = len(rows)
        y = torch.from_numpy(self.y[rows])
        return Batch(
            segment_ids=[self.ids[i] for i in rows],
            tier=torch.full((b,), int(Tier.T1)),
            labels=y,
            has_labels=torch.ones(b, dtype=torch.bool),
            rank_target=y,
            rank_group=torch.from_numpy(self.passage[rows]).long(),
            piece=torch.from_numpy(self.passage[rows]).long(),
            performer=torch.from_numpy(rows % self.per_passage).long(),
            pair=torch.full((b,), -1),
            inputs={
                "frames": torch.from_numpy(self.x[rows]),
                "frames_mask": torch.ones(b, self.frames, dtype=torch.bool),
            },
            meta={"rank_group_keys": [f"p{self.passage[i]}" for i in rows]},
        )
