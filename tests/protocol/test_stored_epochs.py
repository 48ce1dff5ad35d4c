"""A resumed run records the epochs whose checkpoint outlived their report (the driver killed between a worker
persisting the checkpoint and the driver handling the report): the trial resumes after them, so without this
the ledger would have a gap, and a rung on such an epoch would be judged without its report."""

from __future__ import annotations

import json
from pathlib import Path

from pianoray.config import ProtocolConfig
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.run import RunContext, record_stored_epochs
from pianoray.protocol.storage import RunStorage
from pianoray.records import ROUND1, ROUND2


def checkpoint(storage: RunStorage, rel: str, **metrics) -> None:
    storage.write_json(f"{rel}/metrics.json", metrics)


def test_stored_epochs_without_an_event_are_recorded_once(tmp_path: Path) -> None:
    storage = RunStorage(tmp_path, "r", fsync=False)
    ledger = Ledger(storage)
    ctx = RunContext(ProtocolConfig(), storage, ledger, {}, feedback=None)
    ledger.epoch(ROUND1, "A1.c0", 0, 1, {"val/pairwise_accuracy": 0.6, "epoch": 1})
    common = {"val/pairwise_accuracy": 0.7, "rung_epoch": 2, "stop": False, "fold": 0}
    checkpoint(storage, "round1/trial_a/checkpoint_000001", **common, epoch=1, experiment="A1.c0")
    checkpoint(storage, "round1/trial_a/checkpoint_000002", **common, epoch=2, experiment="A1.c0")
    checkpoint(storage, "round1/trial_b/checkpoint_000003", **common, epoch=3)  # from before checkpoints named it
    storage.write_bytes("round1/trial_b/checkpoint_000004/metrics.json", b"{half a fi")  # half-copied by the kill
    checkpoint(storage, "round2-train/round2-A1-fold1/checkpoint_x", **{**common, "fold": 1}, epoch=5,
               experiment="A1")

    assert record_stored_epochs(ctx, ROUND1) == [Ledger.epoch_id(ROUND1, "A1.c0", 0, 2)]
    (e,) = [e for e in ledger.epochs("A1.c0", round=ROUND1) if e.data.epoch == 2]
    assert e.data.metrics["val/pairwise_accuracy"] == 0.7 and e.data.metrics["rung_epoch"] == 2
    assert "experiment" not in e.data.metrics and "fold" not in e.data.metrics  # Ray's/our bookkeeping left out
    assert [x.data.epoch for x in ledger.epochs("A1.c0", round=ROUND1)] == [1, 2]  # epoch 1's event untouched
    assert record_stored_epochs(ctx, ROUND1) == []
    assert record_stored_epochs(ctx, ROUND2) == [Ledger.epoch_id(ROUND2, "A1", 1, 5)]
    assert json.loads(storage.read_bytes("round1/trial_a/checkpoint_000002/metrics.json"))["epoch"] == 2
