"""The one training loop. It knows nothing of Ray: the protocol drives it through callbacks and a sink.

``fit`` yields one :class:`EpochRecord` per epoch. Per the seed: AdamW, cosine schedule with 5% warmup,
gradient clipping 1.0 (:mod:`pianoray.training.step`, shared with pretraining), bf16 autocast on CUDA (fp32
on CPU), seed 42 and deterministic mode, early stopping on validation pairwise accuracy (patience from
config), checkpoints through the given sink, and resume from a checkpoint that gives the same result as an
uninterrupted run.

Data parallel: inside a ``torch.distributed`` process group of W > 1 ranks (Ray Train starts one; ``fit``
reads only its rank and size, never ray), each rank trains on its shard of every global batch
(``ExperimentData.loader``: ``optim.batch_size`` stays the global batch), through the model wrapper the
caller gives (DDP). Every rank validates on the whole validation split and adopts rank 0's scores, so early
stopping and the epoch records agree on every rank; only the rank given a sink writes checkpoints.

``fit`` is a short driver over three small state objects: :class:`StageOptimizer` (a fresh optimiser and
schedule per stage, restored mid-stage), :class:`EarlyStopping` (best epoch and patience) and the checkpoint
state (:func:`checkpoint_state`). Epochs are counted here (1-based), never taken from Ray's
``training_iteration``, so a resumed trial keeps its place in the budget.
"""

from __future__ import annotations

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
from pianoray.errors import InputError
from pianoray.models import registry
from pianoray.models.contract import DifficultyHead, PerformanceModel, Stage
from pianoray.models.registry import DataSpec
from pianoray.objectives.losses import mse_loss, multitask_loss
from pianoray.records import SELECTION_METRIC, EpochRecord
from pianoray.training.checkpoint import CheckpointSink, read_state, rng_state, set_rng_state, write_state
from pianoray.training.data import ExperimentData
from pianoray.training.distributed import all_ranks_sum, dist_place, from_rank0
from pianoray.training.evaluate import predict, validation_scores
from pianoray.training.step import autocast, cosine_with_warmup, make_optimizer, train_step

__all__ = ["Budget", "EarlyStopping", "EpochRecord", "SELECTION_METRIC", "StageOptimizer", "UNFROZEN", "build_model",
           "cosine_with_warmup", "difficulty_weight", "fit", "param_groups", "pick_device", "plan_stages",
           "seed_everything", "supervised_step"]

ModelWrapper = Callable[[torch.nn.Module], torch.nn.Module]


@dataclass(frozen=True)
class Budget:
    """epochs: the budget; patience: early-stopping patience in epochs (None = never stop early);
    unfreeze_lr: for an encoder that can unfreeze what it holds frozen (a fusion's winners), the rate they
    train at once patience first runs out; training then goes on, patience counted afresh (None: stop there)."""

    epochs: int
    patience: int | None = None
    unfreeze_lr: float | None = None


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
    model = model_from(cfg.encoder_name(experiment), model_config(cfg, experiment), data.data_spec())
    init = cfg.init_encoder_for(experiment, fold)
    if init is not None:
        from pianoray.training.pretrain import ENCODER_FILE

        path = Path(init) / ENCODER_FILE if Path(init).is_dir() else Path(init)
        model.encoder.load_state_dict(torch.load(path, map_location="cpu"))
    if difficulty_weight(cfg, experiment) > 0:  # after every other weight: their initialisation is unchanged
        model.difficulty = DifficultyHead()
    return model


def difficulty_weight(cfg: ProtocolConfig, experiment: str) -> float:
    """The weight of ``experiment``'s auxiliary difficulty head in its loss, 0 for none: Round 3's fusions
    have one (``round3.difficulty_head``), Round-1/2 experiments none."""
    return cfg.round3.difficulty_head if registry.get(cfg.encoder_name(experiment)).kind == "fusion" else 0.0


