"""`pianoray plan`: what a config will run and what it will cost, before anything starts (no Ray).

Round 1 is one Tune trial per enabled experiment on ``round1.fold`` with the Round-1 budget; Round 2 is
up to (survivors x ``round2.folds``) TorchTrainer jobs with the full budget. Cost per epoch of one
experiment, in resource-hours (the unit of :mod:`pianoray.protocol.accounting`: GPU-hours when the
experiment holds GPUs, else CPU-hours)::

    epoch_hours = (train_samples / sps + eval_samples / (sps * eval_speedup)) / 3600 * units

where ``sps`` is the measured or assumed training throughput of one worker (``benchmarks/throughput.json``,
or, with ``pianoray plan --calibrate``, measured on this machine's device by
:func:`calibrate_throughput`)
and ``units`` the GPUs (or CPUs) one worker holds. A Round-2 job of W workers (``round2.workers_per_fold``)
holds W x the units and finishes in single-worker time / (W x e), where e in (0, 1] is the data-parallel
efficiency of W workers on that hardware (the table's ``data_parallel``: measured by
``benchmarks/ddp_bench.py`` on CPUs, or assumed, each entry saying which), so its resource-hours are the
single-worker hours / e. One worker has e = 1. For a W the table does not list, the entry of the largest
listed count below W is used; with none, e = 1 ("assumed linear"), said in the Round-2 notes.

Two totals: the upper bound (nobody is eliminated, every job runs its whole budget) and the expected
(a fraction ``eliminated`` of the trials stops at the first rung and does not reach Round 2).
The seed's own estimate (Round 1: 2-4 GPU-hours, Round 2: 8-20) is shown beside ours for comparison.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pianoray.config import ProtocolConfig
from pianoray.data.tiers import Tier
from pianoray.errors import InputError, MissingInputError, UnknownNameError
from pianoray.feedback import Feedback, or_default
from pianoray.records import ROUND1, ROUND2, ROUND3

DEFAULT_THROUGHPUT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.json"
# The seed's GPU-hour estimates (model-improvement-v2.md), for comparison only.
SEED_GPU_HOURS = {ROUND1: (2.0, 4.0), ROUND2: (8.0, 20.0)}
# Segments per tier when the corpus is absent: the PercePiano-sized labelled set, no extra tiers.
ESTIMATED_TIER_SIZES = {"T1": 1200}
# Wall seconds of one fold of a fitted (non-neural) reference, features cached: symbolic-gbm on PercePiano
# (19 dims, ~700 training segments, 1 thread) took ~17 s on 2 busy cores. An estimate, billed in CPU-hours.
FITTED_SECONDS_PER_FOLD = 30.0


class ThroughputEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    samples_per_s: float = Field(gt=0)
    source: str = ""


class DataParallelEntry(BaseModel):
    """Scaling of one worker count W: samples/s of W workers / (W x samples/s of one worker)."""

    model_config = ConfigDict(extra="forbid")
    efficiency: float = Field(gt=0, le=1)
    source: str = Field(min_length=1)  # "measured: ..." or "assumed: ...": the plan quotes it


# Listed worker counts start at 2: one worker has efficiency 1 by definition.
WorkerCount = Annotated[int, Field(ge=2)]


@dataclass(frozen=True)
class Scaling:
    """The efficiency a plan applies to a job of ``workers`` workers: it finishes in single-worker time /
    (workers x efficiency), so its resource-hours are the single-worker hours / efficiency."""

    workers: int
    efficiency: float
    source: str


class ThroughputTable(BaseModel):
    """``benchmarks/throughput.json``: device kind ("cpu"/"gpu") -> experiment (or "default") -> entry, and
    ``data_parallel``: device kind -> worker count (>= 2) -> efficiency."""

    model_config = ConfigDict(extra="forbid")
    about: str = ""
    eval_speedup: float = Field(3.0, gt=0)  # forward-only evaluation vs a training step
    devices: dict[str, dict[str, ThroughputEntry]]
    data_parallel: dict[str, dict[WorkerCount, DataParallelEntry]] = Field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path = DEFAULT_THROUGHPUT) -> "ThroughputTable":
        path = Path(path)
        if not path.is_file():
            raise MissingInputError(f"{path}: throughput table not found")
        try:
            return cls.model_validate(json.loads(path.read_text()))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not valid JSON: {e}") from None
        except ValidationError as err:
            lines = [f"{path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
            raise InputError("\n".join(lines)) from None

    def lookup(self, device: str, *names: str) -> ThroughputEntry:
        """The first of ``names`` (experiment, then encoder) in the device's table, else its "default"."""
        table = self.devices.get(device)
        if table is None:
            raise UnknownNameError(f"throughput table has no device {device!r} (has {sorted(self.devices)})")
        for n in (*names, "default"):
            if n in table:
                return table[n]
        raise UnknownNameError(f"throughput table: device {device!r} has none of {list(names)} and no 'default'")

    def scaling(self, device: str, workers: int) -> Scaling:
        """The data-parallel efficiency of ``workers`` workers on ``device``: the entry of the largest listed
        worker count <= ``workers`` (efficiency usually falls as workers are added, so a count above the
        measured one is, if anything, planned too cheap: the source says so); 1 for one worker, and 1,
        labelled "assumed linear", when the device lists no count <= ``workers``."""
        if workers == 1:
            return Scaling(1, 1.0, "one worker: no data-parallel overhead")
        table = self.data_parallel.get(device, {})
        listed = [w for w in table if w <= workers]
        if not listed:
            where = f" at <= {workers} workers (listed: {sorted(table)})" if table else ""
            return Scaling(workers, 1.0, f"assumed linear (no measurement for this hardware{where})")
        w = max(listed)
        entry = table[w]
        if w == workers:
            return Scaling(workers, entry.efficiency, entry.source)
        return Scaling(workers, entry.efficiency, f"{entry.source}; the entry for {w} workers, the largest listed "
                                                  f"count <= {workers}")


