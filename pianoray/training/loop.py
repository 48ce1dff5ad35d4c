"""The one training loop. It knows nothing of Ray: the protocol drives it through callbacks and a sink.

``fit`` yields one :class:`EpochResult` per epoch. Per the seed: AdamW, cosine schedule with 5% warmup,
gradient clipping 1.0, bf16 autocast on CUDA (fp32 on CPU), seed 42 and deterministic mode, early stopping
on validation pairwise accuracy (patience from config), checkpoints through the given sink, and resume
from a checkpoint that gives the same result as an uninterrupted run.

Epochs are counted here (1-based), never taken from Ray's ``training_iteration``, so a resumed trial
keeps its place in the budget.
"""

from __future__ import annotations

import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from pianoray.config import ProtocolConfig, model_config
from pianoray.data.tiers import Tier
from pianoray.models import registry
from pianoray.models.contract import PerformanceModel, Stage
from pianoray.objectives.losses import multitask_loss
from pianoray.objectives.metrics import PairCounts
from pianoray.training.checkpoint import CheckpointSink, read_state, rng_state, set_rng_state, write_state
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import predict, validation_scores

SELECTION_METRIC = "val/pairwise_accuracy"


@dataclass(frozen=True)
class Budget:
    """epochs: the budget; patience: early-stopping patience in epochs (None = never stop early)."""

    epochs: int
    patience: int | None = None


@dataclass
class EpochResult:
    epoch: int
    stage: str
    metrics: dict[str, Any]
    best_epoch: int | None
    best_metric: float | None
    stop: bool  # the last epoch: early stopping fired or the budget is spent
    early_stopped: bool
    # Epochs of model-selecting (supervised) stages so far: what rungs count, so that an experiment with a
    # self-supervised stage (A2) is judged after as many supervised epochs as the others.
    rung_epoch: int
    seconds: float
    samples: int
    checkpoint: Path | None = None
    # The validation split's pair counts (per passage and dimension): what a rung decision's bootstrap needs.
    # Not in ``flat()``: they go into the checkpoint (pair_counts.json) and, in Round 1, the run's ledger.
    pair_counts: PairCounts | None = None

    def flat(self) -> dict[str, Any]:
        """The metrics plus the loop's own fields, as one flat dict (what gets reported)."""
        return {
            **self.metrics,
            "epoch": self.epoch,
            "rung_epoch": self.rung_epoch,
            "stage": self.stage,
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "stop": self.stop,
            "early_stopped": self.early_stopped,
            "epoch_seconds": self.seconds,
            "samples": self.samples,
        }


def seed_everything(seed: int) -> None:
    """Seed 42 by default, and deterministic kernels (CUBLAS_WORKSPACE_CONFIG is needed for cuBLAS)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False


def pick_device(device: str | torch.device | None = None) -> torch.device:
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_model(cfg: ProtocolConfig, experiment: str, data: ExperimentData, fold: int | None = None) -> PerformanceModel:
    """The experiment's encoder (from its pretrained weights when the driver set them: ``fold``'s own under
    per-fold pretraining, which never saw that fold's validation/test MIDI) + heads."""
    spec = registry.get(cfg.encoder_name(experiment))
    encoder = spec.build(model_config(cfg, experiment), data.data_spec())
    init = cfg.init_encoder_for(experiment, fold)
    if init is not None:
        from pianoray.training.pretrain import ENCODER_FILE

        path = Path(init) / ENCODER_FILE if Path(init).is_dir() else Path(init)
        encoder.load_state_dict(torch.load(path, map_location="cpu"))
    return PerformanceModel(encoder, n_dims=len(data.label_names))


