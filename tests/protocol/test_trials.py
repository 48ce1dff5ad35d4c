"""Fold jobs: their units, their last report and choice of checkpoint; a trial's local scratch (no Ray needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pianoray.config import ProtocolConfig
from pianoray.protocol.trials import (
    SCRATCH_PREFIX,
    _checkpoint_place,
    best_checkpoint,
    fold_checkpoint_config,
    job_units,
    sweep_scratch,
    train_run_name,
    trial_scratch,
)
from pianoray.records import ROUND3
from pianoray.training.checkpoint import METRICS_FILE


def test_best_checkpoint_skips_epochs_that_select_nothing() -> None:
    """A self-supervised epoch (selectable False) never stands for the fold, even with the best value; ties
    go to the earlier epoch (as the ledger's summaries pick); NaN values are not candidates."""
    kept = [("ssl", {"val/pairwise_accuracy": 0.9, "selectable": False, "epoch": 1}),
            ("e3", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 3}),
            ("e2", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 2}),
            ("nan", {"val/pairwise_accuracy": float("nan"), "selectable": True, "epoch": 4})]
    assert best_checkpoint(kept) == "e2"
    assert best_checkpoint(kept[:1]) == "ssl"
    assert best_checkpoint(kept[3:]) == "nan"  # no scored epoch: the newest
    assert best_checkpoint([]) is None


def test_trial_scratch_is_removed_when_the_trial_ends_or_fails(tmp_path: Path) -> None:
    with trial_scratch(tmp_path) as d:
        (d / "next").mkdir()
        (d / "next" / "state.pt").write_bytes(b"x" * 1024)
    assert not d.exists()
    with pytest.raises(RuntimeError), trial_scratch(tmp_path) as d:
        raise RuntimeError("the trial failed")
    assert not d.exists() and not list(tmp_path.iterdir())


def test_a_new_scratch_sweeps_those_of_processes_that_are_gone(tmp_path: Path) -> None:
    """A trial killed mid-epoch leaves its scratch; the next one on the machine removes it (the pid is gone),
    never one of a live process, nor anything not ours."""
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}{int(gone.stdout)}-abc"
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"
    other = tmp_path / "someone-elses"
    for d in (dead, live, other):
        (d / "next").mkdir(parents=True)
    with trial_scratch(tmp_path) as mine:
        assert not dead.exists() and live.exists() and other.exists() and mine.exists()
    sweep_scratch(tmp_path)
    assert live.exists() and other.exists()


def test_a_node_without_the_drivers_starting_weights_fetches_them_from_the_run(tmp_path: Path) -> None:
    """Pretrained weights and Round 3's starting states are made on the driver's disk, and published into the
    run's storage: a trial on another node (here: the driver's files are gone) fetches its own from the run,
    and leaves present ones be."""
    from pianoray.config import ProtocolConfig
    from pianoray.protocol.run import publish_starts
    from pianoray.protocol.storage import RunStorage
    from pianoray.protocol.trials import local_starts, start_rel
    from pianoray.training.pretrain import ENCODER_FILE

    storage = RunStorage(tmp_path / "runs", "r", fsync=False)
    driver = tmp_path / "driver"
    (driver / "pretrained").mkdir(parents=True)
    (driver / "pretrained" / ENCODER_FILE).write_bytes(b"every fold")
    (driver / "fold0.pt").write_bytes(b"fold-0 state")
    (driver / "fold1.pt").write_bytes(b"fold-1 state")
    cfg = ProtocolConfig.model_validate({"experiments": {"S2": {
        "init_encoder": str(driver / "pretrained"),
        "init_encoder_folds": {0: str(driver / "fold0.pt"), 1: str(driver / "fold1.pt")}}}})
    publish_starts(cfg, storage, ["S2"])
    assert storage.read_bytes(start_rel("S2", None)) == b"every fold"
    assert storage.read_bytes(start_rel("S2", 1)) == b"fold-1 state"

    (driver / "fold1.pt").unlink()
    (driver / "pretrained" / ENCODER_FILE).unlink()
    config = {"run_storage": storage.storage_uri, "run_name": storage.name}
    exp = local_starts(cfg, "S2", config, tmp_path / "scratch").experiments["S2"]
    assert exp.init_encoder_folds[0] == driver / "fold0.pt"  # present: left as it is
    assert exp.init_encoder_folds[1].read_bytes() == b"fold-1 state" and exp.init_encoder.read_bytes() == b"every fold"
    assert tmp_path / "scratch" in exp.init_encoder.parents
    assert local_starts(cfg, "S2", {}, tmp_path / "scratch2") is cfg  # no run: nothing to fetch from
    assert not (tmp_path / "scratch2").exists()


def test_a_round3_job_trains_every_fusion_fold_by_fold_and_local_folds_fill_the_job_slots() -> None:
    """Round 3's fold jobs: each trains every fusion of its folds, fold by fold (the fusions of a fold share its
    frozen winners); on a local head the folds split in order over the jobs that run at once; on a cluster one
    fold a job. Round 2's grouping ignores the slots (a Round-2 job trains one experiment)."""
    cfg = ProtocolConfig.model_validate({"round2": {"folds": 4}})
    assert cfg.round3.fold_groups(local=True, slots=2) == [[0, 1], [2, 3]]
    assert cfg.round3.fold_groups(local=True, slots=3) == [[0, 1], [2], [3]]
    assert cfg.round3.fold_groups(local=True, slots=8) == [[0], [1], [2], [3]]
    assert cfg.round3.fold_groups(local=False, slots=2) == [[0], [1], [2], [3]]
    assert cfg.round3.model_copy(update={"fold_jobs": "per_experiment"}).fold_groups(True, slots=2) == [[0, 1, 2, 3]]
    assert cfg.round2.fold_groups(local=True, slots=2) == [[0, 1, 2, 3]]
    units = job_units({"experiments": ["F1", "F3"], "folds": [2, 3]})
    assert units == [("F1", 2), ("F3", 2), ("F1", 3), ("F3", 3)]
    assert train_run_name(["F1", "F3"], [2, 3], ROUND3) == "round3-F1+F3-folds2-3"
    assert train_run_name("A1", [1]) == "round2-A1-fold1"


def test_a_resumed_job_finds_the_unit_its_checkpoint_names(tmp_path: Path) -> None:
    assert _checkpoint_place(None, ("F1", 0)) is None
    (tmp_path / METRICS_FILE).write_text(json.dumps({"experiment": "F3", "fold": 1, "epoch": 2, "stop": True}))
    assert _checkpoint_place(tmp_path, ("F1", 0)) == (("F3", 1), True)
    (tmp_path / METRICS_FILE).write_text(json.dumps({"epoch": 2}))  # one written before units were named
    assert _checkpoint_place(tmp_path, ("F1", 0)) == (("F1", 0), False)


def test_a_multi_unit_job_keeps_each_units_best_until_it_is_scored() -> None:
    """Several units in one job keep the most recent checkpoints: enough to span from a unit's best to its end,
    patience epochs, or two patiences when Round 3 unfreezes the winners at the first plateau."""
    cfg = ProtocolConfig.model_validate({"round2": {"patience": 5, "num_to_keep": 3}, "round3": {"patience": 4}})
    assert fold_checkpoint_config(cfg, 1).num_to_keep == 3
    assert fold_checkpoint_config(cfg, 4).num_to_keep == 6
    assert fold_checkpoint_config(cfg, 8, ROUND3).num_to_keep == 5
    cfg.round3.unfreeze_lr = 1e-6
    assert fold_checkpoint_config(cfg, 8, ROUND3).num_to_keep == 9