@dataclass(frozen=True)
class TrialPlan:
    """One experiment's cost model."""

    experiment: str
    cpu: float
    gpu: float
    device: str  # "gpu" | "cpu": which throughput applies and which hours it is billed in
    samples_per_s: float
    throughput_source: str
    train_samples: int  # per epoch
    eval_samples: int  # per epoch (validation)
    epoch_hours: float  # resource-hours of one epoch on one worker

    @property
    def units(self) -> float:
        return self.gpu if self.device == "gpu" else self.cpu


@dataclass(frozen=True)
class RoundPlan:
    name: str
    epochs: int
    jobs_upper: int
    jobs_expected: int
    upper_hours: dict[str, float]  # "gpu"/"cpu" -> resource-hours
    expected_hours: dict[str, float]
    notes: list[str] = field(default_factory=list)
    seed_gpu_hours: tuple[float, float] | None = None
    scaling: dict[str, Scaling] = field(default_factory=dict)  # device kind -> efficiency applied to its jobs


@dataclass(frozen=True)
class Plan:
    config_name: str
    trials: list[TrialPlan]
    rounds: list[RoundPlan]
    eliminated: float
    sizes: dict[str, int]
    sizes_source: str  # the corpus folder, or "estimate (...)"

    def total(self, which: str = "upper") -> dict[str, float]:
        out: dict[str, float] = {}
        for r in self.rounds:
            for k, v in (r.upper_hours if which == "upper" else r.expected_hours).items():
                out[k] = out.get(k, 0.0) + v
        return out


@dataclass(frozen=True)
class Calibration:
    """Training throughput of one experiment measured on this machine (:func:`calibrate_throughput`)."""

    experiment: str
    samples_per_s: float
    kind: str  # "gpu" | "cpu": the device kind it was measured on
    device: str  # e.g. "NVIDIA H100 80GB HBM3" or "cpu (x86_64, 2 threads)"
    batch_size: int
    steps: int  # timed steps (after the warm-up ones)
    samples: int  # samples in the timed steps
    seconds: float  # wall time of the timed steps

    def source(self, billed_as: str) -> str:
        note = f"calibrated on {self.device}: {self.steps} steps, {self.samples} samples in {self.seconds:.2f} s"
        if billed_as != self.kind:
            note += f" (the experiment asks for {billed_as.upper()}; measured on {self.kind.upper()})"
        return note


def _device_name(dev: Any) -> str:
    import platform

    import torch

    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine() or 'unknown'}, {torch.get_num_threads()} threads)"


