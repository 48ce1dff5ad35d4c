"""Round-1 search: several configurations of an experiment, drawn from its own Optuna study, each screened as
its own Round-1 trial under the track-gap scheduler.

An experiment with a ``search:`` block (:class:`pianoray.config.SearchConfig`) becomes ``configs`` candidates
``<experiment>.c<k>``, ``k`` the Optuna trial number in the experiment's study (study name = experiment). A
candidate is an experiment of Round 1's config like any other (:func:`with_candidates`): the scheduler, the
ledger and resume key everything by that name, so they need nothing new.

**When the configurations are drawn.** All of them are asked from the study before Round 1 starts. Tune would
ask a searcher for every trial at once anyway (it keeps up to ``max(16, CPUs)`` trials pending, and the sync
scheduler judges a rung among the trials it knows), and a TPE sampler samples independently at random until
``n_startup_trials`` (10) trials have completed, so at a few configurations per experiment asking later would
change nothing but the bookkeeping. What it buys: the set of configurations is fixed in the journal before any
trial runs, so a kill -9 at any point resumes with the same configurations, none lost or repeated, and the
studies never hold a trial Ray does not know.

**Determinism across kills.** Each ask uses a sampler seeded by (search seed, experiment, trial number): the k-th
configuration is the same whether it is drawn in the first session or in a resumed one after a kill between
two asks (a sampler seeded once would restart its random stream and propose the first configurations again).

**The studies as a record.** When Round 1 ends, each candidate's outcome (:func:`outcomes`, read from the
ledger: its reports at the rungs, the stop decisions as they stand, errors) is told to its study: its
validation pairwise accuracy at every rung it reached as intermediate values, stepped by the rung epoch (the
supervised epochs the scheduler counts, never Tune's ``training_iteration``, which restarts on resume); then
PRUNED when the scheduler stopped it (Tune would report a stopped trial as complete with its low-budget value,
which would skew TPE), FAIL when it errored, else COMPLETE with its last rung's value. Telling is idempotent,
so a resumed run tells what a killed one had not. Each study is an Optuna journal, ``<run>/optuna/<experiment>
.journal``, which ``optuna-dashboard`` opens. With ``s3://`` storage the journal lives on the driver's disk
(``RunStorage.driver_dir``) and is copied to ``<run>/optuna/`` after every change, and restored from there on
resume (the longer of the two wins: a journal only grows). ``round1.study_storage`` (an Optuna RDB URL) keeps
the studies in a database instead.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pianoray.config import CANDIDATE_SEP, ProtocolConfig, SearchConfig, SearchParam, searched_experiment
from pianoray.files import atomic_write
from pianoray.protocol.storage import DRIVER_CACHE, RunStorage
from pianoray.records import SELECTION_METRIC

logger = logging.getLogger(__name__)

JOURNAL_DIR = "optuna"

STATES = ("complete", "pruned", "failed", "running")


@dataclass(frozen=True)
class Candidate:
    """One configuration of a searched experiment: Round 1's trial ``name`` (``A1.c3``)."""

    name: str
    experiment: str
    number: int
    params: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.name, "experiment": self.experiment, "number": self.number, "params": dict(self.params)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> "Candidate":
        return cls(d["id"], d["experiment"], int(d["number"]), dict(d["params"]))


def candidate_name(experiment: str, number: int) -> str:
    return f"{experiment}{CANDIDATE_SEP}{number}"


def searched(cfg: ProtocolConfig) -> list[str]:
    """Enabled experiments with a ``search:`` block, in config order."""
    return [n for n in cfg.enabled_experiments() if cfg.experiments[n].search is not None]


