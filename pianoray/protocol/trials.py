"""The Ray side of one trial: the shared ``fit`` loop wrapped for Tune (Round 1) and Train (Round 2).

Round 1: :func:`screen_trainable` is a Tune function trainable; it reports every epoch with a checkpoint
through :class:`ReportSink`, and resumes from ``tune.get_checkpoint()`` after a PAUSE or a restore.
Round 2: :func:`fold_trainable` is a driver-side Tune function trainable (0.1 CPU) that runs one fold as a
Ray Train ``TorchTrainer`` with ``TuneReportCallback``; Ray's ``CheckpointConfig`` keeps the top-k. The fold's
test part is scored once, from the best checkpoint, at the end.

Epochs are counted by ``fit`` (stored in the checkpoint), never by ``training_iteration``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from pianoray.config import ProtocolConfig
from pianoray.training.data import ExperimentData
from pianoray.training.loop import SELECTION_METRIC, Budget, fit

_DATA: dict[str, ExperimentData] = {}


def experiment_data(cfg: ProtocolConfig) -> ExperimentData:
    """Per-process cache: with ``reuse_actors`` a worker opens the corpus once for all its trials."""
    key = cfg.data.model_dump_json() + str(cfg.seed)
    if key not in _DATA:
        _DATA[key] = ExperimentData.from_config(cfg)
    return _DATA[key]


def reportable(metrics: dict[str, Any]) -> dict[str, Any]:
    """Ray results keep scalars and short lists; drop anything else (e.g. None) and name it clearly."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, (int, float, str, bool)) or (isinstance(v, list) and len(v) <= 64):
            out[k] = v
    return out


class ReportSink:
    """A CheckpointSink that hands each epoch's directory to Ray's report call (Tune or Train).

    Ray copies the directory into the run's storage and, for Train, its ``CheckpointConfig`` keeps the
    top-k: one checkpoint policy, Ray's.
    """

    def __init__(self, report: Callable[..., None], checkpoint_cls: Any, extra: dict[str, Any]) -> None:
        self._report = report
        self._checkpoint_cls = checkpoint_cls
        self._extra = extra
        self._staging = Path(tempfile.mkdtemp(prefix="pianoray-ckpt-"))

    def staging_dir(self) -> Path:
        d = self._staging / "next"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        return d

    def commit(self, directory: Path, metrics: dict[str, Any]) -> None:
        self._report(reportable({**metrics, **self._extra}), checkpoint=self._checkpoint_cls.from_directory(str(directory)))
        return None


def _resume_dir(checkpoint: Any) -> Path | None:
    if checkpoint is None:
        return None
    return Path(checkpoint.to_directory(tempfile.mkdtemp(prefix="pianoray-resume-")))


def screen_trainable(config: dict[str, Any]) -> None:
    """Round 1: one experiment on fold ``round1.fold`` with the Round-1 budget, under the scheduler."""
    from ray import tune

    cfg = ProtocolConfig.model_validate(config["protocol"])
    name = config["experiment"]
    data = experiment_data(cfg)
    extra = {"experiment": name, "track": config["track"], "role": config["role"], "round": "round1"}
    sink = ReportSink(tune.report, tune.Checkpoint, extra)
    budget = Budget(cfg.round1.epochs, cfg.round1.patience)
    for _ in fit(cfg, name, data, cfg.round1.fold, budget, tiers=cfg.round1.tiers, sink=sink,
                 resume_from=_resume_dir(tune.get_checkpoint())):
        pass


def fold_worker(config: dict[str, Any]) -> None:
    """Inside a Ray Train worker: the full-budget fit of one fold, with early stopping."""
    import ray.train

    cfg = ProtocolConfig.model_validate(config["protocol"])
    name, fold = config["experiment"], config["fold"]
    data = experiment_data(cfg)
    extra = {"experiment": name, "fold": fold, "round": "round2"}
    sink = ReportSink(ray.train.report, ray.train.Checkpoint, extra)
    budget = Budget(cfg.round2.epochs, cfg.round2.patience)
    for _ in fit(cfg, name, data, fold, budget, tiers=cfg.round2.tiers, sink=sink,
                 resume_from=_resume_dir(ray.train.get_checkpoint())):
        pass


def fold_trainable(config: dict[str, Any]) -> None:
    """Round 2, one (experiment, fold): a TorchTrainer run under a fixed name, so that rerunning it resumes.

    Ray Train V2 resumes a job only when it is rerun with the same ``RunConfig(name, storage_path)``.
    """
    import ray.train
    from ray import tune
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    from pianoray.training.scoring import score_checkpoint

    cfg = ProtocolConfig.model_validate(config["protocol"])
    name, fold = config["experiment"], config["fold"]
    res = cfg.resources_for(name)
    trainer = TorchTrainer(
        fold_worker,
        train_loop_config={"protocol": config["protocol"], "experiment": name, "fold": fold},
        scaling_config=ray.train.ScalingConfig(
            num_workers=cfg.round2.workers_per_fold,
            use_gpu=res.gpu > 0,
            resources_per_worker={"CPU": res.cpu, **({"GPU": res.gpu} if res.gpu > 0 else {})},
        ),
        run_config=ray.train.RunConfig(
            name=f"round2-{name}-fold{fold}",
            storage_path=config["storage_path"],
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.round2.num_to_keep,
                checkpoint_score_attribute=SELECTION_METRIC,
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.round2.max_failures),
            callbacks=[TuneReportCallback()],
        ),
    )
    result = trainer.fit()
    best = result.get_best_checkpoint(SELECTION_METRIC, "max") if result.best_checkpoints else result.checkpoint
    if best is None:
        raise RuntimeError(f"round2 {name} fold {fold}: the Train run produced no checkpoint")
    with best.as_directory() as d:
        test = score_checkpoint(cfg, name, experiment_data(cfg), fold, Path(d))
    tune.report(reportable({**{f"test/{k}": v for k, v in test.items()}, "experiment": name, "fold": fold,
                            "round": "round2", "final": True}))