def calibrate_throughput(
    cfg: ProtocolConfig,
    *,
    steps: int = 5,
    warmup: int = 2,
    device: str | None = None,
    data: Any = None,
    progress: Any = None,
) -> dict[str, Calibration]:
    """Measure training samples/s of every enabled experiment on this machine's device.

    Each experiment is built as :func:`pianoray.training.loop.fit` builds it, and trained on real
    Round-1 batches (fold 0, the Round-1 tiers the corpus has, epoch 1, the experiment's batch size):
    ``warmup`` untimed steps (allocator, kernel selection, lazy init), then ``steps`` timed
    forward+backward+clip+AdamW steps, bf16 autocast on CUDA and fp32 on CPU as in the loop. Batches are
    loaded and moved to the device before timing, so this is model throughput; a loader that cannot keep
    up is not seen here. ``data``: an :class:`~pianoray.training.data.ExperimentData` (default: opened
    from ``cfg``); ``progress``: called with one line per experiment.
    """
    import torch

    from pianoray.training.data import ExperimentData
    from pianoray.training.loop import (
        build_model,
        param_groups,
        pick_device,
        plan_stages,
        seed_everything,
        supervised_step,
    )

    if steps < 1 or warmup < 0:
        raise InputError(f"calibrate: steps must be >= 1 and warmup >= 0, got steps={steps}, warmup={warmup}")
    data = data if data is not None else ExperimentData.from_config(cfg)
    dev = pick_device(device)
    kind = "gpu" if dev.type == "cuda" else "cpu"
    name_of_device = _device_name(dev)
    tiers = [t for t in cfg.round1.tiers if t in data.corpus.tiers]
    if not tiers:
        raise InputError(f"calibrate: the corpus at {cfg.data.root} has none of round1.tiers "
                         f"{[t.name for t in cfg.round1.tiers]}")

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    from pianoray.models import registry

    out: dict[str, Calibration] = {}
    for name in cfg.enabled_experiments():
        if registry.get(cfg.encoder_name(name)).kind == "fitted":
            continue  # no training steps to time: fitted once per fold (FITTED_SECONDS_PER_FOLD)
        optim_cfg, loss_cfg = cfg.optim_for(name), cfg.loss_for(name)
        seed_everything(cfg.seed)
        model = build_model(cfg, name, data).to(dev)
        stage = next((s for s in plan_stages(model, cfg.round1.epochs) if s.select), None)
        terms = stage.terms if stage is not None else None
        loader = data.loader(0, "train", tiers, model.encoder.views, optim_cfg.batch_size, epoch=1, seed=cfg.seed)
        batches: list[Any] = []
        while len(batches) < warmup + steps:  # a small corpus: go round the epoch again
            before = len(batches)
            for b in loader:
                batches.append(b.to(dev))
                if len(batches) == warmup + steps:
                    break
            if len(batches) == before:
                raise InputError(f"calibrate: experiment {name!r} has no training batches on fold 0 "
                                 f"(tiers {[t.name for t in tiers]})")
        optimizer = torch.optim.AdamW(param_groups(model, optim_cfg.lr), lr=optim_cfg.lr,
                                      weight_decay=optim_cfg.weight_decay)
        model.encoder.on_epoch_start(0, cfg.round1.epochs)
        model.train()
        samples, t0 = 0, 0.0
        for i, b in enumerate(batches):
            if i == warmup:
                sync()
                t0 = time.perf_counter()
            supervised_step(model, b, loss_cfg, terms, optimizer, None, optim_cfg.grad_clip, dev)
            if i >= warmup:
                samples += b.size
        sync()
        seconds = time.perf_counter() - t0
        out[name] = Calibration(name, samples / max(seconds, 1e-9), kind, name_of_device, optim_cfg.batch_size,
                                steps, samples, seconds)
        if progress is not None:
            progress(f"calibrated {name}: {out[name].samples_per_s:.1f} samples/s on {name_of_device}")
        del model, optimizer, batches
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return out


def corpus_tier_sizes(cfg: ProtocolConfig) -> tuple[dict[str, int], str]:
    """Segments per tier from the corpus manifests (labelled T1 only), else :data:`ESTIMATED_TIER_SIZES`."""
    from pianoray.data.remote import is_remote_uri

    root = Path(cfg.data.root)
    if is_remote_uri(cfg.data.root):
        present = True  # opening it mirrors it locally (pianoray.data.remote)
    else:
        present = (root / "corpus.json").is_file() if cfg.data.source == "cache" else root.is_dir()
    if not present:
        return dict(ESTIMATED_TIER_SIZES), f"estimate ({root} absent: PercePiano-sized T1 only)"
    from pianoray.data.corpus import open_corpus
    from pianoray.data.taxonomy import Taxonomy

    corpus = open_corpus(cfg.data)
    taxonomy = Taxonomy.load(cfg.data.taxonomy) if cfg.data.taxonomy else Taxonomy.default()
    _, labels = corpus.labels(cfg.data.labels, taxonomy)
    sizes = {t.name: len(corpus.manifest(t)) for t in corpus.tiers}
    if "T1" in sizes:
        sizes["T1"] = len(labels)
    return sizes, str(root)