def distribution(p: SearchParam) -> Any:
    """The Optuna distribution of one searched parameter."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if p.type == "categorical":
        return CategoricalDistribution(p.choices)
    if p.type == "int":
        return IntDistribution(int(p.low), int(p.high), log=p.log, step=int(p.step or 1))
    return FloatDistribution(p.low, p.high, log=p.log, step=p.step)


def space(search: SearchConfig) -> dict[str, Any]:
    return {path: distribution(p) for path, p in search.space.items()}


def _sampler_seed(seed: int, experiment: str, number: int) -> int:
    """The seed of the sampler that draws ``experiment``'s trial ``number``: a function of these only (two
    experiments with one space and seed still get different configurations)."""
    return int.from_bytes(hashlib.sha256(f"{seed}/{experiment}/{number}".encode()).digest()[:4], "little")


class StudyJournals:
    """The run's Optuna studies: one journal file per searched experiment (see the module docstring), or, with
    ``url`` (``round1.study_storage``), studies named ``<run>/<experiment>`` in that database (Optuna's
    ``RDBStorage``: ``sqlite:///...``, ``postgresql://...``), which the driver writes directly."""

    def __init__(self, storage: RunStorage, cache: Path = DRIVER_CACHE, url: str | None = None) -> None:
        self.storage = storage
        self.url = url
        self.remote = storage.local_dir() is None and url is None
        self.dir = storage.driver_dir(JOURNAL_DIR, cache)

    def rel(self, experiment: str) -> str:
        return f"{JOURNAL_DIR}/{experiment}.journal"

    def path(self, experiment: str) -> Path:
        return self.dir / f"{experiment}.journal"

    def study_name(self, experiment: str) -> str:
        return f"{self.storage.uri}/{experiment}" if self.url else experiment

    def where(self, experiment: str) -> str:
        """Where the study lives, for people (what ``optuna-dashboard`` is given)."""
        return f"{self.url} (study {self.study_name(experiment)})" if self.url else str(self.path(experiment))

    def exists(self, experiment: str) -> bool:
        if self.url:
            import optuna

            return self.study_name(experiment) in optuna.get_all_study_names(self._rdb())
        self.restore(experiment)
        return self.path(experiment).is_file()

    def restore(self, experiment: str) -> None:
        """Object storage: bring the stored journal to this disk when it is longer than the local one."""
        if not self.remote or not self.storage.exists(self.rel(experiment)):
            return
        data = self.storage.read_bytes(self.rel(experiment))
        path = self.path(experiment)
        if not path.is_file() or path.stat().st_size < len(data):
            atomic_write(path, data)

    def save(self, experiment: str) -> None:
        """Object storage: copy the journal to ``<run>/optuna/``."""
        path = self.path(experiment)
        if self.remote and path.is_file():
            self.storage.write_bytes(self.rel(experiment), path.read_bytes())

    def clear(self) -> None:
        """``--fresh``: forget this run's studies (the local copies of an object-storage run's journals, or the
        run's studies in the database; a local run's journals go with its folder)."""
        if self.url:
            import optuna

            for name in optuna.get_all_study_names(self._rdb()):
                if name.startswith(f"{self.storage.uri}/"):
                    optuna.delete_study(study_name=name, storage=self._rdb())
        elif self.remote and self.dir.is_dir():
            for p in self.dir.glob("*.journal"):
                p.unlink()

    def _rdb(self) -> Any:
        import optuna

        return optuna.storages.RDBStorage(self.url)

    def study(self, experiment: str, sampler: Any = None) -> Any:
        import optuna
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created" lines in the run output
        if self.url:
            storage = self._rdb()
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            storage = JournalStorage(JournalFileBackend(str(self.path(experiment))))
        return optuna.create_study(study_name=self.study_name(experiment), storage=storage, direction="maximize",
                                   sampler=sampler, load_if_exists=True)


def draw(cfg: ProtocolConfig, journals: StudyJournals, experiment: str) -> list[Candidate]:
    """The configurations of ``experiment``: those its study holds, then new asks until it has ``configs``."""
    from optuna.samplers import TPESampler

    search = cfg.experiments[experiment].search
    assert search is not None, experiment
    seed = cfg.seed if search.seed is None else search.seed
    dists = space(search)
    journals.restore(experiment)
    study = journals.study(experiment)
    asked = False
    while (n := len(study.get_trials(deepcopy=False))) < search.configs:
        journals.study(experiment, TPESampler(seed=_sampler_seed(seed, experiment, n))).ask(dists)
        asked = True
    if asked:
        journals.save(experiment)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)[: search.configs]
    return [Candidate(candidate_name(experiment, t.number), experiment, t.number, dict(t.params)) for t in trials]


def draw_all(cfg: ProtocolConfig, journals: StudyJournals) -> list[Candidate]:
    return [c for name in searched(cfg) for c in draw(cfg, journals, name)]


