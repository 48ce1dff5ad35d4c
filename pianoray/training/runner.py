"""``pianoray train``: one experiment, one fold, in-process, no Ray; each epoch record goes to a callback
(the CLI draws the live table), and pretraining around it."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pianoray.config import ProtocolConfig
from pianoray.errors import InputError, UnknownNameError
from pianoray.feedback import Feedback, or_default
from pianoray.records import EpochRecord
from pianoray.training.checkpoint import TopKSink
from pianoray.training.data import ExperimentData
from pianoray.training.loop import Budget, fit


def _summary(r: EpochRecord) -> dict[str, Any]:
    m = r.metrics
    return {
        "epoch": r.epoch,
        "pairwise_accuracy": {
            "mean": m["val/pairwise_accuracy"],
            "ci": m["val/pairwise_accuracy_ci"],
            "per_dim": m["val/pairwise_accuracy_per_dim"],
        },
        "pairwise_accuracy_t0": m["val/pairwise_accuracy_t0"],
        "r2": {"mean": m["val/r2"], "ci": m["val/r2_ci"], "per_dim": m["val/r2_per_dim"]},
    }


def ensure_pretrained(cfg: ProtocolConfig, experiment: str, data: ExperimentData,
                      feedback: Feedback | None = None, folds: Iterable[int] | None = None) -> ProtocolConfig:
    """Pretrain ``experiment``'s encoder when it has a task and no cached result exists; point the
    experiment's ``init_encoder`` (per fold: ``init_encoder_folds``) at the weights. Returns the (updated)
    config. folds: the folds it will be scored on (default: all)."""
    return pretrain_for_folds(cfg, experiment, data, feedback, folds)[0]


def pretrain_for_folds(cfg: ProtocolConfig, experiment: str, data: ExperimentData, feedback: Feedback | None = None,
                       folds: Iterable[int] | None = None) -> tuple[ProtocolConfig, dict[str, Any] | None]:
    """Pretrain (or load) ``experiment``'s encoder for ``folds``: once, or once per fold without that fold's
    validation/test MIDI under ``pretrain.per_fold``. Says (through ``feedback``) and returns what it read
    relative to those folds (the record the run keeps in its ledger:
    :func:`pianoray.training.provenance.pretrain_record`), since a shared pretraining reads the evaluation
    folds' MIDI and a reader of the figures must know it.

    Returns (config pointing at the weights, record); (cfg, None) when the encoder does not pretrain.
    """
    from pianoray.training.pretrain import pretrain_experiment
    from pianoray.training.provenance import describe, eval_midi, held_out_midi, pretrain_record

    feedback = or_default(feedback)
    folds = sorted({int(k) for k in (folds if folds is not None else range(cfg.data.k))})
    evals = eval_midi(data, folds)
    held = held_out_midi(data)
    results: dict[int | None, Any] = {}
    for k in folds if cfg.pretrain.per_fold else [None]:
        result = pretrain_experiment(cfg, experiment, data, on_epoch=_epoch_logger(feedback, experiment, k),
                                     exclude=(evals[k] if k is not None else set()) | held)
        if result is None:
            return cfg, None
        how = "cached" if result.cached else f"trained {len(result.losses)} epochs"
        where = f" fold {k}" if k is not None else ""
        feedback.say(f"pretrained {experiment}{where}: {how}, loss {result.losses[0]:.3f} -> "
                     f"{result.losses[-1]:.3f} ({result.path})")
        results[k] = result
    cfg = cfg.model_copy(deep=True)
    if cfg.pretrain.per_fold:
        cfg.experiments[experiment].init_encoder_folds = {k: r.path for k, r in results.items()}
    else:
        cfg.experiments[experiment].init_encoder = results[None].path
    record = pretrain_record(cfg, experiment, results, evals)
    feedback.say(describe(record))
    return cfg, record


def _epoch_logger(feedback: Feedback, experiment: str, fold: int | None):
    where = f" fold {fold}" if fold is not None else ""

    def log(epoch: int, loss: float, parts: dict[str, float]) -> None:
        detail = ", ".join(f"{k} {v:.3f}" for k, v in parts.items() if k != "seconds")
        feedback.say(f"  pretrain {experiment}{where} epoch {epoch}: loss {loss:.4f} ({detail})")

    return log


def prepare_symbolic(cfg: ProtocolConfig, experiment: str, feedback: Feedback | None = None) -> None:
    """Build the corpus's symbolic feature cache when absent, with the routine ``pianoray run`` uses
    (:func:`pianoray.validation.prepare_data`), so training reads stored features. Without it every segment's
    features would be recomputed through a 512-entry in-process memo, smaller than a real training set."""
    from pianoray.validation import prepare_data

    one = cfg.model_copy(deep=True)  # only this experiment's views, not every enabled one's
    for name, exp in one.experiments.items():
        exp.enabled = name == experiment
    prepare_data(one, feedback)


def warn_if_uncached(cfg: ProtocolConfig, experiment: str, data: ExperimentData, feedback: Feedback) -> None:
    """The in-process memo is a fallback, never a silent one: say so when training will compute features."""
    from pianoray.data.symbolic.prepare import SYMBOLIC_VIEWS
    from pianoray.models import registry

    symbolic = SYMBOLIC_VIEWS & set(registry.get(cfg.encoder_name(experiment)).views)
    if symbolic and getattr(data.corpus, "symbolic_cache", None) is None:
        feedback.warn(f"no symbolic cache for {cfg.data.root}: {experiment}'s "
                      f"{', '.join(sorted(symbolic))} features are computed in this process (in-memory memo)")


def fit_one(cfg: ProtocolConfig, experiment: str, fold: int, data: ExperimentData) -> dict[str, Any]:
    """``pianoray train`` for a fitted reference: one fit on the fold's training part, validation and test
    scored (no epochs, no checkpoints)."""
    from pianoray.training.reference import fit_and_score

    t0 = time.perf_counter()
    val, test = fit_and_score(cfg, experiment, data, fold)
    summary = {"epoch": 1,
               "pairwise_accuracy": {"mean": val["val/pairwise_accuracy"], "ci": val["val/pairwise_accuracy_ci"],
                                     "per_dim": val["val/pairwise_accuracy_per_dim"]},
               "pairwise_accuracy_t0": val["val/pairwise_accuracy_t0"],
               "r2": {"mean": val["val/r2"], "ci": val["val/r2_ci"], "per_dim": val["val/r2_per_dim"]}}
    return {"experiment": experiment, "fold": fold, "labels": cfg.data.labels, "dimensions": data.label_names,
            "kind": "fitted", "epochs_run": 1, "early_stopped": False, "best_epoch": 1, "best": summary,
            "final": summary, "test": test, "seconds": time.perf_counter() - t0, "checkpoints": None}


def train_one(
    cfg: ProtocolConfig,
    experiment: str,
    fold: int,
    *,
    epochs: int | None = None,
    patience: int | None = None,
    out: Path | None = None,
    feedback: Feedback | None = None,
    on_epoch: Callable[[EpochRecord], None] | None = None,
) -> dict[str, Any]:
    """Train (or fit, for a fitted reference) ``experiment`` on ``fold``; returns what ``pianoray train
    --json`` prints. ``on_epoch`` receives every epoch record as it is made; ``out`` keeps checkpoints and
    is resumed from when it holds some."""
    feedback = or_default(feedback)
    if experiment not in cfg.experiments:
        known = ", ".join(cfg.experiments) or "(none)"
        raise UnknownNameError(f"--experiment: {experiment!r} is not in the config's experiments ({known})")
    if not 0 <= fold < cfg.data.k:
        raise InputError(f"--fold: must be in [0, {cfg.data.k}), got {fold}")
    prepare_symbolic(cfg, experiment, feedback)
    data = ExperimentData.from_config(cfg)
    from pianoray.models import registry

    if registry.get(cfg.encoder_name(experiment)).kind == "fitted":
        return fit_one(cfg, experiment, fold, data)
    warn_if_uncached(cfg, experiment, data, feedback)
    cfg = ensure_pretrained(cfg, experiment, data, feedback, folds=[fold])
    budget = Budget(epochs or cfg.round2.epochs, patience if patience is not None else cfg.round2.patience)
    sink = TopKSink(out, k=cfg.round2.num_to_keep) if out is not None else None
    resume = sink.latest() if sink is not None else None

    best: EpochRecord | None = None
    last: EpochRecord | None = None
    t0 = time.perf_counter()
    for r in fit(cfg, experiment, data, fold, budget, tiers=[t for t in cfg.round2.tiers if t in data.corpus.tiers],
                 sink=sink, resume_from=resume):
        if on_epoch is not None:
            on_epoch(r)
        last = r
        if r.best_epoch == r.epoch:
            best = r
    if last is None:
        raise InputError(f"nothing to train: {out} already holds a finished run of {budget.epochs} epochs")
    return {
        "experiment": experiment,
        "fold": fold,
        "labels": cfg.data.labels,
        "dimensions": data.label_names,
        "epochs_run": last.epoch,
        "early_stopped": last.early_stopped,
        "best_epoch": last.best_epoch,
        "best": _summary(best) if best is not None else None,
        "final": _summary(last),
        "seconds": time.perf_counter() - t0,
        "checkpoints": str(out) if out is not None else None,
    }