def samples_per_epoch(cfg: ProtocolConfig, sizes: Mapping[str, int], tiers: list[Tier]) -> tuple[int, int]:
    """(training, validation) samples of one epoch of one fold.

    T1 trains on its fold's training part, (k-1)/k x (1 - val_fraction), and validates on
    (k-1)/k x val_fraction; the other tiers train on what is left after held-out passages, ~(k-1)/k.
    """
    k, vf = cfg.data.k, cfg.data.val_fraction
    t1 = sizes.get("T1", 0)
    train = t1 * (k - 1) / k * (1 - vf)
    for t in tiers:
        if t is not Tier.T1:
            train += sizes.get(t.name, 0) * (k - 1) / k
    return round(train), round(t1 * (k - 1) / k * vf)


def plan(
    cfg: ProtocolConfig,
    throughput: ThroughputTable | None = None,
    *,
    eliminated: float = 0.5,
    sizes: Mapping[str, int] | None = None,
    calibrated: Mapping[str, Calibration] | None = None,
) -> Plan:
    """The rounds, the jobs and the resource-hour budget of ``cfg``.

    ``eliminated``: the share of Round-1 trials expected to stop at the first rung (for the expected
    total; the upper bound assumes none). ``sizes``: segments per tier (default: the corpus manifests,
    else an estimate). ``calibrated``: measured throughput (:func:`calibrate_throughput`) that replaces
    the table's for the experiments it names. Round-2 jobs of ``round2.workers_per_fold`` workers are
    charged the single-worker hours / the table's data-parallel efficiency (:meth:`ThroughputTable.scaling`).
    """
    if not 0 <= eliminated < 1:
        raise InputError(f"eliminated must lie in [0, 1), got {eliminated}")
    throughput = throughput or ThroughputTable.load()
    if sizes is None:
        sizes, source = corpus_tier_sizes(cfg)
    else:
        sizes, source = dict(sizes), "given"
    from pianoray.models import registry

    # Fitted references have no epochs and no Round-1 trial: one fit per fold in Round 2, a fixed estimate.
    fitted = [x for x in cfg.enabled_experiments() if registry.get(cfg.encoder_name(x)).kind == "fitted"]
    names = [x for x in cfg.enabled_experiments() if x not in fitted]
    # Round-1 trials per experiment: a searched experiment screens each of its configurations (priced at the
    # experiment's configured throughput: a searched width or rank moves it, which the plan does not model).
    configs = {x: cfg.experiments[x].search.configs if cfg.experiments[x].search else 1 for x in names}
    promoted = {x: min(k, cfg.round2.configs_per_experiment) for x, k in configs.items()}
    n = sum(configs.values())

    def trial_plans(tiers: list[Tier]) -> dict[str, TrialPlan]:
        train, val = samples_per_epoch(cfg, sizes, tiers)
        out = {}
        for name in names:
            res = cfg.resources_for(name)
            device = "gpu" if res.gpu > 0 else "cpu"
            measured = (calibrated or {}).get(name)
            if measured is not None:
                sps, source = measured.samples_per_s, measured.source(device)
            else:
                entry = throughput.lookup(device, name, cfg.encoder_name(name))
                sps, source = entry.samples_per_s, entry.source
            units = res.gpu if device == "gpu" else res.cpu
            seconds = train / sps + val / (sps * throughput.eval_speedup)
            out[name] = TrialPlan(name, res.cpu, res.gpu, device, sps, source, train, val,
                                  seconds / 3600 * units)
        return out

    r1, r2 = cfg.round1, cfg.round2
    p1, p2 = trial_plans(r1.tiers), trial_plans(r2.tiers)
    first_rung = r1.rungs[0] if r1.rungs else r1.epochs
    stopped = math.floor(eliminated * n) if r1.rungs else 0
    survivors = n - stopped

    def hours(per_trial: Mapping[str, float]) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, h in per_trial.items():
            dev = p1[name].device
            out[dev] = out.get(dev, 0.0) + h
        return out

    # Expected: every trial pays up to the first rung; the survivors' share of the rest is paid too.
    # Which trials stop is unknown, so the stopping share is spread evenly over the experiments.
    keep = survivors / n if n else 0.0
    notes1 = [f"one Tune trial per enabled neural experiment on fold {r1.fold}, tiers {[t.name for t in r1.tiers]}",
              f"rungs {r1.intermediate_rungs}{' + the final epoch' if r1.final_rung_epoch else ''} ({r1.mode}, "
              f"{'noise guard' if r1.noise_guard else 'point rule'}), gap {r1.gap:g} points; "
              f"expected: {stopped} of {n} stop at epoch {first_rung}"]
    if searched := {x: k for x, k in configs.items() if cfg.experiments[x].search}:
        notes1.append("search (one trial per configuration, seeded Optuna TPE): " + ", ".join(
            f"{x} {k} configurations" for x, k in searched.items()) + f"; Round 2 takes each one's best "
            f"{cfg.round2.configs_per_experiment}")
    round1 = RoundPlan(
        ROUND1, r1.epochs, n, n,
        hours({x: t.epoch_hours * r1.epochs * configs[x] for x, t in p1.items()}),
        hours({x: t.epoch_hours * (first_rung + keep * (r1.epochs - first_rung)) * configs[x]
               for x, t in p1.items()}),
        notes1,
        SEED_GPU_HOURS[ROUND1],
    )
    fitted_cpu_h = sum(cfg.resources_for(x).cpu for x in fitted) * r2.folds * FITTED_SECONDS_PER_FOLD / 3600
    scaling = {dev: throughput.scaling(dev, r2.workers_per_fold) for dev in sorted({t.device for t in p2.values()})}
    fold_hours = {x: t.epoch_hours * r2.epochs * r2.folds / scaling[t.device].efficiency * promoted[x]
                  for x, t in p2.items()}
    upper2 = hours(fold_hours)
    expected2 = hours({x: h * keep for x, h in fold_hours.items()})
    for h in (upper2, expected2):
        if fitted:
            h["cpu"] = h.get("cpu", 0.0) + fitted_cpu_h
    notes2 = [f"one TorchTrainer per (survivor, fold): {r2.folds} folds x {r2.workers_per_fold} worker(s), "
              f"tiers {[t.name for t in r2.tiers]}",
              f"full budget {r2.epochs} epochs (early stopping, patience {r2.patience}, can only lower it); "
              f"top-{r2.num_to_keep} checkpoints"]
    for dev, s in scaling.items():
        if s.workers > 1:
            notes2.append(f"{s.workers} workers per fold on {dev.upper()}: efficiency {s.efficiency:.2f}, so a fold "
                          f"costs one worker's hours / {s.efficiency:.2f} ({s.source})")
    if fitted:
        notes2.append(f"fitted references ({', '.join(fitted)}): no Round-1 trial, one fit per fold on every fold "
                      f"(~{FITTED_SECONDS_PER_FOLD:g} s each, estimated)")
    units = sum(promoted.values())
    round2 = RoundPlan(
        ROUND2, r2.epochs, (units + len(fitted)) * r2.folds, (round(units * keep) + len(fitted)) * r2.folds,
        upper2, expected2, notes2, SEED_GPU_HOURS[ROUND2], scaling,
    )
    rounds = [round1, round2]
    if cfg.round3.enabled:
        rounds.append(_round3_plan(cfg, trial_plans(cfg.round3.tiers), throughput))
    return Plan(cfg.name, list(p1.values()), rounds, eliminated, dict(sizes), source)