def with_candidates(cfg: ProtocolConfig, candidates: Iterable[Candidate]) -> ProtocolConfig:
    """Round 1's config: each searched experiment replaced, in place, by its candidates (the experiment itself
    stays, disabled, for Round 2 to take its best configuration's settings under its name)."""
    by_experiment: dict[str, list[Candidate]] = {}
    for c in candidates:
        by_experiment.setdefault(c.experiment, []).append(c)
    experiments = {}
    for name, exp in cfg.experiments.items():
        if name in by_experiment:
            experiments[name] = exp.model_copy(update={"enabled": False})
            for c in by_experiment[name]:
                experiments[c.name] = searched_experiment(cfg, name, c.params)
        else:
            experiments[name] = exp
    return cfg.model_copy(update={"experiments": experiments})


def with_promoted(cfg: ProtocolConfig, promoted: Mapping[str, str]) -> ProtocolConfig:
    """Round 2's config: each promoted name (the experiment's own for its best configuration, the candidate's
    for the others) set to its candidate's settings, enabled."""
    experiments = dict(cfg.experiments)
    for unit, candidate in promoted.items():
        experiments[unit] = cfg.experiments[candidate].model_copy(update={"enabled": True})
    return cfg.model_copy(update={"experiments": experiments})


# ------------------------------------------------------------------------------------------- outcomes


@dataclass
class ConfigOutcome:
    """How a candidate ended Round 1. ``rungs``: rung epoch -> validation pairwise accuracy it reported there
    (the final rung at its last report); ``rung``: the last rung it reached; ``value``/``r2``: its figures there;
    ``stopped_at``: the rung of the stop decision that ended it, as it stands; ``epochs``: epochs it trained."""

    candidate: Candidate
    state: str
    rungs: dict[int, float] = field(default_factory=dict)
    rung: int | None = None
    value: float | None = None
    r2: float | None = None
    stopped_at: int | None = None
    epochs: int = 0

    @property
    def rank_key(self) -> tuple[float, float, float]:
        """Best first when sorted descending: the furthest rung, then pairwise accuracy there, then R2."""
        def num(x: float | None) -> float:
            return -math.inf if x is None or x != x else x
        return (num(self.rung), num(self.value), num(self.r2))

    def to_json(self) -> dict[str, Any]:
        return {**self.candidate.to_json(), **{k: v for k, v in asdict(self).items() if k != "candidate"},
                "rungs": {str(k): v for k, v in self.rungs.items()}}


def outcomes(candidates: Iterable[Candidate], rungs: Iterable[int], final_rung: int | None,
             reports: Mapping[str, Mapping[int, Mapping[str, Any]]], stopped: Mapping[str, int],
             errored: Iterable[str]) -> list[ConfigOutcome]:
    """Each candidate's outcome from what the ledger recorded: ``reports`` (name -> rung epoch -> the metrics
    reported there with the ledger's ``epoch``, ``Ledger.rung_reports(..., key="rung_epoch")``), ``stopped``
    (name -> rung of its stop, as the decisions stand), ``errored`` (names whose trial errored for good). A
    candidate whose last report says ``stop`` (budget spent or early-stopped) reached the final rung there."""
    errored = set(errored)
    out = []
    for c in candidates:
        reported = {int(e): m for e, m in (reports.get(c.name) or {}).items()}
        values = {r: float(reported[r][SELECTION_METRIC]) for r in rungs if r in reported
                  and isinstance(reported[r].get(SELECTION_METRIC), (int, float))}
        last = reported[max(reported)] if reported else None
        finished = last is not None and bool(last.get("stop"))
        if finished and final_rung is not None and isinstance(last.get(SELECTION_METRIC), (int, float)):
            values[final_rung] = float(last[SELECTION_METRIC])
        state = ("pruned" if c.name in stopped else "failed" if c.name in errored
                 else "complete" if finished else "running")
        rung = max(values) if values else None
        at = reported.get(rung) if rung in reported else last if rung == final_rung else None
        r2 = (at or {}).get("val/r2")
        out.append(ConfigOutcome(c, state, values, rung, values.get(rung), float(r2) if isinstance(r2, (int, float))
                                 else None, stopped.get(c.name),
                                 max((int(m.get("epoch", 0)) for m in reported.values()), default=0)))
    return out


def best(results: Iterable[ConfigOutcome], k: int = 1) -> list[ConfigOutcome]:
    """The ``k`` best configurations that survived Round 1 (state complete), best first (:attr:`rank_key`)."""
    return sorted((o for o in results if o.state == "complete"), key=lambda o: o.rank_key, reverse=True)[:k]


