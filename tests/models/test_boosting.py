"""symbolic-gbm: registered as a fitted symbolic reference; the boosted trees learn a planted signal and the
within-passage z-scores recover a signal that only shows relative to the passage."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from pianoray.data.symbolic.performance_features import FEATURES_ID, performance_features
from pianoray.models import registry
from pianoray.models.boosting import BoostingConfig, design_matrix, fit_boosting


def test_registered_as_a_fitted_symbolic_reference() -> None:
    spec = registry.get("symbolic-gbm")
    assert (spec.kind, spec.track, spec.role) == ("fitted", "symbolic", "reference")
    assert spec.views == () and spec.pretrain is None
    assert spec.features is performance_features and spec.features_id == FEATURES_ID
    assert "symbolic-gbm" in registry.names(kind="fitted") and "symbolic-gbm" not in registry.names(kind="neural")
    assert registry.get("S1").kind == "neural"
    with pytest.raises(ValidationError):
        BoostingConfig.model_validate({"max_iter": 0})
    with pytest.raises(ValueError, match="role must be 'reference'"):
        registry.FittedReferenceSpec("x", "symbolic", BoostingConfig, fit_boosting, performance_features, "f",
                                     role="candidate")


def test_design_matrix_appends_within_passage_z() -> None:
    x = np.array([[1.0], [3.0], [5.0]])
    assert design_matrix(x, ["a", "a", "b"], within_passage=False).shape == (3, 1)
    assert design_matrix(x, ["a", "a", "b"], within_passage=True).tolist() == [[1.0, -1.0], [3.0, 1.0], [5.0, 0.0]]


def test_fits_a_signal_hidden_under_the_passage_offset() -> None:
    """Labels follow a feature's deviation from its passage mean, while passages shift the feature a lot:
    with the z-scores the trees find it, without them much less."""
    rng = np.random.default_rng(0)
    passages = np.repeat(np.arange(40), 8).astype(str)
    offset = rng.normal(0, 5, 40)[np.repeat(np.arange(40), 8)]
    own = rng.normal(0, 1, len(passages))
    x = np.stack([offset + own, rng.normal(size=len(passages))], axis=1)
    y = np.stack([own, -own], axis=1) * 0.1 + 0.5
    train, test = np.arange(len(y)) < 240, np.arange(len(y)) >= 240
    cfg = BoostingConfig(max_iter=100, min_samples_leaf=5)

    def r2(model) -> float:
        pred = model.predict(x[test], passages[test])
        assert pred.shape == (test.sum(), 2)
        return 1 - ((pred - y[test]) ** 2).sum() / ((y[test] - y[test].mean(0)) ** 2).sum()

    with_z = fit_boosting(cfg, x[train], y[train], passages[train], seed=0)
    without = fit_boosting(cfg.model_copy(update={"within_passage": False}), x[train], y[train], passages[train], 0)
    assert r2(with_z) > 0.6 and r2(with_z) > r2(without) + 0.3
    again = fit_boosting(cfg, x[train], y[train], passages[train], seed=0)
    assert np.array_equal(again.predict(x[test], passages[test]), with_z.predict(x[test], passages[test]))