def _round3_plan(cfg: ProtocolConfig, per_trial: Mapping[str, TrialPlan], throughput: ThroughputTable) -> RoundPlan:
    """Round 3: each fusion on every fold over two winners, whose passes dominate its cost. The winners are unknown
    before the run, so each fused track is priced at its most expensive candidate (an upper bound; expected: the
    same, since Round 3 stops nothing).

    A frozen epoch runs the winners forward only, at the evaluation rate (``eval_speedup``): on each winner's
    training samples; its validation samples are encoded once per fold for every fusion (a Round-3 job trains a
    fold's fusions in one process, ``models.fusion.FROZEN_FEATURES``). An unfrozen epoch (``round3.unfreeze_lr``)
    trains them too: each winner's training epoch (its validation included). The upper bound unfreezes at the
    earliest plateau, after epoch 1 + patience (the more unfrozen epochs, the dearer). A fusion that reads the
    score (F-score) runs its symbolic winner twice, on the performance and on the score."""
    from pianoray.models import registry

    r3 = cfg.round3
    by_track: dict[str, TrialPlan] = {}
    for name, t in per_trial.items():
        spec = registry.get(cfg.encoder_name(name))
        if spec.track in r3.fuse and spec.role == "candidate":
            if spec.track not in by_track or t.epoch_hours > by_track[spec.track].epoch_hours:
                by_track[spec.track] = t
    if len(by_track) < len(r3.fuse):
        missing = ", ".join(t for t in r3.fuse if t not in by_track)
        return RoundPlan(ROUND3, r3.epochs, 0, 0, {}, {}, [f"skipped: no candidate of the {missing} track"])
    scaling = {t.device: throughput.scaling(t.device, r3.workers_per_fold) for t in by_track.values()}
    unfrozen = max(0, r3.epochs - r3.patience - 1) if r3.unfreeze_lr is not None else 0
    hours: dict[str, float] = {}
    reads = {f: getattr(registry.get(f).config_cls, "reads_score", False) for f in r3.fusions}
    scores = any(reads.values())
    for track, t in by_track.items():
        rate = t.samples_per_s * throughput.eval_speedup
        train, val = (n / rate / 3600 * t.units for n in (t.train_samples, t.eval_samples))
        # the validation windows, encoded once per fold for every fusion (models.fusion.FROZEN_FEATURES)
        fold_hours = (2 if scores and track == "symbolic" else 1) * val
        for fusion in r3.fusions:
            passes = 2 if reads[fusion] and track == "symbolic" else 1
            fold_hours += passes * ((r3.epochs - unfrozen) * train + unfrozen * t.epoch_hours)
        hours[t.device] = hours.get(t.device, 0.0) + fold_hours * r3.folds / scaling[t.device].efficiency
    jobs = len(r3.fusions) * r3.folds
    notes = [f"{', '.join(r3.fusions)} over the {' and '.join(r3.fuse)} winners on {r3.folds} folds, tiers "
             f"{[t.name for t in r3.tiers]}, {r3.epochs} epochs (no early stop assumed); each fused track priced at "
             f"its most expensive candidate ({', '.join(t.experiment for t in by_track.values())}): forward passes "
             "while frozen (validation once per fold for every fusion)"
             + (f", its training epoch for the {unfrozen} epochs after the earliest plateau "
                f"(unfreeze_lr {r3.unfreeze_lr:g})" if unfrozen else "")
             + ("; F-score runs the symbolic winner twice (performance and score)" if scores else "")]
    return RoundPlan(ROUND3, r3.epochs, jobs, jobs, hours, dict(hours), notes, None, scaling)