def model_from(encoder: str, config: Any, spec: DataSpec) -> PerformanceModel:
    """The registered ``encoder`` built from its model ``config`` (its config object, or that object's dict)
    for ``spec``, with the shared heads: the one place a PerformanceModel is assembled (training, and an
    exported model loading its weights)."""
    reg = registry.get(encoder)
    built = reg.build(reg.config_cls.model_validate(config), spec)
    return PerformanceModel(built, n_dims=spec.n_dims)


UNFROZEN = "unfrozen"  # the stage a fusion trains in after its plateau, its winners unfrozen (Budget.unfreeze_lr)


def _can_unfreeze(model: PerformanceModel, budget: Budget) -> bool:
    return budget.unfreeze_lr is not None and hasattr(model.encoder, "unfreeze")


def _load_own(model: PerformanceModel, state: dict[str, Any], experiment: str, where: str | Path) -> None:
    """Load a checkpoint's weights to resume ``experiment``, refusing one written for another experiment (its
    state names it) or one whose weights do not fit this model (a changed config): one error naming the
    checkpoint, never another model's weights trained on."""
    other = state.get("experiment")
    if other is not None and other != experiment:
        raise InputError(f"{where}: a checkpoint of experiment {other!r}, not {experiment!r}")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise InputError(f"{where}: its weights do not fit {experiment}'s model as configured now ({first})") from None


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


def param_groups(model: PerformanceModel, lr: float) -> list[dict[str, Any]]:
    """The encoder's own groups (e.g. LoRA vs the rest) plus one for the heads (the difficulty head too, where
    the model has one), all at ``lr`` unless the encoder says otherwise."""
    groups = model.encoder.param_groups(lr)
    heads = [h for h in (model.ranking, model.regression, model.difficulty) if h is not None]
    groups.append({"params": [p for m in heads for p in m.parameters()], "lr": lr})
    return groups


def supervised_step(model: torch.nn.Module, batch: Any, loss_cfg: Any, terms: Any, optimizer: torch.optim.Optimizer,
                    scheduler: Any, grad_clip: float, device: torch.device, *, distributed: bool = False,
                    difficulty: float = 0.0) -> dict[str, float]:
    """One fine-tuning step on a batch already on ``device``: forward (bf16 autocast on CUDA), the multitask
    loss restricted to the stage's ``terms``, then :func:`~pianoray.training.step.train_step`. Returns the
    loss parts (floats). ``model`` may be a wrapper (e.g. DDP) around a :class:`PerformanceModel`.

    ``difficulty``: the weight of the model's auxiliary difficulty head (0: it has none). Where a stage runs every
    term, ``difficulty * MSE(head, scaled grade)`` over the batch's graded samples (``batch.has_difficulty``;
    none where the batch carries no grades) joins the total, reported as ``difficulty``.

    ``distributed``: a rank whose batch gives no gradient (none of the stage's terms) still backpropagates a
    zero through the model, because DDP's gradient all-reduce needs every rank's backward; that rank then
    contributes zeros to the average (the single-worker step would have been skipped)."""
    with autocast(device):
        out = model(batch)
        total, parts = multitask_loss(out.regression, out.scores, out.z, batch, loss_cfg, terms=terms)
        if difficulty > 0 and terms is None and out.difficulty is not None and batch.difficulty is not None:
            grade = mse_loss(out.difficulty[:, None], batch.difficulty[:, None], batch.has_difficulty)
            total = total + difficulty * grade
            parts = {**parts, "difficulty": grade.detach().float(), "total": total.detach().float()}
        if distributed and not total.requires_grad:
            total = out.regression.float().sum() * 0.0
    train_step(total, optimizer, scheduler, model.parameters(), grad_clip)
    return {k: float(v) for k, v in parts.items()}


