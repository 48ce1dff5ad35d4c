"""Where Round-1 pair counts travel: the trainable's sink writes them to the run's ledger before it reports,
and the scheduler's source reads them back by (experiment, epoch)."""

from __future__ import annotations

import json
from pathlib import Path

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.pair_counts import (
    KIND,
    counts_source,
    read_pair_counts,
    record_pair_counts,
)
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.trials import ReportSink, round1_counts_recorder
from pianoray.records import reportable
from pianoray.training.checkpoint import PAIR_COUNTS_FILE
from tests.protocol.synthetic_counts import synthetic_counts


def test_recorded_once_read_back_and_after_compaction(tmp_path: Path) -> None:
    storage = RunStorage(tmp_path, "run", fsync=False)
    ledger = Ledger(storage)
    counts = synthetic_counts(0.7, seed=1)
    assert record_pair_counts(ledger, "round1", "A1", 0, 3, counts, rung_epoch=3)
    assert not record_pair_counts(ledger, "round1", "A1", 0, 3, synthetic_counts(0.2, seed=2))  # idempotent
    back = read_pair_counts(ledger, "round1", "A1", 0, 3)
    assert back.accuracy() == counts.accuracy() and back.groups == counts.groups
    assert read_pair_counts(ledger, "round1", "A1", 0, 4) is None
    source = counts_source(storage, "round1", 0)  # what the scheduler is given (it pickles)
    assert source("A1", 3).accuracy() == counts.accuracy() and source("A2", 3) is None
    ledger.compact("round1")
    for rel in storage.list(f"ledger/events/{KIND}"):
        storage.delete(rel)
    assert read_pair_counts(Ledger(storage), "round1", "A1", 0, 3).accuracy() == counts.accuracy()


def test_round1_sink_records_the_counts_before_it_reports(tmp_path: Path) -> None:
    storage = RunStorage(tmp_path, "run", fsync=False)
    seen: list[str] = []

    def report(metrics, checkpoint):
        # By the time the driver sees the report, the counts are in the ledger.
        got = read_pair_counts(Ledger(storage), "round1", "S1", 0, metrics["epoch"])
        seen.append("recorded" if got is not None else "missing")
        assert all(not isinstance(v, dict) for v in metrics.values())

    class Checkpoint:
        @staticmethod
        def from_directory(path):
            return path

    config = {"experiment": "S1", "protocol": {}, "run_storage": storage.storage_uri, "run_name": storage.name}
    sink = ReportSink(report, Checkpoint, {"experiment": "S1"}, tmp_path / "scratch",
                      on_counts=round1_counts_recorder(config))
    folder = sink.staging_dir()
    counts = synthetic_counts(0.6, seed=3)
    (folder / PAIR_COUNTS_FILE).write_text(json.dumps(counts.to_json()))
    sink.commit(folder, reportable({"epoch": 2, "rung_epoch": 2, "val/pairwise_accuracy": counts.accuracy()}))
    assert seen == ["recorded"]
    event = Ledger(storage).events(KIND)[0]
    assert event.payload["rung_epoch"] == 2 and PairCounts.from_json(event.payload["counts"]).accuracy() == counts.accuracy()
    assert round1_counts_recorder({"experiment": "S1", "protocol": {}}) is None  # a bare trainable records nothing