def plan_for(cfg: ProtocolConfig, *, throughput: str | Path | None = None, eliminated: float = 0.5,
             calibrate: bool = False, feedback: Feedback | None = None) -> tuple[Plan, dict[str, Any]]:
    """What `pianoray plan` computes: (the plan, the calibration measured for it; empty without one).

    ``calibrate``: first measure every enabled experiment's throughput on this machine
    (:func:`calibrate_throughput`) and use it instead of the table's.
    """
    measured = None
    if calibrate:
        from pianoray.validation import prepare_data

        # Calibration trains on real batches: make the data as `pianoray run` would (the demo corpus when
        # absent, the symbolic feature cache).
        prepare_data(cfg, feedback)
        measured = calibrate_throughput(cfg, progress=or_default(feedback).say)
    p = plan(cfg, ThroughputTable.load(throughput or DEFAULT_THROUGHPUT), eliminated=eliminated,
             calibrated=measured)
    return p, measured or {}


def plan_json(p: Plan, measured: Mapping[str, Any]) -> dict[str, Any]:
    """`pianoray plan --json`: the plan, both totals and the calibration, as one JSON-able object."""
    import dataclasses

    return {**dataclasses.asdict(p), "total_upper": p.total("upper"), "total_expected": p.total("expected"),
            "calibration": {k: dataclasses.asdict(v) for k, v in measured.items()}}
