"""Synthetic validation pair counts for the rule's tests: passages whose pairs a model orders correctly with
probability ``level`` + a passage effect shared by every model (some passages are hard for all) + its own."""

from __future__ import annotations

import numpy as np

from pianoray.objectives.metrics import PairCounts


def synthetic_counts(level: float, *, seed: int, groups: int = 20, dims: int = 2, pairs: int = 6,
                     shared_sd: float = 0.08, own_sd: float = 0.05) -> PairCounts:
    """[groups, dims] counts: ``pairs`` pairs per passage and dimension (the same for every model: the same
    labels), correct ~ Binomial(pairs, clip(level + shared + own)); the shared effect depends only on the
    passage (fixed seed), the rest on ``seed``."""
    shared = np.random.default_rng(12345).normal(0.0, shared_sd, (groups, 1))
    rng = np.random.default_rng(seed)
    p = np.clip(level + shared + rng.normal(0.0, own_sd, (groups, dims)), 0.0, 1.0)
    total = np.full((groups, dims), float(pairs))
    correct = rng.binomial(pairs, p).astype(np.float64)
    return PairCounts(tuple(f"T1:p{g:03d}" for g in range(groups)), correct, total)
