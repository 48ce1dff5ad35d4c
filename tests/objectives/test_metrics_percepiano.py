"""The metrics on the real PercePiano labels: reference points every model is compared against."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from pianoray.data.percepiano import parse_segment_name, read_labels
from pianoray.objectives import metrics

LABELS = "label_2round_mean_reg_19_with0_rm_highstd0.json"


@pytest.fixture(scope="module")
def labelled(percepiano_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels [M, 19], passage key [M]) for every labelled PercePiano segment."""
    rows = read_labels(percepiano_dir / LABELS)
    keys = sorted(rows)
    labels = np.stack([rows[k][0] for k in keys]).astype(np.float64)
    passages = np.array([parse_segment_name(k).passage for k in keys], dtype=object)
    return labels, passages


def test_reference_models_on_real_passages(labelled: tuple[np.ndarray, np.ndarray]) -> None:
    labels, passages = labelled
    start = time.perf_counter()
    oracle = metrics.pairwise_accuracy(labels, labels, passages, n_boot=1000)
    elapsed = time.perf_counter() - start
    constant = metrics.pairwise_accuracy(np.zeros_like(labels), labels, passages, n_boot=1000)
    assert oracle.mean == 1.0 and oracle.ci == (1.0, 1.0)
    assert constant.mean == 0.5 and constant.ci == (0.5, 0.5)
    assert oracle.n_groups > 50 and oracle.n > 1000  # many passages, many scored (pair, dim) entries
    assert elapsed < 1.0
    # Passage means as predictions carry no within-passage information: every pair ties -> 0.5,
    # while their R2 is well above 0 (passage identity explains much of the label variance).
    codes = np.unique(passages, return_inverse=True)[1]
    means = np.stack([labels[codes == c].mean(0) for c in range(codes.max() + 1)])[codes]
    assert metrics.pairwise_accuracy(means, labels, passages, n_boot=0).mean == 0.5
    r2 = metrics.r2(means, labels, passages, n_boot=200)
    assert 0.3 < r2.mean < 0.5 and r2.ci[0] < r2.mean < r2.ci[1]
