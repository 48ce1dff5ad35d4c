"""Typed configuration: the protocol, its rounds, the data, and each experiment.

Defaults live here in code; YAML files in ``experiments/`` override them. A YAML may say
``extends: other.yaml`` (a path relative to itself) to start from another file. Every field is
validated at load; errors name the YAML file and the field path, e.g.
``experiments/demo.yaml: round1.gap: Input should be greater than 0``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pianoray.data.tiers import Tier, parse_tier
from pianoray.errors import PianorayError
from pianoray.files import read_text
from pianoray.settings import shared_data_dir


class ConfigError(PianorayError, ValueError):
    """A config problem, already phrased as ``FILE: field.path: message`` lines."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


TierList = list[Tier]


def _tiers(v: Any) -> list[Tier]:
    if not isinstance(v, (list, tuple)):
        raise ValueError("expected a list of tiers such as [T1, T2]")
    return [parse_tier(x) for x in v]


class DemoConfig(Strict):
    """The built-in demo corpus, generated into ``data.root`` when that folder is absent."""

    seed: int = 0
    scale: float = Field(1.0, gt=0)


def _data_root(v: Any) -> Any:
    """A local folder stays a Path; a ``scheme://`` string (``s3://bucket/prefix``) stays a string."""
    if isinstance(v, str) and "://" not in v:
        return Path(v)
    if isinstance(v, str) and not v.startswith("s3://"):
        raise ValueError(f"{v!r}: remote data roots must be s3://bucket/prefix")
    return v


class DataConfig(Strict):
    # A local cache folder, or s3://bucket/prefix: a remote cache mirrored into data_cache before opening.
    root: Path | str = Path("demo-data")
    data_cache: Path = Path("~/.cache/pianoray/data")  # local mirrors of remote roots: <data_cache>/<bucket>/<prefix>
    _v_root = field_validator("root", mode="before")(lambda cls, v: _data_root(v))
    # "cache": a pianoray cache (the demo, or `pianoray extract` output); "percepiano": the real
    # PercePiano folder layout (MIDI + labels, no frames: symbolic experiments only).
    source: Literal["cache", "percepiano"] = "cache"
    labels: Literal["percepiano19", "composite"] = "composite"
    taxonomy: Path | None = None  # None: the shipped 6-dimension taxonomy
    folds: Path | None = None  # None: generated (piece-stratified, by fold_unit) and stored with the run
    # Music groups (each named by any of its passages) left out of every fold: no model trains, validates or
    # is tested on them, so `pianoray evaluate` can show the exported model on music it has never seen.
    holdout_groups: list[str] = Field(default_factory=list)
    k: int = Field(4, ge=2)
    # music: passages that share music stay on one side (pianoray.data.music); passage: the passage key
    # only (leaks where passages share music); performer: new performers of known music.
    fold_unit: Literal["music", "passage", "performer"] = "music"
    val_fraction: float = Field(0.2, gt=0, lt=0.5)
    max_frames: int = Field(64, ge=1)  # random crop of frame sequences (training); eval uses a centre crop
    max_notes: int = Field(512, ge=8)
    demo: DemoConfig | None = None
    # Symbolic feature cache (REMI ids, note graphs, curves keyed by MIDI content hash), built before a
    # run when an enabled experiment reads a symbolic view. None: <root>/symbolic for source "cache",
    # ~/.cache/pianoray/symbolic for source "percepiano" (the dataset folder is treated as read-only).
    symbolic_cache: Path | None = None


class OptimConfig(Strict):
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1)
    grad_clip: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=2)


class LossConfig(Strict):
    lambda_rank: float = Field(1.0, ge=0)
    lambda_contrastive: float = Field(0.5, ge=0)
    lambda_invariance: float = Field(0.5, ge=0)
    ranking: Literal["logistic", "margin"] = "logistic"
    margin: float = Field(0.1, ge=0)
    # Pairs whose label gap is below this are ignored by the ranking loss and by pairwise accuracy:
    # raters cannot separate performances closer than this on a [0, 1] scale.
    rank_threshold: float = Field(0.05, ge=0, lt=1)
    temperature: float = Field(0.07, gt=0)


class ResourcesConfig(Strict):
    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0)