class StageOptimizer:
    """The optimiser and schedule of the stage being trained: each stage starts a fresh AdamW and a cosine
    schedule over its own steps; a resumed run gets the saved state back in the stage it stopped in."""

    def __init__(self, model: PerformanceModel, optim_cfg: Any, restored: dict[str, Any] | None = None) -> None:
        self.model, self.cfg = model, optim_cfg
        self.index: int | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        self._restored = restored

    def enter(self, index: int, stage: Stage, batches_per_epoch: int) -> None:
        """Called every epoch: builds the optimiser when ``index`` is a new stage."""
        if self.index == index:
            return
        steps = max(1, stage.epochs * batches_per_epoch)
        self.optimizer, self.scheduler = make_optimizer(
            param_groups(self.model, self.cfg.lr), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay,
            total_steps=steps, warmup_fraction=self.cfg.warmup_fraction)
        self.index = index
        if self._restored is not None and self._restored["stage_index"] == index:
            self.optimizer.load_state_dict(self._restored["optimizer"])
            self.scheduler.load_state_dict(self._restored["scheduler"])
        self._restored = None


@dataclass
class EarlyStopping:
    """Best epoch on the selection metric over model-selecting epochs, and the patience count since it."""

    patience: int | None
    best_metric: float | None = None
    best_epoch: int | None = None
    since_best: int = 0

    def update(self, epoch: int, score: float, selecting: bool) -> bool:
        """Record an epoch's score (NaN never improves); True when patience has run out on a selecting epoch."""
        if not selecting:
            return False
        if score == score and (self.best_metric is None or score > self.best_metric):
            self.best_metric, self.best_epoch, self.since_best = float(score), epoch, 0
        else:
            self.since_best += 1
        return self.patience is not None and self.since_best >= self.patience


def checkpoint_state(model: PerformanceModel, opt: StageOptimizer, early: EarlyStopping, epoch: int,
                     stage: Stage, cfg: ProtocolConfig, experiment: str, data: ExperimentData) -> dict[str, Any]:
    """Everything a resumed run needs to continue exactly (weights, optimiser, schedule, RNG, patience)."""
    return {
        "model": model.state_dict(),
        "optimizer": opt.optimizer.state_dict(),
        "scheduler": opt.scheduler.state_dict(),
        "rng": rng_state(),
        "epoch": epoch,
        "stage_index": opt.index,
        "stage": stage.name,
        "best_metric": early.best_metric,
        "best_epoch": early.best_epoch,
        "since_best": early.since_best,
        "experiment": experiment,
        "encoder": cfg.encoder_name(experiment),
        "label_names": list(data.label_names),
    }


