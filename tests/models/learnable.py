"""The "fine-tuning loss falls on a learnable synthetic task" check every encoder's tests run.

Each test builds its own task (batches from ``Batch.supervised`` whose labels its encoder can read) and its
own seeded model; ``assert_loss_falls`` trains it and asserts the loss has fallen by the given ratio.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import Tensor

from pianoray.config import LossConfig
from pianoray.data.batch import Batch
from pianoray.models.contract import PerformanceModel
from pianoray.objectives.losses import multitask_loss

LossFn = Callable[[PerformanceModel, Batch], Tensor]


def regression_mse(model: PerformanceModel, batch: Batch) -> Tensor:
    """Scalar MSE of the regression head [B, N] against ``batch.labels`` [B, N] (every sample labelled)."""
    return torch.nn.functional.mse_loss(model(batch).regression, batch.labels)


def multitask(weights: LossConfig) -> LossFn:
    """The training total of ``multitask_loss`` under ``weights``, as a LossFn."""

    def loss(model: PerformanceModel, batch: Batch) -> Tensor:
        out = model(batch)
        return multitask_loss(out.regression, out.scores, out.z, batch, weights)[0]

    return loss


def assert_loss_falls(
    model: PerformanceModel,
    train: Batch,
    *,
    steps: int,
    lr: float,
    ratio: float,
    held: Batch | None = None,
    loss: LossFn = regression_mse,
    params: Iterable[Any] | None = None,
    window: int = 5,
) -> None:
    """Train ``model`` with AdamW for ``steps`` full-batch steps on ``train``; assert the loss fell below ``ratio``
    times its start.

    With ``held``, the loss compared is the one on ``held`` (eval mode, no gradient) before and after training;
    without, the mean training loss of the last ``window`` steps against the first ``window``.
    ``params``: what AdamW optimises (parameters, or param groups carrying their own lr); default all of
    ``model``'s parameters at ``lr``.
    """

    def held_loss() -> float:
        model.eval()
        with torch.no_grad():
            return loss(model, held).item()

    opt = torch.optim.AdamW(model.parameters() if params is None else params, lr=lr)
    start = held_loss() if held is not None else None
    model.train()
    curve = []
    for _ in range(steps):
        opt.zero_grad()
        value = loss(model, train)
        value.backward()
        opt.step()
        curve.append(float(value.detach()))
    if held is not None:
        end = held_loss()
        assert end < ratio * start, (start, end)
    else:
        assert np.mean(curve[-window:]) < ratio * np.mean(curve[:window]), curve[::10]