def cosine_with_warmup(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup_fraction`` of the steps, then cosine to zero."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def plan_stages(model: PerformanceModel, epochs: int) -> list[Stage]:
    stages = model.encoder.stages(epochs)
    if not stages:
        return [Stage("supervised", epochs)]
    if sum(s.epochs for s in stages) != epochs:
        raise ValueError(f"stage plan {stages} does not add up to the budget of {epochs} epochs")
    return stages


def _selecting_epochs(stages: list[Stage], epoch: int) -> int:
    """How many of epochs 1..epoch fall in stages that select models (``Stage.select``)."""
    done, start = 0, 0
    for st in stages:
        if st.select:
            done += max(0, min(epoch, start + st.epochs) - start)
        start += st.epochs
    return done


def _optimizer(model: PerformanceModel, cfg_lr: float, weight_decay: float) -> torch.optim.Optimizer:
    groups = model.encoder.param_groups(cfg_lr)
    head_params = [p for m in (model.ranking, model.regression) for p in m.parameters()]
    groups.append({"params": head_params, "lr": cfg_lr})
    return torch.optim.AdamW(groups, lr=cfg_lr, weight_decay=weight_decay)


def fit(
    cfg: ProtocolConfig,
    experiment: str,
    data: ExperimentData,
    fold: int,
    budget: Budget,
    *,
    tiers: Iterable[Tier] | None = None,
    callbacks: Iterable[Callable[[EpochResult], None]] = (),
    sink: CheckpointSink | None = None,
    resume_from: str | Path | None = None,
    device: str | torch.device | None = None,
) -> Iterator[EpochResult]:
    """Train ``experiment`` on fold ``fold`` for ``budget``; yield each epoch's result.

    Model selection uses the fold's inner validation split only; the test part is never touched here.
    ``tiers`` are the round's training tiers (a stage may narrow them, e.g. A2's self-supervised stage).
    """
    optim_cfg = cfg.optim_for(experiment)
    loss_cfg = cfg.loss_for(experiment)
    round_tiers = tuple(tiers) if tiers is not None else (Tier.T1,)
    dev = pick_device(device)
    seed_everything(cfg.seed)
    model = build_model(cfg, experiment, data, fold).to(dev)
    stages = plan_stages(model, budget.epochs)
    # Whole validation segments: one sample per window, merged per segment by ``predict``.
    val_batches = data.loader(fold, "val", (Tier.T1,), model.encoder.views, optim_cfg.batch_size, epoch=0)

    start_epoch, best_metric, best_epoch, since_best = 0, None, None, 0
    optimizer = scheduler = None
    opt_stage: int | None = None
    restored: dict[str, Any] | None = None
    if resume_from is not None:
        restored = read_state(resume_from)
        model.load_state_dict(restored["model"])
        start_epoch = restored["epoch"]
        best_metric, best_epoch, since_best = restored["best_metric"], restored["best_epoch"], restored["since_best"]

    bounds = np.cumsum([s.epochs for s in stages])  # stage i covers epochs (bounds[i-1], bounds[i]]
    callbacks = list(callbacks)
    for epoch in range(start_epoch + 1, budget.epochs + 1):
        t0 = time.perf_counter()
        si = int(np.searchsorted(bounds, epoch))  # index of the stage containing this (1-based) epoch
        stage = stages[si]
        stage_tiers = stage.tiers if stage.tiers is not None else round_tiers
        train_batches = data.loader(
            fold, "train", stage_tiers, model.encoder.views, optim_cfg.batch_size, epoch=epoch, seed=cfg.seed
        )
        if opt_stage != si:
            optimizer = _optimizer(model, optim_cfg.lr, optim_cfg.weight_decay)
            steps = max(1, stage.epochs * len(train_batches))
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, cosine_with_warmup(steps, optim_cfg.warmup_fraction)
            )
            opt_stage = si
            if restored is not None and restored["stage_index"] == si:
                optimizer.load_state_dict(restored["optimizer"])
                scheduler.load_state_dict(restored["scheduler"])
        if restored is not None:
            set_rng_state(restored["rng"])  # after model/optimizer building, which may draw from the RNG
            restored = None
        model.encoder.on_epoch_start(epoch - 1, budget.epochs)

        model.train()
        sums: dict[str, float] = {}
        n_batches = samples = 0
        for batch in train_batches:
            b = batch.to(dev)
            with torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else _nullctx():
                out = model(b)
                total, parts = multitask_loss(out.regression, out.scores, out.z, b, loss_cfg, terms=stage.terms)
            optimizer.zero_grad(set_to_none=True)
            if total.requires_grad:
                total.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), optim_cfg.grad_clip)
                optimizer.step()
            scheduler.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
            n_batches += 1
            samples += b.size
        metrics: dict[str, Any] = {f"train/{k}": v / max(1, n_batches) for k, v in sums.items()}
        metrics["lr"] = float(scheduler.get_last_lr()[0])
        scores, counts = validation_scores(predict(model, val_batches, dev), threshold=loss_cfg.rank_threshold,
                                           seed=cfg.seed)
        metrics.update(scores)

        score = metrics[SELECTION_METRIC]
        if stage.select and score == score and (best_metric is None or score > best_metric):
            best_metric, best_epoch, since_best = float(score), epoch, 0
        elif stage.select:
            since_best += 1
        last_selecting = stage.select and budget.patience is not None and since_best >= budget.patience
        stop = last_selecting or epoch == budget.epochs
        metrics["selectable"] = stage.select

        result = EpochResult(
            epoch, stage.name, metrics, best_epoch, best_metric, stop, last_selecting,
            _selecting_epochs(stages, epoch), time.perf_counter() - t0, samples, pair_counts=counts,
        )
        if sink is not None:
            directory = sink.staging_dir()
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": rng_state(),
                "epoch": epoch,
                "stage_index": si,
                "stage": stage.name,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "since_best": since_best,
                "experiment": experiment,
                "encoder": cfg.encoder_name(experiment),
                "label_names": list(data.label_names),
            }
            write_state(directory, state, result.flat(), pair_counts=counts.to_json())
            result.checkpoint = sink.commit(directory, result.flat())
        for cb in callbacks:
            cb(result)
        yield result
        if stop:
            return


class _nullctx:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None