class PretrainConfig(Strict):
    """Self-supervised pretraining for encoders that have a pretraining task (the symbolic ones).

    It runs before Round 1 (and before `pianoray train`), once per experiment, or once per fold with
    ``per_fold``: the result is cached under ``cache`` by the MIDI corpus hash, the task, the encoder config,
    the epochs and (per fold) the set of MIDI left out. It never reads labels.
    """

    midi: list[Path] = Field(default_factory=list)  # extra MIDI folders (ASAP, MAESTRO, ATEPP, ...)
    include_corpus_midi: bool = True  # also the corpus's own performance MIDI
    epochs: int = Field(50, ge=0)  # the seed: 50; 0 = no pretraining
    batch_size: int = Field(16, ge=1)
    lr: float = Field(1e-3, gt=0)
    max_notes: int = Field(512, ge=8)
    max_files: int | None = Field(None, ge=1)  # cap for CPU runs (a seeded sample of the files)
    cache: Path = Path("~/.cache/pianoray/pretrain")
    # True: one pretraining per fold, without that fold's validation and test MIDI (by content), so no fold's
    # encoder has seen the performances it is scored on. False: one shared pretraining over every file.
    per_fold: bool = False


class SearchParam(Strict):
    """One searched hyper-parameter: an Optuna distribution (``IntDistribution``, ``FloatDistribution``,
    ``CategoricalDistribution``). ``low``/``high`` bound int and float (``log``: sampled on a log scale,
    ``step``: a grid); ``choices`` lists a categorical's values."""

    type: Literal["int", "float", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = Field(None, gt=0)
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _complete(self) -> "SearchParam":
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None or self.log or self.step is not None:
                raise ValueError("a categorical parameter takes 'choices' only (no low/high/log/step)")
            return self
        if self.choices is not None:
            raise ValueError(f"an {self.type} parameter takes low/high, not 'choices'")
        if self.low is None or self.high is None:
            raise ValueError(f"an {self.type} parameter needs 'low' and 'high'")
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError(f"a log-scale range must be positive (low is {self.low})")
        if self.log and self.step is not None:
            raise ValueError("'log' and 'step' cannot be combined (Optuna samples one or the other)")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError("an int parameter needs integer low and high")
        return self

    def extremes(self) -> list[Any]:
        """The range's ends (or every choice): what load-time validation applies to the field."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]


# What a search may vary: an experiment's own fields (``model.<field>`` is the encoder's config).
SEARCHABLE = ("model", "optim", "loss")
CANDIDATE_SEP = ".c"  # configuration k of a searched experiment A1 is Round 1's experiment "A1.c<k>"


class SearchConfig(Strict):
    """An experiment's Round-1 search (pianoray.protocol.search): ``configs`` configurations drawn by a
    seeded Optuna TPE sampler over ``space`` (dotted field paths of the experiment, e.g. ``optim.lr`` or
    ``model.lora.rank``), each screened as its own Round-1 trial under the track-gap scheduler."""

    configs: int = Field(ge=1)
    seed: int | None = None  # None: the protocol's seed
    space: dict[str, SearchParam] = Field(min_length=1)

    @field_validator("space")
    @classmethod
    def _paths(cls, v: dict[str, SearchParam]) -> dict[str, SearchParam]:
        for path in v:
            head, _, rest = path.partition(".")
            if head not in SEARCHABLE or not rest:
                fields = ", ".join(f"{h}.<field>" for h in SEARCHABLE)
                raise ValueError(f"{path!r}: a searched field is one of {fields}")
        return v


class ExperimentConfig(Strict):
    """One experiment: a registered encoder with its sizes and (optionally) its own optimiser/loss."""

    encoder: str | None = None  # registry name; defaults to the experiment's key
    enabled: bool = True
    model: dict[str, Any] = Field(default_factory=dict)  # validated against the encoder's config type
    optim: OptimConfig | None = None
    loss: LossConfig | None = None
    resources: ResourcesConfig | None = None
    pretrain_epochs: int | None = Field(None, ge=0)  # overrides pretrain.epochs for this experiment
    # Set by the driver after pretraining (not by users): the encoder weights fine-tuning starts from,
    # shared by every fold, or per fold (fold -> weights) under ``pretrain.per_fold``.
    init_encoder: Path | None = None
    init_encoder_folds: dict[int, Path] = Field(default_factory=dict)
    search: SearchConfig | None = None  # Round 1 screens several configurations of this experiment


class Round1Config(Strict):
    """Round 1 (screen). Rungs count supervised epochs; the elimination rule is in docs/elimination-rule.md."""

    epochs: int = Field(50, ge=1)
    fold: int = Field(0, ge=0)
    rungs: list[int] = Field(default_factory=lambda: [10, 25])
    # The end of the round is a rung too (the seed eliminates after Round 1): each trial is judged on its last
    # report, so one that falls more than `gap` behind after the last listed rung is not promoted.
    final_rung: bool = True
    gap: float = Field(10.0, gt=0)  # percentage points of pairwise accuracy
    mode: Literal["sync", "async"] = "sync"
    # The rule: false = the seed's point rule on the observed gap (the default: the seed's rule); true = the
    # noise guard, which stops only when the whole 95% interval of the gap lies above `gap`. Every decision
    # records that interval either way (`gap_ci`, with `rule`); experiments/*.yaml say which rule they use.
    noise_guard: bool = False
    n_boot: int = Field(1000, ge=100)  # passage resamples of each decision's gap interval
    patience: int | None = Field(None, ge=1)
    max_failures: int = Field(2, ge=0)  # retries of a Round-1 trial that errors (Tune's FailureConfig)
    tiers: TierList = Field(default_factory=lambda: [Tier.T1, Tier.T2])
    # Where searched experiments' Optuna studies live: None, a journal file per experiment in the run folder
    # (docs/search.md); or an Optuna RDB URL (sqlite:///studies.db, postgresql://user@host/db).
    study_storage: str | None = Field(None, pattern=r"^[a-z][a-z0-9+]*://")

    _v_tiers = field_validator("tiers", mode="before")(lambda cls, v: _tiers(v))

    @model_validator(mode="after")
    def _rungs_in_budget(self) -> "Round1Config":
        bad = [r for r in self.rungs if r < 1 or r > self.epochs]
        if bad:
            raise ValueError(f"rungs {bad} must lie in [1, epochs={self.epochs}]")
        if sorted(set(self.rungs)) != list(self.rungs):
            raise ValueError("rungs must be strictly increasing")
        return self

    @property
    def intermediate_rungs(self) -> list[int]:
        """The rungs before the end of the round (what the scheduler pauses at in sync mode)."""
        return [r for r in self.rungs if r < self.epochs]

    @property
    def final_rung_epoch(self) -> int | None:
        """The end-of-round rung, numbered by the budget (``epochs``); a trial reaches it with its last report
        (its budget spent, or stopped by patience). None when neither ``final_rung`` nor ``rungs`` asks for it."""
        return self.epochs if self.final_rung or self.epochs in self.rungs else None


class Round2Config(Strict):
    epochs: int = Field(200, ge=1)
    patience: int = Field(20, ge=1)
    folds: int = Field(4, ge=1)
    tiers: TierList = Field(default_factory=lambda: [Tier.T1, Tier.T2, Tier.T3, Tier.T4])
    num_to_keep: int = Field(3, ge=1)
    max_failures: int = Field(2, ge=0)
    workers_per_fold: int = Field(1, ge=1)
    # How Round-2 folds map to Ray Train jobs. per_fold: one job per (experiment, fold), the cluster layout
    # (folds run in parallel on separate nodes). per_experiment: one job per experiment running its folds in
    # sequence, checkpoints, resume and scores still per fold; on a laptop a demo fold trains for seconds and
    # Ray Train's start-up would dominate. auto: per_experiment on a local head, per_fold with --address.
    fold_jobs: Literal["auto", "per_fold", "per_experiment"] = "auto"
    # A searched experiment sends its best this-many Round-1 configurations (by the rung each reached, then
    # validation pairwise accuracy there, then R2); the best keeps the experiment's name, the others theirs.
    configs_per_experiment: int = Field(1, ge=1)

    _v_tiers = field_validator("tiers", mode="before")(lambda cls, v: _tiers(v))

    def fold_groups(self, local: bool, slots: int = 1) -> list[list[int]]:
        """The folds of each Round-2 job, in order (``fold_jobs`` resolved for a local head or a cluster); a
        Round-2 job trains one experiment, so ``slots`` (the jobs that run at once) does not change them."""
        folds = list(range(self.folds))
        grouped = self.fold_jobs == "per_experiment" or (self.fold_jobs == "auto" and local)
        return [folds] if grouped else [[k] for k in folds]


class Round3Config(Round2Config):
    """Round 3 (fusion): the winners of the ``fuse`` tracks, frozen at each fold's best Round-2 model, fused by
    each of ``fusions`` (registered fusion experiments) and trained like a Round-2 fold (the fields above) on
    every fold; ``enabled: false`` skips it. A run whose fused tracks lack a winner skips it and says why."""

    enabled: bool = True
    folds: int | None = Field(None, ge=1)  # None: Round 2's (each fold fuses that fold's Round-2 models)
    fusions: list[str] = Field(default_factory=lambda: ["F1", "F2", "F3", "F-score"])
    fuse: list[str] = Field(default_factory=lambda: ["audio", "symbolic"], min_length=2, max_length=2)
    epochs: int = Field(30, ge=1)
    patience: int = Field(5, ge=1)
    tiers: TierList = Field(default_factory=lambda: [Tier.T1, Tier.T2, Tier.T3])  # the seed: T1+T2+T3
    # None: the winners stay frozen. A rate: once the frozen fusion plateaus (patience runs out), the winners'
    # own trainable parameters unfreeze at this rate (the fusion module and heads keep optim.lr) and training
    # goes on, with patience counted afresh, until the budget or a second plateau.
    unfreeze_lr: float | None = Field(None, gt=0)
    # The weight of the fusions' auxiliary difficulty head (regression on the pieces' grades, scaled to [0, 1]):
    # it trains on the graded training segments of pieces the fold does not hold out; 0: no head.
    difficulty_head: float = Field(0.1, ge=0)

    def fold_groups(self, local: bool, slots: int = 1) -> list[list[int]]:
        """The folds of each Round-3 job, in order. A Round-3 job trains every fusion on each of its folds (fold
        by fold: they fuse the same frozen winners), so its Ray Train start-up is paid once for all of them.
        per_fold: one fold a job (the cluster layout); per_experiment: every fold in one job; auto: per_fold with
        --address, and on a local head the folds split in order over the ``slots`` jobs that run at once."""
        folds = list(range(self.folds or 0))
        if self.fold_jobs == "per_fold" or (self.fold_jobs == "auto" and not local):
            return [[k] for k in folds]
        jobs = 1 if self.fold_jobs == "per_experiment" else max(1, min(slots, len(folds)))
        size, extra = divmod(len(folds), jobs)
        bounds = [j * size + min(j, extra) for j in range(jobs + 1)]  # the first `extra` jobs take one more
        return [folds[a:b] for a, b in zip(bounds, bounds[1:])]


class SelectionConfig(Strict):
    robustness_veto: float = Field(0.15, gt=0, lt=1)  # relative drop in pairwise accuracy
    # Percentage points of mean validation pairwise accuracy (like round1.gap): candidates this close to the
    # track's leader are tied and R2 decides between them; candidates further behind never win on R2.
    tie_tolerance: float = Field(0.5, ge=0, le=100)
    # Paired bootstrap resamples (over passages, stratified by fold) for the winner's margin and its
    # comparison with the track's references.
    n_boot: int = Field(2000, ge=0)


class ProtocolConfig(Strict):
    name: str = "pianoray"
    seed: int = 42
    storage: str = "runs"  # local path, NFS path or s3://bucket/prefix
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    resources: ResourcesConfig = Field(default_factory=ResourcesConfig)
    round1: Round1Config = Field(default_factory=Round1Config)
    round2: Round2Config = Field(default_factory=Round2Config)
    round3: Round3Config = Field(default_factory=Round3Config)
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    experiments: dict[str, ExperimentConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _fold_in_range(self) -> "ProtocolConfig":
        if self.round1.fold >= self.data.k:
            raise ValueError(f"round1.fold={self.round1.fold} but data.k={self.data.k}")
        if self.round2.folds > self.data.k:
            raise ValueError(f"round2.folds={self.round2.folds} exceeds data.k={self.data.k}")
        if self.round3.folds is None:
            self.round3.folds = self.round2.folds
        elif self.round3.folds > self.round2.folds:
            raise ValueError(f"round3.folds={self.round3.folds} exceeds round2.folds={self.round2.folds}: Round 3 "
                             "fuses each fold's Round-2 models")
        return self

    # Resolved views of an experiment: its own settings where given, the protocol's otherwise.
    def encoder_name(self, name: str) -> str:
        return self.experiments[name].encoder or name

    def optim_for(self, name: str) -> OptimConfig:
        return self.experiments[name].optim or self.optim

    def loss_for(self, name: str) -> LossConfig:
        return self.experiments[name].loss or self.loss

    def resources_for(self, name: str) -> ResourcesConfig:
        return self.experiments[name].resources or self.resources

    def init_encoder_for(self, name: str, fold: int | None = None) -> Path | None:
        """The weights ``name`` starts from on ``fold``: its fold's own under per-fold pretraining, else the
        shared ones (None: from scratch)."""
        exp = self.experiments[name]
        return exp.init_encoder_folds.get(fold, exp.init_encoder) if fold is not None else exp.init_encoder

    def enabled_experiments(self) -> list[str]:
        return [n for n, e in self.experiments.items() if e.enabled]

    def fold_round(self, round_: str) -> "Round2Config":
        """The budget, tiers and Train settings of ``round_``'s fold jobs (Round 3's extend Round 2's)."""
        from pianoray.records import ROUND3

        return self.round3 if round_ == ROUND3 else self.round2


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _resolve_path(value: str, yaml_path: Path) -> str:
    """'{shared_data}' expanded, '~' expanded, then relative to the YAML file that names it; URIs unchanged."""
    if "://" in value:
        return value
    p = Path(value.replace("{shared_data}", str(shared_data_dir()))).expanduser()
    return str(p if p.is_absolute() else (yaml_path.parent / p).resolve())


def _read_yaml(path: Path, seen: tuple[Path, ...] = (), origins: dict[tuple[str, ...], Path] | None = None
               ) -> dict[str, Any]:
    """The YAML at ``path`` merged over its ``extends:`` chain. ``origins``, when given, receives the file each
    key path was last set in (a child's value over its parent's), so an error names the file to fix."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: extends: cycle through {' -> '.join(str(p) for p in seen)}")
    if not path.exists():
        raise ConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(read_text(path, "config file"))
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if raw is None:
        raise ConfigError(f"{path}: the config is empty (a config names at least its experiments or `extends:`)")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    parent = raw.pop("extends", None)
    own = raw
    if parent is not None:
        raw = _deep_merge(_read_yaml(path.parent / str(parent), seen + (path,), origins), raw)
    if origins is not None:
        origins.update({keys: path for keys in _key_paths(own)})
    # Relative data paths are relative to the YAML file that names them, so configs work from any cwd;
    # "{shared_data}" stands for the real-data folder (PIANORAY_SHARED_DATA, default ../shared/data).
    data = raw.get("data")
    if isinstance(data, dict):
        for key in ("root", "taxonomy", "folds", "symbolic_cache", "data_cache"):
            if isinstance(data.get(key), str):
                data[key] = _resolve_path(data[key], path)
    if isinstance(raw.get("storage"), str) and "://" not in raw["storage"]:
        raw["storage"] = _resolve_path(raw["storage"], path)
    pre = raw.get("pretrain")
    if isinstance(pre, dict):
        if isinstance(pre.get("midi"), list):
            pre["midi"] = [_resolve_path(m, path) if isinstance(m, str) else m for m in pre["midi"]]
        if isinstance(pre.get("cache"), str):
            pre["cache"] = _resolve_path(pre["cache"], path)
    return raw


def _key_paths(tree: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a nested mapping, inner nodes included: ("round1",), ("round1", "epochs"), ..."""
    out = []
    for k, v in tree.items():
        out.append(prefix + (str(k),))
        if isinstance(v, dict):
            out += _key_paths(v, prefix + (str(k),))
    return out


def format_validation_error(source: str, err: ValidationError,
                            origins: dict[tuple[str, ...], Path] | None = None) -> str:
    """One line per error, ``<file>: <field path>: <message>``; the file is the one that set the field (the
    longest key path of ``origins`` the field lies under), else ``source``."""
    lines = []
    for e in err.errors():
        keys = tuple(str(p) for p in e["loc"])
        where = next((str(origins[keys[:n]]) for n in range(len(keys), 0, -1) if keys[:n] in (origins or {})),
                     source)
        lines.append(f"{where}: {'.'.join(keys) or '(top level)'}: {e['msg']}")
    return "\n".join(lines)


def _validate_models(source: str, cfg: ProtocolConfig) -> None:
    """Check every experiment's encoder exists and its ``model`` dict fits that encoder's config type."""
    from pianoray.models import registry  # lazy: config must import without torch-heavy modules

    problems = []
    for name, exp in cfg.experiments.items():
        enc = cfg.encoder_name(name)
        try:
            spec = registry.get(enc)
        except KeyError as e:
            problems.append(f"{source}: experiments.{name}.encoder: {e.args[0]}")
            continue
        if spec.kind == "fusion":
            problems.append(f"{source}: experiments.{name}.encoder: {enc} is a fusion of a run's winners, built in "
                            "Round 3; it cannot be a Round-1/2 experiment")
            continue
        try:
            spec.config_cls.model_validate(exp.model)
        except ValidationError as err:
            for e in err.errors():
                loc = ".".join(str(p) for p in e["loc"])
                problems.append(f"{source}: experiments.{name}.model.{loc}: {e['msg']}")
            continue
        if exp.search is not None:
            problems += _search_problems(source, cfg, name, spec)
    for i, fusion in enumerate(cfg.round3.fusions):
        kind = getattr(registry.all_specs().get(fusion), "kind", None)
        if kind != "fusion":
            fusions = ", ".join(registry.names(kind="fusion"))
            problems.append(f"{source}: round3.fusions.{i}: {fusion!r} is not a registered fusion ({fusions})")
    if problems:
        raise ConfigError("\n".join(problems))


def searched_experiment(cfg: ProtocolConfig, name: str, params: dict[str, Any]) -> ExperimentConfig:
    """Experiment ``name`` with the searched ``params`` (dotted paths -> values) set: its model dict, and its
    optimiser/loss (the protocol's where the experiment has none of its own), without its ``search``. Raises
    pydantic's ValidationError when a value does not fit its field (the model dict is the encoder's to check:
    :func:`model_config`), ValueError when a path runs through a value that is not a group of fields."""
    exp = cfg.experiments[name]
    raw: dict[str, Any] = {**exp.model_dump(exclude={"search"}), "optim": cfg.optim_for(name).model_dump(),
                           "loss": cfg.loss_for(name).model_dump()}
    for path, value in params.items():
        node = raw
        *parents, leaf = path.split(".")
        for part in parents:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ValueError(f"{part} is not a group of fields")
            node = child
        node[leaf] = value
    return ExperimentConfig.model_validate({**raw, "encoder": cfg.encoder_name(name)})


def _search_problems(source: str, cfg: ProtocolConfig, name: str, spec: Any) -> list[str]:
    """A search space whose fields do not exist, or whose values do not fit them (checked with each range's
    ends or each choice), named by path."""
    search = cfg.experiments[name].search
    where = f"{source}: experiments.{name}.search.space"
    problems = [f"{source}: experiments.{n}: the name of configuration {k} of {name}'s search; rename the experiment"
                for k in range(search.configs) if (n := f"{name}{CANDIDATE_SEP}{k}") in cfg.experiments]
    for path, param in search.space.items():
        for value in param.extremes():
            try:
                spec.config_cls.model_validate(searched_experiment(cfg, name, {path: value}).model)
            except ValidationError as err:
                problems += [f"{where}.{path}: {value!r}: {e['msg']}" for e in err.errors()]
                break
            except ValueError as e:
                problems.append(f"{where}.{path}: {e}")
                break
    return problems


def model_config(cfg: ProtocolConfig, name: str) -> Any:
    """The validated model config object for experiment ``name``."""
    from pianoray.models import registry

    return registry.get(cfg.encoder_name(name)).config_cls.model_validate(cfg.experiments[name].model)


def dotted_overrides(items: list[str]) -> dict[str, Any]:
    """``["experiments.S3.optim.lr=1e-3", ...]`` -> the nested override dict ``load_config`` takes (values
    parsed as YAML, so numbers, booleans and lists keep their types)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected dotted.key=value")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    return out


def load_config(
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    *,
    check_models: bool = True,
) -> ProtocolConfig:
    """Load defaults, then ``path`` (YAML), then ``overrides`` (a nested dict); validate everything.

    Raises ConfigError whose lines name the file and the field path.
    """
    source = str(path) if path is not None else "<defaults>"
    origins: dict[tuple[str, ...], Path] = {}
    raw: dict[str, Any] = _read_yaml(Path(path), origins=origins) if path is not None else {}
    if overrides:
        raw = _deep_merge(raw, overrides)
        for keys in _key_paths(overrides):  # set by the caller (--data, a test), not by a file
            origins.pop(keys, None)
    try:
        cfg = ProtocolConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(format_validation_error(source, err, origins)) from None
    for name, exp in cfg.experiments.items():
        if exp.pretrain_epochs is not None and not math.isfinite(exp.pretrain_epochs):
            raise ConfigError(f"{source}: experiments.{name}.pretrain_epochs: must be finite")
    if check_models:
        _validate_models(source, cfg)
    return cfg
