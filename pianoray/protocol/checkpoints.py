"""Tune's bookkeeping of a trial's checkpoints, made to agree with what storage holds.

Tune restores a trial from the experiment snapshot its driver writes every few checkpoints. After a
``kill -9`` of the driver that snapshot lags the trial's checkpoints in storage: it lists checkpoints the
dead driver had already deleted (``num_to_keep``), misses the newer ones, and holds a stale checkpoint
index. Restored as is, the trial resumes from an old checkpoint, writes its next one over a newer
checkpoint folder, and Tune's checkpoint manager fails (``Error handling checkpoint ... Path not found``)
each time it tries to delete a checkpoint that is gone, leaving the trial's list of checkpoints unknown.

:func:`reconcile_trial_checkpoints` rebuilds that list from storage before the trial starts again:
every ``checkpoint_*`` folder of the trial, oldest first; the newest complete one (its ``metrics.json``
readable) as the latest, the one Tune restores from; the index after the highest folder as the next.
:func:`rung_checkpoint` finds the checkpoint a trial reported at a given epoch (where a trial re-judged
after an errored leader restarts).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # mirrors pianoray.training.checkpoint.METRICS_FILE (no torch import here)
_CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


@dataclass(frozen=True)
class StoredCheckpoint:
    """One ``checkpoint_<index>`` folder of a trial in storage; ``metrics`` None when unreadable."""

    index: int
    path: str
    metrics: dict[str, Any] | None

    @property
    def complete(self) -> bool:
        return self.metrics is not None


def stored_checkpoints(fs: Any, trial_path: str) -> list[StoredCheckpoint]:
    """Every checkpoint folder under ``trial_path`` on ``fs`` (pyarrow), by index, oldest first."""
    import pyarrow.fs as pafs

    out = []
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        m = _CHECKPOINT_DIR.match(info.base_name)
        if info.type != pafs.FileType.Directory or m is None:
            continue
        metrics = None
        try:
            with fs.open_input_stream(f"{info.path}/{METRICS_FILE}") as f:
                loaded = json.loads(f.read())
            metrics = loaded if isinstance(loaded, dict) else None
        except (OSError, ValueError):
            pass  # a folder a killed driver left half-copied
        out.append(StoredCheckpoint(int(m.group(1)), info.path, metrics))
    return sorted(out, key=lambda c: c.index)


def _training_result(stored: StoredCheckpoint, fs: Any) -> Any:
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult

    return _TrainingResult(checkpoint=Checkpoint(stored.path, filesystem=fs), metrics=dict(stored.metrics or {}))


def _trial_storage(trial: Any) -> tuple[Any, str] | None:
    storage = getattr(trial, "storage", None)
    if storage is None or getattr(storage, "trial_dir_name", None) is None:
        return None  # a trial that has not been given a folder yet (new): nothing stored
    return storage.storage_filesystem, storage.trial_fs_path


def reconcile_trial_checkpoints(trial: Any) -> bool:
    """Make ``trial``'s checkpoint manager list exactly the checkpoints storage holds; True if it changed.

    A trial with no folder of its own yet, or whose folder holds no checkpoint, keeps what it has (a trial
    restarted from another trial's checkpoint holds that one as its latest until it writes its own).
    """
    where = _trial_storage(trial)
    manager = getattr(getattr(trial, "run_metadata", None), "checkpoint_manager", None)
    if where is None or manager is None:
        return False
    fs, trial_path = where
    try:
        stored = stored_checkpoints(fs, trial_path)
    except OSError as e:
        logger.warning("could not list the checkpoints of trial %s in %s: %s", trial, trial_path, e)
        return False
    if not stored:
        return False
    known = [r.checkpoint.path for r in manager._checkpoint_results]
    latest = manager.latest_checkpoint_result
    complete = [c for c in stored if c.complete]
    newest = complete[-1] if complete else None
    # Incomplete folders first: the manager deletes its oldest entries first once over num_to_keep.
    order = [c for c in stored if not c.complete] + complete
    unchanged = (
        known == [c.path for c in order]
        and (latest.checkpoint.path if latest is not None and latest.checkpoint is not None else None)
        == (newest.path if newest is not None else None)
        and trial.storage.current_checkpoint_index >= stored[-1].index
    )
    if unchanged:
        return False
    results = [_training_result(c, fs) for c in order]
    manager._checkpoint_results = results
    manager._latest_checkpoint_result = results[-1] if newest is not None else None
    # The next report writes checkpoint_<index + 1>: never over a folder already there.
    trial.storage.current_checkpoint_index = max(trial.storage.current_checkpoint_index, stored[-1].index)
    trial.invalidate_json_state()  # the next experiment snapshot holds the corrected list
    trial.run_metadata.invalidate_cache()
    logger.info(
        "trial %s: checkpoints re-read from storage (Tune's snapshot listed %d, storage holds %d; resuming from %s)",
        trial, len(known), len(stored), newest.path if newest is not None else "scratch",
    )
    return True


def rung_checkpoint(trial: Any, epoch: int, epoch_key: str = "epoch") -> Any:
    """The checkpoint ``trial`` reported at ``epoch`` (``metrics[epoch_key] == epoch``), as a Tune
    ``_TrainingResult``; failing that, its newest complete checkpoint before ``epoch``, then its newest; None
    when it has none in storage."""
    where = _trial_storage(trial)
    if where is None:
        return None
    fs, trial_path = where
    complete = [c for c in stored_checkpoints(fs, trial_path) if c.complete]

    def at(c: StoredCheckpoint) -> float:
        try:
            return float(c.metrics.get(epoch_key))  # type: ignore[union-attr]
        except (TypeError, ValueError):
            return float("nan")

    exact = [c for c in complete if at(c) == epoch]
    before = [c for c in complete if at(c) < epoch]
    pick = (exact or before or complete or [None])[-1]
    if pick is None:
        return None
    if not exact:
        logger.warning("trial %s has no checkpoint at %s %d; restarting from %s", trial, epoch_key, epoch, pick.path)
    return _training_result(pick, fs)
