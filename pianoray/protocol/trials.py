"""The Ray side of one trial: the shared ``fit`` loop wrapped for Tune (Round 1) and Train (Rounds 2 and 3).

Round 1: :func:`screen_trainable` is a Tune function trainable; it reports every epoch with a checkpoint
through :class:`ReportSink`, and resumes from ``tune.get_checkpoint()`` after a PAUSE or a restore.
Rounds 2 and 3: :func:`fold_trainable` is a driver-side Tune function trainable (0.1 CPU) that runs a fold job
as a Ray Train ``TorchTrainer`` with ``TuneReportCallback``: its (experiment, fold) units (:func:`job_units`;
one experiment in Round 2, every fusion in Round 3), each scored and checkpointed on its own; Ray's
``CheckpointConfig`` keeps the checkpoints (:func:`fold_checkpoint_config`). With
``round2.workers_per_fold`` W > 1 the fold is data parallel (:func:`fold_worker`: DDP through
``ray.train.torch.prepare_model``, each rank a shard of every global batch). The fold's test part is scored
once, from the best checkpoint, at the end of the Train job on its rank-0 worker (its GPU where it has one),
and reported from there as the job's last report. A fitted (non-neural) reference has no
epochs and no checkpoints: its fold trainable (holding the experiment's resources) fits and scores it in
place (:func:`fitted_fold`), reporting the same keys as a neural fold.

Epochs are counted by ``fit`` (stored in the checkpoint), never by ``training_iteration``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from pianoray.config import ProtocolConfig
from pianoray.models import registry
from pianoray.objectives.metrics import PairCounts
from pianoray.records import ROUND1, ROUND2, SELECTION_METRIC, EpochRecord, FoldScore, reportable
from pianoray.training.checkpoint import METRICS_FILE, PAIR_COUNTS_FILE, STATE_FILE, read_state
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions
from pianoray.training.loop import Budget, fit

logger = logging.getLogger(__name__)

_DATA: dict[str, ExperimentData] = {}


def experiment_data(cfg: ProtocolConfig) -> ExperimentData:
    """Per-process cache: with ``reuse_actors`` a worker opens the corpus once for all its trials."""
    key = cfg.data.model_dump_json() + str(cfg.seed)
    if key not in _DATA:
        _DATA[key] = ExperimentData.from_config(cfg)
    return _DATA[key]


SCRATCH_PREFIX = "pianoray-scratch-"


@contextmanager
def trial_scratch(root: Path | None = None) -> Iterator[Path]:
    """A local folder for one trial's staged checkpoints and resume copies, removed when the trial ends.

    Ray copies each reported checkpoint into the run's storage, so what is staged here is scratch (~10 MB a
    trial). A process killed mid-trial (a fault, an actor Ray stops) cannot clean up: each new scratch folder
    first removes those of processes that are gone (the pid is in the name), so runs do not fill the disk.
    """
    root = Path(root or tempfile.gettempdir())
    sweep_scratch(root)
    d = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-", dir=root))
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def sweep_scratch(root: Path | None = None) -> None:
    """Remove the scratch folders under ``root`` (default: the temp dir) whose process has ended."""
    for d in Path(root or tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*"):
        pid = d.name[len(SCRATCH_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(d, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class ReportSink:
    """A CheckpointSink that hands each epoch's directory to Ray's report call (Tune or Train).

    Ray copies the directory into the run's storage and, for Train, its ``CheckpointConfig`` keeps the
    top-k: one checkpoint policy, Ray's. Each epoch is staged in ``scratch`` (the trial's
    :func:`trial_scratch`), replacing the last. ``on_counts(epoch, metrics, counts)``, when given, receives
    the epoch's validation pair counts (the checkpoint's ``pair_counts.json``) BEFORE the report, so that
    whoever processes the report (the scheduler, in the driver) finds them already recorded.
    """

    def __init__(self, report: Callable[..., None], checkpoint_cls: Any, extra: dict[str, Any], scratch: Path,
                 on_counts: Callable[[int, dict[str, Any], PairCounts], None] | None = None) -> None:
        self._report = report
        self._checkpoint_cls = checkpoint_cls
        self._extra = extra
        self._on_counts = on_counts
        self._staging = scratch

    def staging_dir(self) -> Path:
        d = self._staging / "next"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def commit(self, directory: Path, metrics: dict[str, Any]) -> None:
        counts_file = directory / PAIR_COUNTS_FILE
        if self._on_counts is not None and counts_file.is_file():
            self._on_counts(int(metrics["epoch"]), metrics, PairCounts.from_json(json.loads(counts_file.read_text())))
        self._report(reportable({**metrics, **self._extra}), checkpoint=self._checkpoint_cls.from_directory(str(directory)))
        return None


def _resume_dir(checkpoint: Any, scratch: Path) -> Path | None:
    if checkpoint is None:
        return None
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="resume-", dir=scratch)))


def _stored_checkpoints(fs: Any, trial_path: str) -> list[tuple[int, bool, str]]:
    """(epoch, stop, path) of each checkpoint folder of a trial in storage, newest epoch first.

    Our checkpoints carry their epoch and stop flag in ``metrics.json``; a folder without it (or without
    the state) is one a killed driver left half-copied, and is skipped.
    """
    import pyarrow.fs as pafs

    out = []
    for info in fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True)):
        if info.type != pafs.FileType.Directory or not info.base_name.startswith("checkpoint_"):
            continue
        if fs.get_file_info(f"{info.path}/{STATE_FILE}").type != pafs.FileType.File:
            continue
        try:
            with fs.open_input_stream(f"{info.path}/{METRICS_FILE}") as f:
                metrics = json.loads(f.read())
            out.append((int(metrics["epoch"]), bool(metrics.get("stop", False)), info.path))
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return sorted(out, reverse=True)


def newest_trial_checkpoint(given: Any, scratch: Path) -> tuple[Path | None, bool]:
    """Where a Round-1 trial resumes: (local copy of its newest stored checkpoint, whether it had stopped).

    Tune restores a trial from the checkpoint recorded in its experiment snapshot, which the driver
    writes only every few seconds: after a kill -9 of the driver that snapshot can lag the checkpoints
    already in storage, and the trial would train those epochs again (a trial that had finished would
    run again). Every checkpoint we write says its epoch, so resume from the newest complete one.
    """
    from ray import tune

    try:
        storage = tune.get_context().get_storage()
        stored = _stored_checkpoints(storage.storage_filesystem, storage.trial_fs_path)
    except Exception:  # no storage context (e.g. a test calling the trainable directly)
        stored, storage = [], None
    for _epoch, stop, path in stored:
        local = Path(tempfile.mkdtemp(prefix="resume-", dir=scratch))
        try:
            tune.Checkpoint(path, filesystem=storage.storage_filesystem).to_directory(str(local))
            read_state(local)  # a state.pt truncated by the kill fails here: try the next older one
        except Exception:
            shutil.rmtree(local, ignore_errors=True)
            continue
        return local, stop
    return _resume_dir(given, scratch), False


def round1_counts_recorder(config: dict[str, Any]) -> Callable[[int, dict[str, Any], PairCounts], None] | None:
    """Where a Round-1 trial's pair counts go: the run's ledger (``config["run_storage"]``/``["run_name"]``,
    set by the driver), one event per epoch, written before the epoch is reported (the scheduler reads them
    when it judges a rung: ``pianoray.protocol.pair_counts``). None without a run (a bare test trainable)."""
    if not config.get("run_storage") or not config.get("run_name"):
        return None
    from pianoray.protocol.pair_counts import record_pair_counts, run_ledger

    ledger = run_ledger(config["run_storage"], config["run_name"])
    fold = ProtocolConfig.model_validate(config["protocol"]).round1.fold

    def record(epoch: int, metrics: dict[str, Any], counts: PairCounts) -> None:
        record_pair_counts(ledger, ROUND1, config["experiment"], fold, epoch, counts,
                           rung_epoch=metrics.get("rung_epoch"))

    return record


def screen_trainable(config: dict[str, Any], eliminated: Mapping[str, int] | tuple[str, ...] = ()) -> None:
    """Round 1: one experiment on fold ``round1.fold`` with the Round-1 budget, under the scheduler.

    ``eliminated``: experiments stopped at a rung in an earlier session of this run (from the ledger), with
    that rung. Tune does not know a trial was stopped when the driver died before saving its snapshot, and
    restores it as unfinished; such a trial (or one whose newest checkpoint is its last epoch) ends at once,
    without training or reporting, so it never runs again. A trial restarted after a re-judgement
    (``config["revived_at"]``, the rung it restarts from) runs unless it was stopped again at a later rung.
    """
    from ray import tune

    cfg = ProtocolConfig.model_validate(config["protocol"])
    name = config["experiment"]
    if name in eliminated:
        stop_rung = eliminated[name] if isinstance(eliminated, Mapping) else float("inf")
        if int(config.get("revived_at") or 0) < stop_rung:
            return
    with trial_scratch() as scratch:
        resume_from, stopped = newest_trial_checkpoint(tune.get_checkpoint(), scratch)
        if stopped:
            return
        cfg = local_starts(cfg, name, config, scratch)
        data = experiment_data(cfg)
        extra = {"experiment": name, "track": config["track"], "role": config["role"], "round": ROUND1}
        sink = ReportSink(tune.report, tune.Checkpoint, extra, scratch, on_counts=round1_counts_recorder(config))
        budget = Budget(cfg.round1.epochs, cfg.round1.patience)
        for _ in fit(cfg, name, data, cfg.round1.fold, budget, tiers=cfg.round1.tiers, sink=sink,
                     resume_from=resume_from):
            pass


def job_units(config: Mapping[str, Any]) -> list[tuple[str, int]]:
    """The (experiment, fold) units of one fold job, in the order it trains them: fold by fold, and on each fold
    every experiment of ``config["experiments"]`` (Round 2: one experiment; Round 3: every fusion, which fuse
    that fold's same frozen winners)."""
    return [(name, int(k)) for k in config["folds"] for name in config["experiments"]]


def unit_key(experiment: str, fold: int) -> str:
    """``"<experiment>/<fold>"``: how a scored unit is named to a fold job (``finished``)."""
    return f"{experiment}/{fold}"


def fold_worker(config: dict[str, Any]) -> None:
    """Inside a Ray Train worker: the units of one job (:func:`job_units`, in order), each a full-budget fit
    with early stopping, then its test score.

    Every rank trains (data parallel when the job has several workers) and reports each epoch, as Ray Train
    requires; rank 0 alone writes the checkpoints and scores each unit's best one on the test part, which that
    unit's last report carries (the other ranks report nothing new then), so the driver writes each fold's ledger
    event once. Resume: units the driver has a score for (``config["finished"]``) are skipped. The job's latest
    checkpoint names its experiment and fold, and whether it was that unit's last epoch (``metrics.json``): that
    unit resumes from it (or goes straight to scoring); a unit before it trained earlier in this job, so without
    a score it is only scored again from its checkpoints (the driver died between the report and the ledger), or,
    when the job has since let them go (:func:`fold_checkpoint_config`), trained again from the start: training
    is deterministic, so the score is the one it would have had.
    """
    import ray.train
    from ray.train.torch import get_device, prepare_model

    cfg = ProtocolConfig.model_validate(config["protocol"])
    units, finished = job_units(config), set(config.get("finished", ()))
    round_ = config.get("round", ROUND2)
    budget = cfg.fold_round(round_)
    rank = ray.train.get_context().get_world_rank()
    data = experiment_data(cfg)
    device = get_device()
    with trial_scratch() as scratch:
        for name in config["experiments"]:
            cfg = local_starts(cfg, name, config, scratch)
        resume = _resume_dir(ray.train.get_checkpoint(), scratch)
        at = _checkpoint_place(resume, units[0])
        wrap = None
        if ray.train.get_context().get_world_size() > 1:
            # find_unused_parameters: a stage may leave heads out of the loss (A2's self-supervised stage)
            wrap = partial(prepare_model, move_to_device=False, parallel_strategy_kwargs={"find_unused_parameters": True})
        for unit in units:
            name, fold = unit
            if unit_key(name, fold) in finished:
                continue
            mine = at is not None and unit == at[0]
            trained_before = at is not None and units.index(unit) < units.index(at[0])
            if trained_before and not _reported(name, fold):
                trained_before = False
                logger.warning("%s %s fold %d: no score in the ledger and its checkpoints are gone; training it "
                               "again from the start (deterministic: the same score)", round_, name, fold)
            if not trained_before and not (mine and at[1]):
                extra = {"experiment": name, "fold": fold, "round": round_}
                if rank == 0:
                    sink, callbacks = ReportSink(ray.train.report, ray.train.Checkpoint, extra, scratch), ()
                else:  # a report without a checkpoint: Ray Train keeps rank 0's metrics and checkpoint
                    sink, callbacks = None, (lambda r, extra=extra: ray.train.report(r.to_report(**extra)),)
                start = resume if mine else None
                for _ in fit(cfg, name, data, fold, Budget(budget.epochs, budget.patience,
                                                           getattr(budget, "unfreeze_lr", None)), tiers=budget.tiers,
                             sink=sink, callbacks=callbacks, resume_from=start, device=device, wrap_model=wrap):
                    pass
            final: dict[str, Any] = {}
            if rank == 0:
                final = score_fold(cfg, name, fold, data, _reported(name, fold), device, keep=best_store(config),
                                   round_=round_)
            ray.train.report(final)


def _reported(experiment: str, fold: int) -> list[Any]:
    """The checkpoints of ``experiment`` on ``fold`` that this Train job still keeps (what every rank may ask its
    controller)."""
    import ray.train

    return [r for r in ray.train.get_all_reported_checkpoints()
            if r.metrics.get("fold") == fold and r.metrics.get("experiment", experiment) == experiment]


def fold_checkpoint_config(cfg: ProtocolConfig, n_units: int, round_: str = ROUND2) -> Any:
    """Which checkpoints a fold job keeps. One unit (one experiment on one fold): the top ``num_to_keep`` by
    validation pairwise accuracy. Several units in one job: Ray ranks checkpoints across the whole job, so top-k
    could drop a weaker unit's best before it is scored; the most recent ``patience + 1`` (at least
    ``num_to_keep``) are kept instead, which always hold the running unit's best (early stopping ends a unit
    ``patience`` epochs after its best; ``2 * patience`` with Round 3's ``unfreeze_lr``, whose first plateau
    unfreezes the winners and counts patience afresh) and its latest (for resume), and let each scored unit's
    checkpoints go as the next one trains."""
    import ray.train

    r2 = cfg.fold_round(round_)
    if n_units == 1:
        return ray.train.CheckpointConfig(num_to_keep=r2.num_to_keep, checkpoint_score_attribute=SELECTION_METRIC,
                                          checkpoint_score_order="max")
    plateaus = 2 if getattr(r2, "unfreeze_lr", None) is not None else 1
    return ray.train.CheckpointConfig(num_to_keep=max(r2.num_to_keep, plateaus * r2.patience + 1))


def _checkpoint_place(resume: Path | None, first: tuple[str, int]) -> tuple[tuple[str, int], bool] | None:
    """((experiment, fold), whether it was that unit's last epoch) of the checkpoint a job resumes from (its
    ``metrics.json``; a checkpoint that does not name them is the job's ``first`` unit's); None for a job
    starting afresh."""
    if resume is None or not (resume / METRICS_FILE).is_file():
        return None
    metrics = json.loads((resume / METRICS_FILE).read_text())
    unit = (str(metrics.get("experiment", first[0])), int(metrics.get("fold", first[1])))
    return unit, bool(metrics.get("stop", False))


def score_fold(cfg: ProtocolConfig, name: str, fold: int, data: ExperimentData, reported: list[Any],
               device: Any, keep: "BestStore | None" = None, round_: str = ROUND2) -> dict[str, Any]:
    """The fold's final report: the test scores of its best reported checkpoint (:func:`best_checkpoint`),
    whose model ``keep`` stores for what comes after Round 2 (:class:`BestStore`)."""
    from pianoray.training.scoring import evaluate_checkpoint

    best = best_checkpoint([(r.checkpoint, r.metrics) for r in reported])
    if best is None:
        raise RuntimeError(f"{round_} {name} fold {fold}: the Train run reported no checkpoint")
    with best.as_directory() as d:
        # 200 resamples: the run's uncertainty is the t-interval over folds; per-fold CIs are for display.
        test, predictions = evaluate_checkpoint(cfg, name, data, fold, Path(d), n_boot=200, device=device)
        if keep is not None:
            keep.put(name, fold, Path(d), predictions)
    return FoldScore.from_scores(name, fold, test, round_).to_report()


class BestStore:
    """Each scored fold's best model, ``<run>/best/<experiment>/fold<k>/``: its weights (``model.pt``, the
    PerformanceModel's state dict, no optimiser), its ``metrics.json`` and its per-segment test predictions
    (``test_predictions.npz``). Ray Train keeps a job's checkpoints only while it runs its folds (a multi-fold
    job lets a scored fold's go: :func:`fold_checkpoint_config`); what starts from a trained fold (Round 3's
    frozen winners and its verdict, export) reads it here, local or in object storage."""

    DIR = "best"
    MODEL = "model.pt"
    TEST = "test_predictions.npz"

    def __init__(self, storage_uri: str, run_name: str) -> None:
        from pianoray.protocol.storage import RunStorage

        self.storage = RunStorage(storage_uri, run_name)

    def rel(self, experiment: str, fold: int, file: str) -> str:
        return f"{self.DIR}/{experiment}/fold{fold}/{file}"

    def put(self, experiment: str, fold: int, checkpoint: Path, test: Predictions | None = None) -> None:
        """Store the fold's best model, and ``test``, its predictions on the fold's test part (written first:
        the model's presence says the fold is stored whole)."""
        import io

        import torch

        if test is not None:
            self.put_test(experiment, fold, test)
        buf = io.BytesIO()
        torch.save(read_state(checkpoint)["model"], buf)
        self.storage.write_bytes(self.rel(experiment, fold, METRICS_FILE), (checkpoint / METRICS_FILE).read_bytes())
        self.storage.write_bytes(self.rel(experiment, fold, self.MODEL), buf.getvalue())

    def put_test(self, experiment: str, fold: int, test: Predictions) -> None:
        import io

        import numpy as np

        buf = io.BytesIO()
        np.savez(buf, segment_ids=np.asarray(test.segment_ids, dtype=str), groups=test.groups.astype(str),
                 scores=test.scores, regression=test.regression, labels=test.labels, has_labels=test.has_labels)
        self.storage.write_bytes(self.rel(experiment, fold, self.TEST), buf.getvalue())

    def test_predictions(self, experiment: str, fold: int) -> Predictions | None:
        """The stored per-segment predictions of ``experiment`` on ``fold``'s test part (no ``z``: [M, 0]);
        None when the fold stored none (a fitted reference, a fold scored before they were kept)."""
        import io

        import numpy as np

        rel = self.rel(experiment, fold, self.TEST)
        if not self.storage.exists(rel):
            return None
        with np.load(io.BytesIO(self.storage.read_bytes(rel))) as f:
            return Predictions(f["segment_ids"].tolist(), f["scores"], f["regression"], f["labels"],
                               f["has_labels"], f["groups"].astype(object), np.zeros((len(f["segment_ids"]), 0)))

    def folds(self, experiment: str) -> list[int]:
        """The folds of ``experiment`` stored whole (their model written), in order."""
        stored = {rel.split("/")[2] for rel in self.storage.list(f"{self.DIR}/{experiment}")
                  if rel.endswith(f"/{self.MODEL}")}
        return sorted(int(d.removeprefix("fold")) for d in stored if d.startswith("fold"))

    def has(self, experiment: str, fold: int) -> bool:
        return self.storage.exists(self.rel(experiment, fold, self.MODEL))

    def weights(self, experiment: str, fold: int) -> dict[str, Any]:
        """The stored PerformanceModel state dict of ``experiment`` on ``fold``."""
        import io

        import torch

        data = self.storage.read_bytes(self.rel(experiment, fold, self.MODEL))
        return torch.load(io.BytesIO(data), map_location="cpu")


START_DIR = "starts"  # <run>/starts/<experiment>/{all,fold<k>}.pt: encoder weights the trials start from


def start_rel(experiment: str, fold: int | None) -> str:
    """Where ``experiment``'s starting encoder weights (pretrained, or a fusion's starting state) on ``fold``
    (None: every fold's) are kept in the run's storage."""
    return f"{START_DIR}/{experiment}/{'all' if fold is None else f'fold{fold}'}.pt"


def start_files(cfg: ProtocolConfig, name: str) -> dict[int | None, Path]:
    """fold (None: every fold) -> the file ``name``'s encoder starts from, as the driver set them."""
    from pianoray.training.pretrain import ENCODER_FILE

    exp = cfg.experiments.get(name)
    paths: dict[int | None, Path] = {None: exp.init_encoder} if exp and exp.init_encoder else {}
    paths.update(exp.init_encoder_folds if exp else {})
    return {k: Path(p) / ENCODER_FILE if Path(p).is_dir() else Path(p) for k, p in paths.items()}


def local_starts(cfg: ProtocolConfig, name: str, config: Mapping[str, Any], scratch: Path) -> ProtocolConfig:
    """``cfg`` with ``name``'s starting weights on this node. The driver makes them on its own disk (the
    pretraining cache; Round 3's starting states) and copies them into the run's storage (:func:`start_rel`,
    ``run.publish_starts``); a node that lacks the driver's file (another machine of a cluster) fetches it from
    there into ``scratch``. Unchanged without a run (a bare test trainable) or when every file is here."""
    exp = cfg.experiments.get(name)
    missing = [k for k, p in start_files(cfg, name).items() if not p.exists()]
    if not missing or not config.get("run_storage") or not config.get("run_name"):
        return cfg
    from pianoray.files import atomic_write
    from pianoray.protocol.storage import RunStorage

    storage = RunStorage(config["run_storage"], config["run_name"])
    here = {k: atomic_write(scratch / "starts" / f"{'all' if k is None else f'fold{k}'}.pt",
                            storage.read_bytes(start_rel(name, k))) for k in missing}
    update: dict[str, Any] = {"init_encoder_folds": {**exp.init_encoder_folds,
                                                     **{k: p for k, p in here.items() if k is not None}}}
    if None in here:
        update["init_encoder"] = here[None]
    return cfg.model_copy(update={"experiments": {**cfg.experiments, name: exp.model_copy(update=update)}})


def best_store(config: Mapping[str, Any]) -> BestStore | None:
    """Where a fold job keeps its folds' best models (``config["run_storage"]``/``["run_name"]``, set by the
    driver); None without a run (a bare test trainable)."""
    if not config.get("run_storage") or not config.get("run_name"):
        return None
    return BestStore(config["run_storage"], config["run_name"])


def fitted_fold(cfg: ProtocolConfig, name: str, fold: int, report: Callable[[dict[str, Any]], None]) -> None:
    """Round 2 for a fitted reference: one fit on the fold's training part, then two reports.

    First one "epoch" (epoch 1, its validation metrics; the ledger and selection read a fold's validation
    figures from epoch reports), then the ``final`` report with the test metrics, as a neural fold ends.
    """
    from pianoray.training.reference import fit_and_score

    val, test = fit_and_score(cfg, name, experiment_data(cfg), fold, n_boot=200)
    epoch = EpochRecord(epoch=1, stage="fit", metrics={**val, "selectable": True}, best_epoch=1,
                        best_metric=val.get(SELECTION_METRIC), stop=True, early_stopped=False, rung_epoch=1,
                        seconds=val.get("fit_seconds"), samples=0)
    report(epoch.to_report(experiment=name, fold=fold, round=ROUND2))
    report(FoldScore.from_scores(name, fold, test).to_report())


def best_checkpoint(reported: list[tuple[Any, Mapping[str, Any]]]) -> Any:
    """The fold's best checkpoint among ``reported`` (checkpoint, metrics) pairs, by validation pairwise
    accuracy among the epochs that select models (the rule the ledger's Round-2 summaries apply: a
    self-supervised stage's epoch never stands for the fold), the earliest on ties; any kept checkpoint when
    none is marked selectable; the newest epoch's when none has a score; None when there is none."""
    kept = [(c, m) for c, m in reported
            if isinstance(m.get(SELECTION_METRIC), (int, float)) and m[SELECTION_METRIC] == m[SELECTION_METRIC]]
    pool = [(c, m) for c, m in kept if m.get("selectable", True)] or kept
    if not pool:
        return max(reported, key=lambda cm: int(cm[1].get("epoch", 0)))[0] if reported else None
    return max(pool, key=lambda cm: (cm[1][SELECTION_METRIC], -int(cm[1].get("epoch", 0))))[0]


def fold_trainable(config: dict[str, Any], finished: tuple[str, ...] = ()) -> None:
    """Round 2 or 3, one job: the units of ``config["experiments"]`` x ``config["folds"]`` (:func:`job_units`;
    Round 2: one experiment, one fold on a cluster or all of them on a local head, ``round2.fold_jobs``; Round 3:
    every fusion on its folds), as a TorchTrainer run under a fixed name, so that rerunning it resumes.

    Ray Train V2 resumes a job only when it is rerun with the same ``RunConfig(name, storage_path)``.
    ``finished``: :func:`unit_key` of units scored in an earlier session (their ``fold`` ledger event exists);
    they are skipped, and a job whose units are all scored ends at once instead of starting Train again.
    Checkpoints kept: :func:`fold_checkpoint_config`.
    """
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    cfg = ProtocolConfig.model_validate(config["protocol"])
    names, folds, units = list(config["experiments"]), list(config["folds"]), job_units(config)
    round_ = config.get("round", ROUND2)
    budget = cfg.fold_round(round_)
    done = [unit_key(*u) for u in units if unit_key(*u) in finished]
    if len(done) == len(units):
        return
    fitted = [n for n in names if registry.get(cfg.encoder_name(n)).kind == "fitted"]
    if fitted:
        if len(names) > 1:
            raise ValueError(f"a fold job of fitted references trains one experiment, not {names}")
        for name, k in units:
            if unit_key(name, k) not in done:
                fitted_fold(cfg, name, k, tune.report)
        return
    res = max((cfg.resources_for(n) for n in names), key=lambda r: (r.gpu, r.cpu))
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={"protocol": config["protocol"], "experiments": names, "folds": folds, "finished": done,
                           "round": round_, "run_storage": config.get("run_storage"),
                           "run_name": config.get("run_name")},
        scaling_config=ray.train.ScalingConfig(
            num_workers=budget.workers_per_fold,
            use_gpu=res.gpu > 0,
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu > 0 else {})},
        ),
        run_config=ray.train.RunConfig(
            name=train_run_name(names, folds, round_),
            storage_path=config["storage_path"],
            checkpoint_config=fold_checkpoint_config(cfg, len(units), round_),
            failure_config=ray.train.FailureConfig(max_failures=budget.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    trainer.fit()  # each unit's test score arrives as its last report (fold_worker)


def train_run_name(experiments: str | list[str], folds: list[int], round_: str = ROUND2) -> str:
    """The Ray Train run (and storage folder) of a fold job: ``round2-A1-fold1``, ``round2-A1-folds0-3``,
    ``round3-F1+F2+F3+F-score-folds0-1``."""
    names = "+".join([experiments] if isinstance(experiments, str) else experiments)
    if len(folds) == 1:
        return f"{round_}-{names}-fold{folds[0]}"
    return f"{round_}-{names}-folds{folds[0]}-{folds[-1]}"
