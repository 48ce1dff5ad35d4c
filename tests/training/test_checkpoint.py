from __future__ import annotations

import json
from pathlib import Path

from pianoray.training.checkpoint import TopKSink, read_state, write_state


def _commit(sink: TopKSink, epoch: int, score: float) -> Path:
    d = sink.staging_dir()
    write_state(d, {"epoch": epoch}, {"epoch": epoch, "val/pairwise_accuracy": score})
    return sink.commit(d, {"epoch": epoch, "val/pairwise_accuracy": score})


def test_top_k_plus_latest_are_kept(tmp_path: Path) -> None:
    sink = TopKSink(tmp_path, k=2)
    for epoch, score in enumerate([0.5, 0.7, 0.6, 0.9, 0.55], start=1):
        _commit(sink, epoch, score)
    kept = sorted(d.name for d in tmp_path.glob("epoch-*"))
    assert kept == ["epoch-0002", "epoch-0004", "epoch-0005"]  # top-2 (0.9, 0.7) + latest
    assert sink.best().name == "epoch-0004"
    assert sink.latest().name == "epoch-0005"
    assert read_state(sink.latest())["epoch"] == 5


def test_half_written_checkpoint_never_counts(tmp_path: Path) -> None:
    sink = TopKSink(tmp_path, k=3)
    _commit(sink, 1, 0.6)
    partial = sink.staging_dir()  # a crash after this leaves only a .tmp-* folder
    (partial / "metrics.json").write_text(json.dumps({"epoch": 2, "val/pairwise_accuracy": 0.99}))
    assert [d.name for _, d in sink.checkpoints()] == ["epoch-0001"]
    assert sink.latest().name == "epoch-0001"
    TopKSink(tmp_path, k=3)  # reopening clears stale staging folders
    assert not list(tmp_path.glob(".tmp-*"))


def test_nan_score_ranks_last(tmp_path: Path) -> None:
    sink = TopKSink(tmp_path, k=1)
    _commit(sink, 1, 0.6)
    _commit(sink, 2, float("nan"))
    assert sink.best().name == "epoch-0001"
