"""Whole-segment evaluation: the window aggregation rule and ``predict`` merging windows into segments."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import torch

from pianoray.data.batch import Batch
from pianoray.training.evaluate import predict, segment_mean


def test_segment_mean_known_value() -> None:
    """Hand-computed: a = (3 * [1, 0] + 1 * [5, 4]) / 4 = [2, 1]; b has one window and keeps it."""
    ids, out = segment_mean(["a", "b", "a"], np.array([3.0, 1.0, 1.0]),
                            np.array([[1.0, 0.0], [5.0, 5.0], [5.0, 4.0]], dtype=np.float32))
    assert ids == ["a", "b"] and out.dtype == np.float32
    np.testing.assert_allclose(out, [[2.0, 1.0], [5.0, 5.0]])
    ids, out = segment_mean(["x", "y", "y", "y"], np.array([1, 2, 2, 4]), np.array([7.0, 1.0, 2.0, 4.0]))
    assert ids == ["x", "y"]
    np.testing.assert_allclose(out, [7.0, (2 + 4 + 16) / 8])  # y: 2.75


class _Echo(torch.nn.Module):
    """A 'model' whose scores are the window's first input value: the merge is all that is tested."""

    def forward(self, batch: Batch) -> SimpleNamespace:
        v = batch.inputs["v"]  # [B, 2]
        return SimpleNamespace(scores=v, regression=v / 10, z=torch.cat([v, -v], dim=1), difficulty=None)


def _batch(ids, weights, values, labels, groups) -> Batch:
    b = len(ids)
    return Batch(
        segment_ids=list(ids), tier=torch.ones(b, dtype=torch.long), labels=torch.tensor(labels),
        has_labels=torch.ones(b, dtype=torch.bool), rank_target=torch.tensor(labels),
        rank_group=torch.zeros(b, dtype=torch.long), piece=torch.full((b,), -1), performer=torch.arange(b),
        pair=torch.full((b,), -1), inputs={"v": torch.tensor(values)},
        meta={"rank_group_keys": list(groups), "weight": list(weights), "window": [0] * b},
    )


def test_predict_returns_one_row_per_segment_weighted_by_window_length() -> None:
    # segment "a" has three windows (512, 512, 128 items), split across two batches; "b" one window
    batches = [
        _batch(["a", "a"], [512.0, 512.0], [[1.0, 0.0], [2.0, 0.0]], [[0.5, 0.5]] * 2, ["T1:p", "T1:p"]),
        _batch(["a", "b"], [128.0, 40.0], [[6.0, 9.0], [3.0, 3.0]], [[0.5, 0.5], [0.2, 0.9]], ["T1:p", "T1:q"]),
    ]
    pred = predict(_Echo(), batches, torch.device("cpu"))
    assert pred.segment_ids == ["a", "b"]
    a = (512 * 1.0 + 512 * 2.0 + 128 * 6.0) / 1152  # 2.0
    np.testing.assert_allclose(pred.scores, [[a, 128 * 9.0 / 1152], [3.0, 3.0]], rtol=1e-6)
    np.testing.assert_allclose(pred.regression, pred.scores / 10, rtol=1e-6)
    np.testing.assert_allclose(pred.z, np.concatenate([pred.scores, -pred.scores], axis=1), rtol=1e-6)
    np.testing.assert_allclose(pred.labels, [[0.5, 0.5], [0.2, 0.9]])
    assert pred.groups.tolist() == ["T1:p", "T1:q"] and pred.has_labels.tolist() == [True, True]