def fit(
    cfg: ProtocolConfig,
    experiment: str,
    data: ExperimentData,
    fold: int,
    budget: Budget,
    *,
    tiers: Iterable[Tier] | None = None,
    callbacks: Iterable[Callable[[EpochRecord], None]] = (),
    sink: CheckpointSink | None = None,
    resume_from: str | Path | None = None,
    device: str | torch.device | None = None,
    wrap_model: ModelWrapper | None = None,
) -> Iterator[EpochRecord]:
    """Train ``experiment`` on fold ``fold`` for ``budget``; yield each epoch's result.

    Model selection uses the fold's inner validation split only; the test part is never touched here.
    ``tiers`` are the round's training tiers (a stage may narrow them, e.g. A2's self-supervised stage).
    ``wrap_model``: applied to the model for the training forward/backward only (e.g. DDP, supplied by
    ``protocol/`` so that this module never imports ray); validation and checkpoints use the bare model. It is
    applied again each epoch, after the encoder's ``on_epoch_start``, because DDP registers only the
    parameters that require gradients when it wraps, and gradual unfreezing changes that set.
    """
    optim_cfg = cfg.optim_for(experiment)
    loss_cfg = cfg.loss_for(experiment)
    round_tiers = tuple(tiers) if tiers is not None else (Tier.T1,)
    dev = pick_device(device)
    seed_everything(cfg.seed)
    rank, world = dist_place()
    model = build_model(cfg, experiment, data, fold).to(dev)
    grade_weight = difficulty_weight(cfg, experiment)
    stages = plan_stages(model, budget.epochs)
    # Whole validation segments: one sample per window, merged per segment by ``predict``.
    val_batches = data.loader(fold, "val", (Tier.T1,), model.encoder.views, optim_cfg.batch_size, epoch=0)

    start_epoch, early = 0, EarlyStopping(budget.patience)
    restored = read_state(resume_from) if resume_from is not None else None
    if restored is not None:
        _load_own(model, restored, experiment, resume_from)
        start_epoch = restored["epoch"]
        early = EarlyStopping(budget.patience, restored["best_metric"], restored["best_epoch"], restored["since_best"])
    opt = StageOptimizer(model, optim_cfg, restored)

    bounds = np.cumsum([s.epochs for s in stages])  # stage i covers epochs (bounds[i-1], bounds[i]]
    unfrozen_at = restored.get("unfrozen_at") if restored is not None else None
    if unfrozen_at is not None:
        model.encoder.unfreeze(budget.unfreeze_lr)
    callbacks = list(callbacks)
    for epoch in range(start_epoch + 1, budget.epochs + 1):
        t0 = time.perf_counter()
        if unfrozen_at is None:
            si = int(np.searchsorted(bounds, epoch))  # index of the stage containing this (1-based) epoch
            stage = stages[si]
        else:  # past the plateau: one more stage, the winners training too, to the end of the budget
            si, stage = len(stages), Stage(UNFROZEN, budget.epochs - unfrozen_at)
        stage_tiers = stage.tiers if stage.tiers is not None else round_tiers
        train_batches = data.loader(fold, "train", stage_tiers, model.encoder.views, optim_cfg.batch_size,
                                    epoch=epoch, seed=cfg.seed, rank=rank, world_size=world)
        opt.enter(si, stage, len(train_batches))
        if restored is not None:
            set_rng_state(restored["rng"])  # after model/optimizer building, which may draw from the RNG
            restored = None
        if world > 1:  # each rank its own dropout stream, a function of the epoch: resumes stay exact
            torch.manual_seed(cfg.seed * 1_000_003 + epoch * 1_009 + rank)
        model.encoder.on_epoch_start(epoch - 1, budget.epochs)
        trained = wrap_model(model) if wrap_model is not None else model

        model.train()
        sums: dict[str, float] = {}
        n_batches = samples = 0
        for batch in train_batches:
            b = batch.to(dev)
            parts = supervised_step(trained, b, loss_cfg, stage.terms, opt.optimizer, opt.scheduler,
                                    optim_cfg.grad_clip, dev, distributed=world > 1, difficulty=grade_weight)
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            n_batches += 1
            samples += b.size
        if world > 1:
            sums, n_batches, samples = all_ranks_sum(sums, n_batches, samples, dev)
        metrics: dict[str, Any] = {f"train/{k}": v / max(1, n_batches) for k, v in sums.items()}
        metrics["lr"] = float(opt.scheduler.get_last_lr()[0])
        scores, counts = validation_scores(predict(model, val_batches, dev), threshold=loss_cfg.rank_threshold,
                                           seed=cfg.seed)
        if world > 1:
            scores, counts = from_rank0((scores, counts))
        metrics.update(scores)

        patience_out = early.update(epoch, metrics[SELECTION_METRIC], stage.select)
        metrics["selectable"] = stage.select
        if patience_out and unfrozen_at is None and _can_unfreeze(model, budget) and epoch < budget.epochs:
            unfrozen_at, early.since_best, patience_out = epoch, 0, False
            model.encoder.unfreeze(budget.unfreeze_lr)
        result = EpochRecord(
            epoch, stage.name, metrics, early.best_epoch, early.best_metric, patience_out or epoch == budget.epochs,
            patience_out, _selecting_epochs(stages, epoch), time.perf_counter() - t0, samples, pair_counts=counts,
        )
        if sink is not None:
            directory = sink.staging_dir()
            # the fold in the checkpoint's metrics.json: a job running several folds resumes the right one; the
            # experiment too: a resumed run records an epoch whose checkpoint outlived its report (run.py)
            write_state(directory, {**checkpoint_state(model, opt, early, epoch, stage, cfg, experiment, data),
                                    "unfrozen_at": unfrozen_at},
                        {**result.flat(), "fold": fold, "experiment": experiment}, pair_counts=counts.to_json())
            result.checkpoint = sink.commit(directory, result.flat())
        for cb in callbacks:
            cb(result)
        yield result
        if result.stop:
            return