def promotions(results: Iterable[ConfigOutcome], k: int) -> dict[str, str]:
    """Round-2 name -> candidate, per searched experiment: its best survivor under the experiment's own name,
    the next ``k - 1`` under theirs."""
    by_experiment: dict[str, list[ConfigOutcome]] = {}
    for o in results:
        by_experiment.setdefault(o.candidate.experiment, []).append(o)
    out: dict[str, str] = {}
    for name, group in by_experiment.items():
        for i, o in enumerate(best(group, k)):
            out[name if i == 0 else o.candidate.name] = o.candidate.name
    return out


def tell(journals: StudyJournals, results: Iterable[ConfigOutcome]) -> None:
    """Record ended candidates in their studies (module docstring); candidates still running are left so."""
    import optuna
    from optuna.trial import TrialState

    by_experiment: dict[str, list[ConfigOutcome]] = {}
    for o in results:
        by_experiment.setdefault(o.candidate.experiment, []).append(o)
    for name, group in by_experiment.items():
        journals.restore(name)
        study = journals.study(name)
        trials = {t.number: t for t in study.get_trials(deepcopy=False)}
        changed = False
        for o in group:
            t = trials.get(o.candidate.number)
            if t is None or t.state != TrialState.RUNNING or o.state == "running":
                continue
            live = optuna.trial.Trial(study, t._trial_id)  # the storage id (what optuna's own integrations use)
            for step, value in sorted(o.rungs.items()):
                if step not in t.intermediate_values:
                    live.report(value, step)
            if o.state == "complete" and o.value is not None:
                study.tell(o.candidate.number, o.value)
            else:
                study.tell(o.candidate.number, state=TrialState.PRUNED if o.state == "pruned" else TrialState.FAIL)
            changed = True
        if changed:
            journals.save(name)


MIN_FOR_IMPORTANCE = 3  # completed configurations: with two, fANOVA splits one difference among the parameters


def importances(journals: StudyJournals, experiment: str) -> dict[str, float] | None:
    """``optuna.importance.get_param_importances`` over the study's completed trials (fANOVA); None with fewer
    than :data:`MIN_FOR_IMPORTANCE` completed, or when no parameter varied."""
    import optuna
    from optuna.trial import TrialState

    if not journals.exists(experiment):
        return None
    study = journals.study(experiment)
    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < MIN_FOR_IMPORTANCE:
        return None
    try:
        return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (RuntimeError, ValueError) as e:  # e.g. every completed trial had the same value
        logger.info("%s: no parameter importances (%s)", experiment, e)
        return None


# ------------------------------------------------------------------------------------------- pianoray search


def alone(cfg: ProtocolConfig, experiment: str, configs: int | None = None) -> ProtocolConfig:
    """``pianoray search``'s config: ``experiment`` the only one enabled (its configurations judged against each
    other), with ``configs`` configurations when given."""
    from pianoray.config import ConfigError

    exp = cfg.experiments.get(experiment)
    if exp is None:
        raise ConfigError(f"experiment {experiment!r} is not in the config (it has {', '.join(cfg.experiments)})")
    if exp.search is None:
        raise ConfigError(f"experiments.{experiment}: no search: block to run (see docs/search.md)")
    search = exp.search if configs is None else exp.search.model_copy(update={"configs": configs})
    experiments = {n: e.model_copy(update={"enabled": False}) for n, e in cfg.experiments.items() if n != experiment}
    experiments[experiment] = exp.model_copy(update={"enabled": True, "search": search})
    return cfg.model_copy(update={"experiments": experiments})


def best_yaml(experiment: str, config: Mapping[str, Any], run_uri: str) -> str:
    """The chosen configuration of ``experiment`` (an entry of the public ``search.configs``) as a YAML overlay
    an experiment config can ``extends:`` (its searched fields only, nested)."""
    import yaml

    fields: dict[str, Any] = {}
    for path, value in config["params"].items():
        node = fields
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    value = config.get("value")
    header = (f"# pianoray search: the best configuration of {experiment}, {config['id']} (validation pairwise "
              f"{value:.4f} at rung {config.get('rung')}), from run {run_uri}\n" if value is not None else
              f"# pianoray search: the best configuration of {experiment}, {config['id']}, from run {run_uri}\n")
    return header + yaml.safe_dump({"experiments": {experiment: fields}}, sort_keys=False)

