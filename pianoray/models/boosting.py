"""``symbolic-gbm``: the non-neural line a learned symbolic encoder has to beat.

Gradient boosting (sklearn ``HistGradientBoostingRegressor``, one per label dimension) on hand-crafted
summary features of the whole performance MIDI (``pianoray.data.symbolic.performance_features``: velocity,
timing and rubato, tempo drift, chord spread, articulation, pedal, polyphony), plus the same features
z-scored within the passage (every player of a passage plays the same music: the z-score keeps how it is
played). Fitted once per fold on the fold's training part; no epochs, no rungs, never stopped.

DESIGN.md measured on the PercePiano subset with music-grouped folds (19 dims): ridge 0.31 R2 / 0.72
pairwise, this model without the z-scores 0.42 / 0.73, with them 0.45 / 0.74.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pianoray.data.symbolic.performance_features import FEATURES_ID, performance_features, within_group_zscore
from pianoray.models.registry import FittedReferenceSpec, register


class BoostingConfig(BaseModel):
    """The boosted trees' size and regularisation (sklearn's names), and whether to add the within-passage
    z-scores. ``threads``: OpenMP threads per fit. One by default: the trees are small, and with more
    threads than free cores OpenMP spins (measured here on 2 busy cores: 1.6 s for one dimension with 1
    thread, 300 s with 2)."""

    model_config = ConfigDict(extra="forbid")
    max_iter: int = Field(300, ge=1)
    learning_rate: float = Field(0.05, gt=0, le=1)
    max_leaf_nodes: int = Field(15, ge=2)
    min_samples_leaf: int = Field(20, ge=1)
    l2_regularization: float = Field(1.0, ge=0)
    max_features: float = Field(0.5, gt=0, le=1)  # share of features each split may consider
    within_passage: bool = True
    threads: int = Field(1, ge=1)


def design_matrix(x: np.ndarray, groups: Any, within_passage: bool) -> np.ndarray:
    """x [M, F] raw features, groups [M] passage keys -> [M, F] or [M, 2F] (raw, then within-passage z)."""
    x = np.asarray(x, dtype=np.float64)
    return np.concatenate([x, within_group_zscore(x, groups)], axis=1) if within_passage else x


@dataclass
class FeatureBoosting:
    """One fitted ``HistGradientBoostingRegressor`` per label dimension over :func:`design_matrix`."""

    cfg: BoostingConfig
    models: list[Any]

    def predict(self, x: np.ndarray, groups: Any) -> np.ndarray:
        """x [M, F], groups [M] -> [M, N] float64 predicted labels."""
        d = design_matrix(x, groups, self.cfg.within_passage)
        with _threads(self.cfg.threads):
            return np.stack([m.predict(d) for m in self.models], axis=1)


def fit_boosting(cfg: BoostingConfig, x: np.ndarray, y: np.ndarray, groups: Any, seed: int) -> FeatureBoosting:
    """Fit on x [M, F], y [M, N] (groups [M] passage keys): N independent regressors, seeded, without
    early stopping (nothing of the fold is held out for it: the fit is one deterministic pass)."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] != np.asarray(x).shape[0]:
        raise ValueError(f"fit_boosting: y must be [M, N] with M = {np.asarray(x).shape[0]}, got {y.shape}")
    d = design_matrix(x, groups, cfg.within_passage)
    models = []
    with _threads(cfg.threads):
        for j in range(y.shape[1]):
            m = HistGradientBoostingRegressor(
                max_iter=cfg.max_iter, learning_rate=cfg.learning_rate, max_leaf_nodes=cfg.max_leaf_nodes,
                min_samples_leaf=cfg.min_samples_leaf, l2_regularization=cfg.l2_regularization,
                max_features=cfg.max_features, early_stopping=False, random_state=seed + j,
            )
            models.append(m.fit(d, y[:, j]))
    return FeatureBoosting(cfg, models)


def _threads(n: int) -> Any:
    """A context that caps OpenMP threads (sklearn's tree building) at ``n``."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n, user_api="openmp")


register(
    FittedReferenceSpec(
        name="symbolic-gbm",
        track="symbolic",
        config_cls=BoostingConfig,
        fit=fit_boosting,
        features=performance_features,
        features_id=FEATURES_ID,
        description="gradient boosting on hand-crafted whole-performance MIDI features (+ within-passage z)",
    )
)
