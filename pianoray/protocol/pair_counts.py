"""Where a trial's pair counts live: one ledger event per reported epoch, beside its Tune result.

The noise guard (and every rung decision's ``gap_ci``) needs each trial's per-passage, per-dimension pair
counts (:class:`pianoray.objectives.metrics.PairCounts`) at the judged epoch. A Tune result keeps scalars
and short lists, so the counts do not travel in it: the Round-1 trainable writes them to the run's ledger
**before** it reports the epoch (``ledger/events/paircounts/...``, id
``paircounts/<round>/<experiment>/fold<k>/e<epoch>``, written only if absent, so a retried or resumed
epoch never duplicates them), and the scheduler, processing that report in the driver, reads them back with
:func:`read_pair_counts`. Every checkpoint also holds its epoch's counts (``pair_counts.json``, see
``pianoray.training.checkpoint``).

Round 1 records every epoch (a few hundred small objects per run). Round-2 folds do not: selection
re-scores each fold's best checkpoint and keeps its counts in the fold's ledger event.

No torch, no Ray: ``pianoray status`` may import this.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.ledger import Event, Ledger, event_relpath
from pianoray.protocol.storage import RunStorage

KIND = "paircounts"


def pair_counts_event_id(round: str, experiment: str, fold: int, epoch: int) -> str:
    """The idempotency key of one epoch's counts (``epoch``: the loop's epoch, not Tune's iteration)."""
    return f"{KIND}/{round}/{experiment}/fold{int(fold)}/e{int(epoch):04d}"


def record_pair_counts(ledger: Ledger, round: str, experiment: str, fold: int, epoch: int, counts: PairCounts,
                       **info: Any) -> bool:
    """Write one epoch's counts (``info``: e.g. ``rung_epoch``); True when this call wrote them."""
    event = Event(kind=KIND, event_id=pair_counts_event_id(round, experiment, fold, epoch), time=time.time(),
                  round=round, experiment=experiment, fold=int(fold),
                  payload={"epoch": int(epoch), **info, "counts": counts.to_json()})
    return ledger.append(event)


def read_pair_counts(ledger: Ledger, round: str, experiment: str, fold: int, epoch: int) -> PairCounts | None:
    """The counts ``experiment`` recorded at ``epoch`` of ``round`` on ``fold``; None when there are none.

    One read of the event's own object (cheap on S3); after compaction the ledger's merged events."""
    event_id = pair_counts_event_id(round, experiment, fold, epoch)
    rel = event_relpath(KIND, event_id)
    try:
        counts = ledger.storage.read_json(rel)["payload"]["counts"]
    except FileNotFoundError:
        found = [e for e in ledger.events(KIND) if e.event_id == event_id]
        if not found:
            return None
        counts = found[0].data.counts
    return PairCounts.from_json(counts)


_LEDGERS: dict[tuple[str, str], Ledger] = {}


def run_ledger(storage_uri: str, name: str) -> Ledger:
    """The ledger of run ``name`` under ``storage_uri`` (``RunStorage.storage_uri``), one per process: the
    Round-1 trainables and the scheduler reach it from what pickles (two strings)."""
    key = (storage_uri, name)
    if key not in _LEDGERS:
        _LEDGERS[key] = Ledger(RunStorage(storage_uri, name))
    return _LEDGERS[key]


def read_run_counts(storage_uri: str, name: str, round: str, fold: int, experiment: str, epoch: int
                    ) -> PairCounts | None:
    """:func:`read_pair_counts` on run ``name``; bound with functools.partial it is the scheduler's
    ``pair_counts`` source, ``(experiment, epoch) -> counts``, and pickles with the scheduler."""
    return read_pair_counts(run_ledger(storage_uri, name), round, experiment, fold, epoch)


def counts_source(storage: RunStorage, round: str, fold: int) -> Callable[[str, int], PairCounts | None]:
    """The scheduler's source of pair counts for ``round`` on ``fold`` of the run in ``storage``."""
    import functools

    return functools.partial(read_run_counts, storage.storage_uri, storage.name, round, int(fold))
