"""The staged-elimination protocol: Round 1 (screen) -> Round 2 (promote to 4-fold Ray Train) -> selection.

Everything durable goes through the run's ledger, so a rerun with the same storage and name resumes:
completed rounds are skipped, Round 1 is restored with ``Tuner.restore`` and the scheduler's decisions are
re-applied from the ledger (Ray does not restore scheduler state, #30838), Round-2 fold jobs keep their
fixed Train run names (Train V2 resumes a job only when rerun under the same name), and the ledger's
idempotent event ids mean no row is written twice.
"""

from __future__ import annotations

import functools
import json
import os
import time
import traceback
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from pianoray.config import ProtocolConfig
from pianoray.errors import PianorayError
from pianoray.feedback import Feedback, or_default
from pianoray.models import registry
from pianoray.protocol.accounting import resource_hours, scale_resources
from pianoray.protocol.decisions import Decision
from pianoray.protocol.ledger import Event, Ledger
from pianoray.protocol.monitoring import monitoring_callbacks
from pianoray.protocol.pair_counts import counts_source
from pianoray.protocol.progress import HOOKS, ProgressBoard, ProtocolCallback, Row, RunHooks
from pianoray.protocol.search import Candidate, StudyJournals
from pianoray.protocol.selection import FoldOutcome, select_winners, summarise
from pianoray.protocol.storage import RunStorage
from pianoray.records import FOLD_ROUNDS, ROUND1, ROUND2, ROUND3, FoldScore, finite

if TYPE_CHECKING:
    from pianoray.protocol.trials import BestStore
    from pianoray.training.evaluate import Predictions

DRIVER_CPU = 0.1  # a Round-2 fold trainable only launches its TorchTrainer (0 is refused by Tune)


class ProtocolError(PianorayError, RuntimeError):
    """The run cannot go on (e.g. every trial of a round errored); the message says why."""


class RunInterrupted(ProtocolError):
    """A round ended before its work did (Tune returns normally after a Ctrl-C, having saved its state):
    nothing is selected or reported as final, and rerunning the same command resumes."""


@dataclass
class RunContext:
    cfg: ProtocolConfig
    storage: RunStorage
    ledger: Ledger
    tracks: dict[str, tuple[str, str]]  # experiment -> (track, role)
    feedback: Feedback
    key: str = field(default_factory=lambda: uuid.uuid4().hex)
    session: str = field(default_factory=lambda: time.strftime("%Y%m%dT%H%M%S"))
    cpus: float = 2.0
    gpus: float = 0.0
    local: bool = True  # a head this run started (not --address): Round 2 then groups folds (fold_jobs: auto)
    # (round, experiment, fold) whose trial ended in an earlier session of this run: its trial-end and
    # resource rows are in the ledger already, and a restored Tune trial that merely ends again adds none.
    ended_before: set[tuple[str, str, int]] = field(default_factory=set)
    # Round 1's configurations of searched experiments (pianoray.protocol.search), each an experiment of cfg
    candidates: list[Candidate] = field(default_factory=list)
    journals: StudyJournals | None = None


def config_dict(cfg: ProtocolConfig) -> dict[str, Any]:
    return json.loads(cfg.model_dump_json())


def check_same_config(storage: RunStorage, cfg: ProtocolConfig) -> None:
    """A run's config is fixed at its start; resuming with another one would mix incomparable trials."""
    rel = "config.json"
    mine = config_dict(cfg)
    if storage.exists(rel):
        theirs = storage.read_json(rel)
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ProtocolError(
                f"{storage.uri}: this run was started with a different config (differs in: {', '.join(diff)}); "
                "use --fresh to start over or --name for a new run"
            )
    else:
        storage.write_json(rel, mine)


def _hooks(ctx: RunContext, board: ProgressBoard, refresh: Callable[[], None]) -> RunHooks:
    def on_epoch(round_: str, experiment: str, fold: int, epoch: int, metrics: dict[str, Any], info: dict) -> None:
        ctx.ledger.epoch(round_, experiment, fold, epoch, metrics, trial=info.get("trial"))

    def on_trial_end(round_: str, row: Row, trial: Any) -> None:
        if (round_, row.experiment, row.fold) in ctx.ended_before:
            return
        wall = row.running_seconds(row.ended or time.time())  # not the time it sat paused at a sync rung
        res = ctx.cfg.resources_for(row.experiment)
        per = {"CPU": res.cpu, "GPU": res.gpu}
        # A Round-2/3 neural fold holds workers_per_fold Train workers; a fitted reference fits in its trainable.
        neural = not is_fitted(ctx.cfg, row.experiment)
        fold_job = round_ in FOLD_ROUNDS and neural
        used = scale_resources(per, ctx.cfg.fold_round(round_).workers_per_fold) if fold_job else per
        hours = resource_hours(used, wall)
        ctx.ledger.resources(row.experiment, f"{trial.trial_id}@{ctx.session}", hours.resource,
                             hours.amount_hours, wall, round=round_, fold=row.fold)
        # A Round-2/3 trial may run several folds (fold_jobs): each fold's end is its own event.
        where = f"/fold{row.fold}" if round_ in FOLD_ROUNDS else ""
        ctx.ledger.trial(round_, row.experiment, f"{trial.trial_id}@{ctx.session}{where}", row.status.lower(),
                         fold=row.fold, epoch=row.epoch)

    def on_final(round_: str, experiment: str, fold: int, result: dict[str, Any]) -> None:
        score = FoldScore.from_report(result, experiment, fold, round_)
        ctx.ledger.append(Event(kind="fold", event_id=f"fold/{experiment}/fold{fold}", time=time.time(),
                                round=round_, experiment=experiment, fold=fold, payload=score.ledger_payload()))

    return RunHooks(board, on_epoch, on_trial_end, on_final, refresh)


def _dispatch_decision(run_key: str, decision: Decision) -> None:
    """Module-level (picklable) bridge from the scheduler to the live run's ledger and board."""
    hooks = HOOKS.get(run_key)
    if hooks is not None and hooks.on_decision is not None:
        hooks.on_decision(decision)


def _dispatch_rejudge(run_key: str, previous: Decision, new: Decision, errored: str) -> None:
    """Module-level (picklable) bridge for a re-judged decision (a leader that errored for good)."""
    hooks = HOOKS.get(run_key)
    if hooks is not None and hooks.on_rejudge is not None:
        hooks.on_rejudge(previous, new, errored)


@dataclass
class Round1History:
    """What earlier sessions of a run's Round 1 left in its ledger, for the scheduler and the trainable.

    ``decisions``: the rung decisions as they stand (re-judgements applied); ``reports``: per experiment, what
    it reported at each rung epoch (``Ledger.rung_reports``); ``errored``: leaders that errored for good
    (their rungs were re-judged); ``revived``: experiments restarted by a re-judgement, and from which rung;
    ``ended``: experiments whose Round-1 trial ended (its trial and resource rows are in the ledger)."""

    decisions: list[Decision] = field(default_factory=list)
    reports: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    errored: set[str] = field(default_factory=set)
    revived: dict[str, int] = field(default_factory=dict)
    ended: set[str] = field(default_factory=set)

    @property
    def eliminated(self) -> dict[str, int]:
        """Experiments stopped at a rung, with that rung (what ``screen_trainable`` ends at once)."""
        out: dict[str, int] = {}
        for d in self.decisions:
            if d.stopped:
                out[d.experiment] = min(out.get(d.experiment, d.rung), d.rung)
        return out

    def scheduler_kwargs(self) -> dict[str, Any]:
        return {"prior_decisions": self.decisions, "prior_reports": self.reports, "errored": self.errored,
                "revived": self.revived}


def round1_history(ledger: Ledger, *, fold: int, epoch_key: str = "rung_epoch", round_: str = ROUND1) -> Round1History:
    """Read a Round 1's history back from its ledger (empty for a new run)."""
    rejudged = ledger.rejudgements(round_)
    revived_at: dict[str, float] = {}
    revived: dict[str, int] = {}
    for e in rejudged:
        new = e.data.decision
        if e.experiment and new.get("decision") != "stop":
            revived[e.experiment] = max(revived.get(e.experiment, 0), int(new.get("rung", 0)))
            revived_at[e.experiment] = max(revived_at.get(e.experiment, e.time), e.time)
    ended_at: dict[str, float] = {}
    for e in ledger.events("trial"):
        if e.round == round_ and e.experiment is not None and e.data.state in ("done", "eliminated"):
            ended_at[e.experiment] = max(ended_at.get(e.experiment, e.time), e.time)
    return Round1History(
        decisions=[Decision.from_dict(e.payload) for e in ledger.decisions(round_)],
        reports=ledger.rung_reports(round_, fold=fold, key=epoch_key),
        errored={e.data.errored for e in rejudged if e.data.errored},
        revived=revived,
        # a trial restarted by a re-judgement after its first trial ended has not ended yet
        ended={x for x, t in ended_at.items() if t > revived_at.get(x, float("-inf"))},
    )


def is_fitted(cfg: ProtocolConfig, name: str) -> bool:
    """Whether experiment ``name`` is a fitted (non-neural) reference: no Round-1 trial, no rungs, no epochs;
    fitted once per fold in Round 2 and scored there like the neural folds."""
    return registry.get(cfg.encoder_name(name)).kind == "fitted"


def _fold_resources_fn(cfg_json: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, float]]:
    """Round 2: a neural fold's trainable only launches its TorchTrainer (DRIVER_CPU); a fitted reference's
    trainable does the fit itself, so it holds the experiment's resources."""
    cfg = ProtocolConfig.model_validate(cfg_json)

    def fn(config: dict[str, Any]) -> dict[str, float]:
        (first, *more) = config["experiments"]
        if more or not is_fitted(cfg, first):
            return {"cpu": DRIVER_CPU}
        r = cfg.resources_for(first)
        return {"cpu": r.cpu, "gpu": r.gpu}

    return fn


def _resources_fn(cfg_json: dict[str, Any]) -> Callable[[dict[str, Any]], dict[str, float]]:
    cfg = ProtocolConfig.model_validate(cfg_json)

    def fn(config: dict[str, Any]) -> dict[str, float]:
        r = cfg.resources_for(config["experiment"])
        return {"cpu": r.cpu, "gpu": r.gpu}

    return fn


def new_or_restored_tuner(storage_uri: str, trainable: Any, param_space: dict[str, Any], tune_config: Any,
                          run_config: Any) -> Any:
    """The Tuner of one round: restored when an earlier session of this run left one (resume), else new.

    ``Tuner.restore`` brings back the TuneConfig and callbacks pickled when the round first started: the
    scheduler as it was then, without its decisions (Ray does not restore scheduler state, #30838), a
    Round-2 concurrency computed for that session's cluster, and callbacks bound to the dead driver. This
    session's are put in their place (Tuner has no public API for it).
    """
    from ray import tune

    path = f"{storage_uri}/{run_config.name}"
    if not tune.Tuner.can_restore(path):
        return tune.Tuner(trainable, param_space=param_space, tune_config=tune_config, run_config=run_config)
    tuner = tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=True,
                               param_space=param_space)
    tuner._local_tuner._tune_config = tune_config
    tuner._local_tuner._run_config.callbacks = run_config.callbacks
    return tuner


def record_stored_epochs(ctx: RunContext, round_: str) -> list[str]:
    """Write the ledger's epoch events for epochs whose checkpoint is in storage but whose report never reached
    the driver (killed between a worker persisting the checkpoint and the driver handling the report). A resumed
    trial carries on from its newest stored checkpoint, so without this the ledger would miss those epochs, and
    a rung falling on one would be judged without its report. Idempotent: event ids are per epoch. Returns the
    ids written."""
    from pianoray.records import EpochRecord

    folder = ROUND1 if round_ == ROUND1 else f"{round_}-train"
    rels = [r for r in ctx.storage.list(folder) if r.endswith("/metrics.json") and "/checkpoint_" in r]
    have = {e.event_id for e in ctx.ledger.epochs(round=round_)}
    written = []
    for rel, raw in ctx.storage.read_many(rels).items():
        try:
            m = json.loads(raw)
            experiment, fold, epoch = str(m["experiment"]), int(m["fold"]), int(m["epoch"])
        except (ValueError, KeyError, TypeError):
            continue  # a half-copied checkpoint, or one written before checkpoints named their experiment
        if Ledger.epoch_id(round_, experiment, fold, epoch) not in have:
            written.append(ctx.ledger.epoch(round_, experiment, fold, epoch, EpochRecord.ledger_fields(m)).event_id)
    return written


def run_round1(ctx: RunContext, live_refresh: Callable[[], None], board: ProgressBoard) -> dict[str, Any]:
    from ray import tune

    from pianoray.protocol.scheduler import TrackGapScheduler
    from pianoray.protocol.trials import screen_trainable

    cfg = ctx.cfg
    # Fitted references take no part in Round 1: they go to Round 2 by right, where every fold is scored.
    exempt = sorted(n for n in cfg.enabled_experiments() if is_fitted(cfg, n))
    names = [n for n in cfg.enabled_experiments() if n not in exempt]
    if not names:
        return {"promoted": exempt, "eliminated": [], "errored": [], "exempt": exempt}
    record_stored_epochs(ctx, ROUND1)  # before the history: a rung is judged on what was reported there
    history = round1_history(ctx.ledger, fold=cfg.round1.fold, epoch_key="rung_epoch")
    # Stopped in an earlier session: the trainable ends such a trial at once if Tune restores it.
    eliminated = history.eliminated
    for name in eliminated:
        ctx.ended_before.add((ROUND1, name, cfg.round1.fold))
        board.row(ROUND1, name, cfg.round1.fold).status = "ELIMINATED"
    ctx.ended_before |= {(ROUND1, name, cfg.round1.fold) for name in history.ended}

    def on_decision(d: Decision) -> None:
        ctx.ledger.decision(d, round=ROUND1)
        if d.stopped:
            board.row(ROUND1, d.experiment, cfg.round1.fold).status = "ELIMINATED"
        live_refresh()

    def on_rejudge(previous: Decision, new: Decision, errored: str) -> None:
        ctx.ledger.rejudged(previous, new, errored, round=ROUND1)
        # It restarts as a new trial: a new row, whose end (trial and resource rows) is recorded again.
        row = board.row(ROUND1, new.experiment, cfg.round1.fold)
        row.status, row.started, row.ended, row.since, row.ran = "PENDING", time.time(), None, None, 0.0
        ctx.ended_before.discard((ROUND1, new.experiment, cfg.round1.fold))
        live_refresh()

    HOOKS[ctx.key].on_decision = on_decision
    HOOKS[ctx.key].on_rejudge = on_rejudge
    scheduler = TrackGapScheduler(
        rungs=cfg.round1.intermediate_rungs,
        final_rung=cfg.round1.final_rung_epoch,  # every trial's last report: the decision at the end of the round
        gap=cfg.round1.gap,
        sync=cfg.round1.mode == "sync",
        noise_guard=cfg.round1.noise_guard,
        on_decision=functools.partial(_dispatch_decision, ctx.key),
        on_rejudge=functools.partial(_dispatch_rejudge, ctx.key),
        **history.scheduler_kwargs(),
        seed=cfg.seed,
        n_boot=cfg.round1.n_boot,
        epoch_key="rung_epoch",  # supervised epochs: A2's self-supervised stage is not judged
        # the trials' validation pair counts, which the trainable writes to the ledger before each report
        pair_counts=counts_source(ctx.storage, ROUND1, cfg.round1.fold),
    )
    tracks = ctx.tracks
    param_space = {
        "experiment": tune.grid_search(names),
        "track": tune.sample_from(lambda config: tracks[config["experiment"]][0]),
        "role": tune.sample_from(lambda config: tracks[config["experiment"]][1]),
        "protocol": config_dict(cfg),
        # where the trainable records its pair counts (trials.round1_counts_recorder)
        "run_storage": ctx.storage.storage_uri,
        "run_name": ctx.storage.name,
    }
    trainable = tune.with_resources(tune.with_parameters(screen_trainable, eliminated=eliminated),
                                    _resources_fn(config_dict(cfg)))
    callbacks = [ProtocolCallback(ctx.key, ROUND1, cfg.round1.epochs), *monitoring_callbacks(cfg, ctx.storage, ROUND1)]
    run_config = tune.RunConfig(
        name=ROUND1,
        storage_path=ctx.storage.uri,
        callbacks=callbacks,
        verbose=0,
        failure_config=tune.FailureConfig(max_failures=cfg.round1.max_failures),
        checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
    )
    tune_config = tune.TuneConfig(scheduler=scheduler, reuse_actors=True, num_samples=1)
    # A trial stopped at a rung in an earlier session, which Tune restores as unfinished (its snapshot lagged the
    # kill), ends at once without reporting (screen_trainable); Tune's strict check would reject that empty
    # final result for lacking the scheduler's metric and fail the run. Every epoch report carries the metric
    # (EpochRecord), and the scheduler knows the trial was stopped (prior decisions), so the check only misfires.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    try:
        grid = new_or_restored_tuner(ctx.storage.uri, trainable, param_space, tune_config, run_config).fit()
    except Exception as e:
        if scheduler.failure is not None:  # the noise guard could not judge: never a silent point rule
            raise ProtocolError(f"round 1 stopped: {scheduler.failure}") from e
        raise

    outcomes = trial_outcomes(grid)
    survivors, stopped, errored = round1_outcome(outcomes, scheduler.decisions)
    if unfinished := round1_unfinished(outcomes, survivors, round1_finished(ctx.ledger)):
        raise RunInterrupted(f"round 1 interrupted before {', '.join(unfinished)} finished its budget; nothing "
                             "was promoted. Rerun the same command to resume.")
    if not survivors:
        raise ProtocolError(f"round 1 ended with no survivor (errored: {errored or 'none'}); see the ledger")
    summary = {"promoted": sorted(survivors + exempt), "eliminated": stopped, "errored": errored, "exempt": exempt}
    if ctx.candidates:
        summary = _with_search(ctx, summary, scheduler.decisions)
    return summary


def _with_search(ctx: RunContext, summary: dict[str, Any], decisions: list[Decision]) -> dict[str, Any]:
    """Round 1's summary with its searched experiments resolved: every candidate's outcome told to its study
    and listed under ``search``; each experiment promoted under its own name with its best surviving
    configuration (``round2.configs_per_experiment`` > 1: the next ones under theirs), or eliminated when none
    of its configurations survived."""
    from pianoray.protocol import search

    cfg = ctx.cfg
    stops: dict[str, int] = {}
    for d in decisions:
        if d.stopped:
            stops[d.experiment] = min(stops.get(d.experiment, d.rung), d.rung)
    reports = ctx.ledger.rung_reports(ROUND1, fold=cfg.round1.fold, key="rung_epoch")
    results = search.outcomes(ctx.candidates, cfg.round1.intermediate_rungs, cfg.round1.final_rung_epoch, reports,
                              stops, summary["errored"])
    if ctx.journals is not None:
        search.tell(ctx.journals, results)
    promoted = search.promotions(results, cfg.round2.configs_per_experiment)
    of = {c.name: c.experiment for c in ctx.candidates}
    experiments = sorted(set(of.values()))
    kept = [n for n in summary["promoted"] if n not in of]
    return {**summary, "promoted": sorted(kept + list(promoted)),
            "eliminated": sorted(summary["eliminated"] + [x for x in experiments if x not in promoted]),
            "search": {x: {"configs": [o.to_json() for o in results if o.candidate.experiment == x],
                           "promoted": {u: c for u, c in promoted.items() if of[c] == x},
                           "importance": search.importances(ctx.journals, x) if ctx.journals else None}
                       for x in experiments}}


def round2_config(cfg: ProtocolConfig, round1: dict[str, Any]) -> ProtocolConfig:
    """Round 2's config: Round 1's, with each searched experiment's promoted configurations in place."""
    from pianoray.protocol.search import with_promoted

    promoted = {u: c for s in (round1.get("search") or {}).values() for u, c in s.get("promoted", {}).items()}
    return with_promoted(cfg, promoted) if promoted else cfg


@dataclass(frozen=True)
class TrialOutcome:
    """One Tune trial at the end of a round: its config (as Tune resolved it), its last report (empty when it
    reported nothing in this session) and its error, if it failed for good."""

    config: dict[str, Any]
    metrics: dict[str, Any]
    error: BaseException | None


def trial_outcomes(grid: Any) -> list[TrialOutcome]:
    """A Tune ``ResultGrid`` as :class:`TrialOutcome` records, each config taken from the trial itself.

    A result carries its config only inside its last report, so a trial that reported nothing in this session (one
    stopped at a rung in an earlier session, restored and ended at once; a fold job that failed on start) has
    none; and its ``params.json`` in storage is no substitute: the driver uploads it on a timer, which a kill -9
    can beat. The trials the grid was built from (``ExperimentAnalysis.trials``, in the grid's order) hold every
    config, whatever was reported or synced."""
    trials = grid._experiment_analysis.trials  # Ray keeps the trials private; ResultGrid builds its results from them
    return [TrialOutcome(dict(trial.config), dict(result.metrics or {}), result.error)
            for trial, result in zip(trials, grid, strict=True)]


def newest_trials(results: Iterable[TrialOutcome]) -> dict[str, TrialOutcome]:
    """Each Round-1 experiment's newest trial: an experiment restarted after a re-judgement has several, the newest
    (``revived_at``, the rung it restarted from) stands for it."""
    from pianoray.protocol.scheduler import REVIVED_KEY

    def revived_at(result: TrialOutcome) -> int:
        return int(result.config.get(REVIVED_KEY) or 0)

    newest: dict[str, TrialOutcome] = {}
    for result in results:
        name = result.config["experiment"]
        if name not in newest or revived_at(result) >= revived_at(newest[name]):
            newest[name] = result
    return newest


def round1_unfinished(results: Iterable[TrialOutcome], survivors: list[str],
                      finished: Iterable[str] = ()) -> list[str]:
    """Survivors whose newest trial's last report is not its last epoch (budget spent or early stopped):
    Tune ended without them finishing, as it does after a Ctrl-C. ``finished``: experiments the ledger has
    seen finish (:func:`round1_finished`), whatever this session's Tune results say: a survivor that finished
    in an earlier session, restored by Tune and ended at once, reports nothing in this one."""
    last = newest_trials(results)
    done = set(finished)
    return sorted(n for n in survivors if n in last and n not in done and not last[n].metrics.get("stop"))


def round1_finished(ledger: Ledger) -> set[str]:
    """Experiments with a Round-1 epoch recorded as their last (budget spent or early stopped)."""
    return {e.experiment for e in ledger.epochs(round=ROUND1) if e.experiment and e.data.metrics.get("stop")}


def round1_outcome(results: Iterable[TrialOutcome],
                   decisions: list[Decision]) -> tuple[list[str], list[str], list[str]]:
    """(survivors, eliminated, errored) of Round 1, sorted, from its trials' outcomes and the decisions as they
    stand, each experiment judged by its newest trial (:func:`newest_trials`). Eliminated: a stop decision (in this
    session or an earlier one); errored: its trial errored for good; survivors: every other."""
    stopped = {d.experiment for d in decisions if d.stopped}
    latest = newest_trials(results)
    errored = sorted(n for n, r in latest.items() if r.error is not None)
    survivors = sorted(n for n, r in latest.items() if r.error is None and n not in stopped)
    return survivors, sorted(stopped), errored


def run_round2(ctx: RunContext, survivors: list[str]) -> None:
    run_fold_jobs(ctx, ROUND2, survivors)


def run_fold_jobs(ctx: RunContext, round_: str, names: list[str]) -> None:
    """Round 2 (the survivors) or Round 3 (the fusions): every fold of each of ``names``, as Ray Train jobs
    launched from Tune function trainables. A Round-2 job trains one experiment (``round2.fold_jobs`` groups its
    folds); a Round-3 job every fusion on its folds (``round3.fold_jobs``: on a local head the folds split over
    the jobs that run at once), so that Round 3 pays Train's start-up once per job slot, not once per fusion."""
    from ray import tune

    from pianoray.protocol.trials import fold_trainable, unit_key

    cfg = ctx.cfg
    rcfg = cfg.fold_round(round_)
    folds = list(range(rcfg.folds))
    record_stored_epochs(ctx, round_)
    done = {(e.experiment, e.fold) for e in ctx.ledger.events("fold") if e.round in (round_, None)}
    ctx.ended_before |= {(round_, n, int(k)) for n, k in done}
    board = HOOKS[ctx.key].board
    for n, k in sorted(done):
        if n in names:
            board.scored_before(round_, n, int(k), rcfg.epochs, ctx.ledger.epochs(n, round=round_, fold=int(k)))
    todo = [n for n in names if any((n, k) not in done for k in folds)]
    if not todo:
        return
    per_job_cpu = max(cfg.resources_for(n).cpu for n in todo) * rcfg.workers_per_fold + DRIVER_CPU
    per_job_gpu = max(cfg.resources_for(n).gpu for n in todo) * rcfg.workers_per_fold
    concurrent = int(ctx.cpus // per_job_cpu) if ctx.cpus else 1
    if per_job_gpu > 0 and ctx.gpus:
        concurrent = min(concurrent, int(ctx.gpus // per_job_gpu))
    # Round 3's jobs name every fusion, finished or not (``finished`` skips what is scored): a resumed session
    # then asks for the same jobs, under the same Train run names, whatever it has left to do.
    jobs = [names] if round_ == ROUND3 else [[n] for n in todo]
    param_space = {
        "experiments": tune.grid_search(jobs),
        "folds": tune.grid_search(rcfg.fold_groups(ctx.local, slots=max(1, concurrent))),
        "round": round_,
        "protocol": config_dict(cfg),
        "storage_path": ctx.storage.uri + "/" + round_ + "-train",
        # where each scored fold's best model is kept (trials.BestStore)
        "run_storage": ctx.storage.storage_uri,
        "run_name": ctx.storage.name,
    }
    # A fold scored in an earlier session ends at once if Tune restores its trial (a stale snapshot).
    finished = tuple(sorted(unit_key(n, k) for n, k in done))
    trainable = tune.with_resources(tune.with_parameters(fold_trainable, finished=finished),
                                    _fold_resources_fn(config_dict(cfg)))
    callbacks = [ProtocolCallback(ctx.key, round_, rcfg.epochs), *monitoring_callbacks(cfg, ctx.storage, round_)]
    # reuse_actors: a fold launcher keeps its process (and its cached corpus, for scoring) for the next fold.
    tune_config = tune.TuneConfig(num_samples=1, max_concurrent_trials=max(1, concurrent), reuse_actors=True)
    run_config = tune.RunConfig(name=round_, storage_path=ctx.storage.uri, callbacks=callbacks, verbose=0,
                                failure_config=tune.FailureConfig(max_failures=rcfg.max_failures))
    grid = new_or_restored_tuner(ctx.storage.uri, trainable, param_space, tune_config, run_config).fit()
    if failed := fold_job_failures(trial_outcomes(grid)):
        raise ProtocolError(f"{round_} fold jobs failed:\n" + "\n".join(failed))
    if missing := round2_missing(ctx.ledger, names, folds, round_):
        total = len(names) * len(folds)
        which = round_.replace("round", "round ")
        raise RunInterrupted(f"{which} interrupted: {total - len(missing)} of {total} folds scored (missing e.g. "
                             f"{missing[0][0]} fold {missing[0][1]}); nothing was selected. Rerun the same command "
                             "to resume.")


def fold_job_failures(outcomes: Iterable[TrialOutcome]) -> list[str]:
    """One line per fold job that failed for good: the experiments and folds it held, and its error."""
    return [f"{', '.join(o.config['experiments'])} folds {', '.join(map(str, o.config['folds']))}: {o.error}"
            for o in outcomes if o.error is not None]


def run_round3(ctx: RunContext, winners: dict[str, str | None]) -> dict[str, Any]:
    """Round 3: each of ``round3.fusions`` over the winners of the ``round3.fuse`` tracks, every fold, as fold
    jobs like Round 2's. Skipped (the summary says why) when a fused track has no winner. A fusion that reads the
    score (F-score) is left out, the summary's ``not_run`` saying why, when a segment Round 3 reads has no score
    MIDI (:func:`score_missing`)."""
    from pianoray.protocol.trials import START_DIR, BestStore
    from pianoray.training.data import ExperimentData
    from pianoray.training.fusion import fusion_experiment, initial_state, write_state

    cfg, r3 = ctx.cfg, ctx.cfg.round3
    missing = [t for t in r3.fuse if not winners.get(t)]
    if missing:
        return {"skipped": f"no {' and no '.join(missing)} winner to fuse", "experiments": []}
    parts = {t: str(winners[t]) for t in r3.fuse}
    store, data = BestStore(ctx.storage.storage_uri, ctx.storage.name), ExperimentData.from_config(cfg)
    not_run = {f: why for f in r3.fusions if (why := score_missing(f, data.corpus))}
    for f, why in not_run.items():
        or_default(ctx.feedback).say(f"round 3: {f} not run: {why}")
    fusions = [f for f in r3.fusions if f not in not_run]
    starts = ctx.storage.driver_dir(START_DIR)
    experiments = dict(cfg.experiments)
    for fusion in fusions:
        exp = fusion_experiment(cfg, fusion, parts)
        with_exp = cfg.model_copy(update={"experiments": {**cfg.experiments, fusion: exp}})
        paths = {}
        for k in range(r3.folds):
            path = starts / fusion / f"fold{k}.pt"
            if not path.is_file():  # written once; a resumed run finds it (and would write the same state)
                write_state(initial_state(with_exp, fusion, {t: store.weights(w, k) for t, w in parts.items()},
                                          data), path)
            paths[k] = path
        experiments[fusion] = exp.model_copy(update={"init_encoder_folds": paths})
        publish_starts(cfg.model_copy(update={"experiments": {fusion: experiments[fusion]}}), ctx.storage, [fusion])
        spec = registry.get(fusion)
        ctx.tracks[fusion] = (spec.track, spec.role)
    ctx.cfg = cfg.model_copy(update={"experiments": experiments})
    ctx.ledger.round_started(ROUND3, {f: {"track": ctx.tracks[f][0], "role": ctx.tracks[f][1], "fuses": parts}
                                      for f in fusions})
    record_track_specs(ctx.storage, registry.tracks(("fusion",)))
    run_fold_jobs(ctx, ROUND3, fusions)
    return {"experiments": fusions, "fuses": parts, "not_run": not_run}


def record_track_specs(storage: RunStorage, specs: Iterable[Any]) -> None:
    """Add ``specs`` (registry ``TrackSpec``s) to ``run.json``'s ``track_specs`` where it lacks them: Round 3
    records the fusion track when it starts, so that reading the run (its comparison table's figures, its
    order) needs no registry. Idempotent."""
    meta = storage.read_json("run.json")
    recorded = meta.get("track_specs") or []
    new = [t.to_json() for t in specs if t.name not in {r.get("name") for r in recorded}]
    if new:
        storage.write_json("run.json", {**meta, "track_specs": [*recorded, *new]})


def score_missing(fusion: str, corpus: Any) -> str | None:
    """Why ``fusion`` cannot run on ``corpus``: a fusion that reads the score (``reads_score``: F-score) needs a
    score MIDI for every segment Round 3 trains or scores on (every tier's); None when it can run."""
    from pianoray.data.loaders import segments_without_score

    if not getattr(registry.get(fusion).config_cls, "reads_score", False):
        return None
    missing, total = segments_without_score(corpus), sum(len(corpus.manifest(t)) for t in corpus.tiers)
    if not missing:
        return None
    return (f"{len(missing)} of {total} segments have no score MIDI (e.g. {missing[0]}); it reads the score of "
            "every segment it trains and is scored on")


def fusion_verdict(ledger: Ledger, cfg: ProtocolConfig, round3: dict[str, Any], winners: dict[str, str | None],
                   store: BestStore | None = None) -> dict[str, Any]:
    """What Round 3 concluded: each fusion against the best single encoder it fuses (the winner with the higher
    mean validation pairwise accuracy) on the test parts, paired over passages across folds, on pairwise accuracy
    and on R2; the fusion track's winner; and the run's final model: a fusion only if one beats the best single
    encoder on pairwise accuracy with its whole CI above zero (the best such by validation), else that single
    encoder, with the reason, and the final model against the strongest reference of the fused tracks on the
    test parts (``final.versus_references``: reported, never used to choose). With ``store`` (the folds' kept
    test predictions): the R2 gaps' CIs, the correlation of the fused winners' errors, and each gated fusion's
    mean gate per dimension. ``planted``: each fusion's and each fused winner's accuracy on the planted
    score-conditioned pairs (:func:`planted_figure`, Round 3's folds); ``difficulty``: the difficulty rho of each
    fusion's head beside its probe's, and the fused winners' probe (:func:`difficulty_figures`); ``not_run``: the
    fusions Round 3 left out, each with why."""
    from pianoray.protocol.selection import fold_counts, paired_gap, verdict, versus_references
    from pianoray.protocol.view import RunView

    singles = [w for w in (winners.get(t) for t in cfg.round3.fuse) if w]
    fusions = list(round3.get("experiments", []))
    references = [n for n in cfg.enabled_experiments() if registry.get(cfg.encoder_name(n)).role == "reference"
                  and registry.get(cfg.encoder_name(n)).track in cfg.round3.fuse]
    outcomes = RunView.read(ledger).fold_outcomes(fusions + singles + references)
    summaries = {n: summarise(f) for n, f in outcomes.items()}

    def val(name: str | None) -> float:
        v = ((summaries.get(name) or {}).get("pairwise_accuracy") or {}).get("mean")
        return float("-inf") if v is None else float(v)

    single = max(singles, key=val) if singles else None
    comparisons = {}
    for f in fusions:
        gap = paired_gap(fold_counts(outcomes.get(f), "test"), fold_counts(outcomes.get(single), "test"),
                         n_boot=cfg.selection.n_boot, seed=cfg.seed) if single else None
        r2 = [((summaries.get(n) or {}).get("test") or {}).get("r2", {}).get("mean") for n in (f, single)]
        comparisons[f] = {**(gap or {"gap_points": None, "ci_points": [None, None]}), "versus": single,
                          "verdict": verdict((gap or {}).get("ci_points")),
                          "r2_gap": r2[0] - r2[1] if None not in r2 else None, "r2_ci": [None, None],
                          "r2_verdict": None}
        if single and store is not None:
            comparisons[f].update(paired_r2(store, f, single, n_boot=cfg.selection.n_boot, seed=cfg.seed))
    fusion_sel = select_winners({f: summaries[f] for f in fusions if f in summaries},
                                {f: ("fusion", "candidate") for f in fusions if f in summaries},
                                tie_tolerance=cfg.selection.tie_tolerance, folds=outcomes,
                                n_boot=cfg.selection.n_boot, seed=cfg.seed) if fusions else {"winners": {}}
    beating = [f for f, c in comparisons.items() if c["verdict"] == "beats"]
    if beating:
        final = max(beating, key=val)
        c = comparisons[final]
        reason = (f"{final} beats {single} on the test parts by {c['gap_points']:+.1f} points of pairwise accuracy "
                  f"(95% CI {c['ci_points'][0]:+.1f} to {c['ci_points'][1]:+.1f})")
    else:
        final = single
        told = "; ".join(f"{f} {c['gap_points']:+.1f} ({c['ci_points'][0]:+.1f} to {c['ci_points'][1]:+.1f})"
                         if c["ci_points"][0] is not None else f"{f}: no paired figure"
                         for f, c in comparisons.items())
        reason = (round3.get("skipped") or "") + (
            f"no fusion beats {single} on the test parts with a CI above zero: {told}" if fusions else "")
    against = (versus_references(final, [r for r in references if r in outcomes], summaries, outcomes,
                                 n_boot=cfg.selection.n_boot, seed=cfg.seed) if final else None)
    gates = {f: _mean_over_folds([o.test.get("gates") for o in outcomes.get(f, [])]) for f in fusions}
    fused = [w for w in (winners.get(t) for t in cfg.round3.fuse) if w]
    r3_folds = {n: [o for o in outcomes.get(n, []) if o.fold < (cfg.round3.folds or 0)] for n in fusions + singles}
    planted = {n: planted_figure(r3_folds[n], n_boot=cfg.selection.n_boot, seed=cfg.seed) for n in fusions + singles}
    planted_why = next((o.test.get("planted_why") for n in fusions + singles for o in outcomes.get(n, [])
                        if o.test.get("planted_why")), None)
    errors = (winner_error_correlation(store, fused, n_boot=cfg.selection.n_boot, seed=cfg.seed)
              if store is not None and len(fused) == 2 else None)
    return {"fuses": round3.get("fuses", {}), "skipped": round3.get("skipped"), "best_single": single,
            "comparisons": comparisons, "error_correlation": errors,
            "gates": {f: g for f, g in gates.items() if g is not None},
            "planted": {n: p for n, p in planted.items() if p is not None},
            "difficulty": {n: d for n in fusions + singles if (d := difficulty_figures(r3_folds[n]))},
            "planted_why": None if any(planted.values()) else planted_why,
            "not_run": dict(round3.get("not_run") or {}),
            "winners": fusion_sel.get("winners", {}),
            "summaries": {n: summaries[n] for n in fusions + singles if n in summaries},
            "selection": {k: v for k, v in fusion_sel.items() if k != "winners"},
            "final": {"model": final, "kind": "fusion" if final in fusions else "single", "reason": reason,
                      "versus_references": against}}


def _fold_predictions(store: BestStore, experiment: str) -> dict[int, Predictions]:
    """fold -> ``experiment``'s kept test predictions, restricted to its labelled segments."""
    out = {}
    for fold in store.folds(experiment):
        p = store.test_predictions(experiment, fold)
        if p is not None:
            out[fold] = p.subset([s for s, has in zip(p.segment_ids, p.has_labels) if has])
    return out


def _aligned_folds(store: BestStore, a: str, b: str) -> list[tuple[Predictions, Predictions]]:
    """Per fold both have predictions for: (a, b) on the labelled test segments both scored, in one order."""
    pa, pb = _fold_predictions(store, a), _fold_predictions(store, b)
    out = []
    for fold in sorted(set(pa) & set(pb)):
        shared = [s for s in pa[fold].segment_ids if s in set(pb[fold].segment_ids)]
        if len(shared) >= 2:
            out.append((pa[fold].subset(shared), pb[fold].subset(shared)))
    return out


def paired_r2(store: BestStore, a: str, b: str, *, n_boot: int, seed: int) -> dict[str, Any]:
    """R2(a) - R2(b) on the test parts, per fold on the segments both scored, with the paired bootstrap CI over
    passages (:func:`pianoray.objectives.metrics.paired_r2_gap`); {} when no fold has both's predictions."""
    from pianoray.objectives.metrics import paired_r2_gap
    from pianoray.protocol.selection import verdict

    sets = [(x.labels, x.regression, y.regression, x.groups) for x, y in _aligned_folds(store, a, b)]
    if not sets:
        return {}
    gap, ci = paired_r2_gap(sets, n_boot=n_boot, seed=seed)
    r2_ci = [finite(v) for v in ci]
    return {"r2_gap": gap, "r2_ci": r2_ci, "r2_verdict": verdict(r2_ci)}


def winner_error_correlation(store: BestStore, pair: list[str], *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """Pearson r between the two fused winners' test errors (regression head - label) on the segments both
    scored, across folds, per dimension and their mean, with a bootstrap CI over passages; None without
    predictions. A fusion's room to gain: the lower, the more the two modalities err differently."""
    from pianoray.objectives.metrics import error_correlation

    folds = _aligned_folds(store, pair[0], pair[1])
    if not folds:
        return None
    err = [np.concatenate([p.regression - p.labels for p in side]) for side in zip(*folds)]
    groups = np.concatenate([np.array([f"{k}:{g}" for g in x.groups], dtype=object) for k, (x, _) in enumerate(folds)])
    r = error_correlation(err[0], err[1], groups, n_boot=n_boot, seed=seed)
    return {"between": list(pair), "mean": finite(r.mean), "ci": [finite(v) for v in r.ci],
            "per_dim": [finite(v) for v in r.per_dim], "segments": int(r.n), "folds": len(folds)}


def planted_figure(folds: list[FoldOutcome], *, n_boot: int, seed: int) -> dict[str, Any] | None:
    """Accuracy on the planted score-conditioned pairs (chance 0.5), pooled over ``folds``: each fold's pairs
    are those of its own test passages (``planted_*`` of its test scores), so every passage counts once; the CI
    resamples passages (:func:`pianoray.objectives.metrics.planted_accuracy`). ``verdict`` compares the CI with
    chance. None when no fold scored a pair."""
    from pianoray.objectives.metrics import planted_accuracy

    scored = [o.test for o in folds if o.test.get("planted_passages")]
    if not scored:
        return None
    correct = [c for t in scored for c in t["planted_correct"]]
    r = planted_accuracy(correct, [k for t in scored for k in t["planted_pairs"]], n_boot=n_boot, seed=seed)
    ci = [finite(v) for v in r.ci]
    above = "above chance" if ci[0] is not None and ci[0] > 0.5 else None
    below = "below chance" if ci[1] is not None and ci[1] < 0.5 else None
    return {"accuracy": finite(r.mean), "ci": ci, "pairs": int(r.n), "passages": int(r.n_groups or 0),
            "folds": len(scored), "verdict": above or below or "not distinguishable from chance"}


def difficulty_figures(folds: list[FoldOutcome]) -> dict[str, Any] | None:
    """Difficulty rho over ``folds`` (the mean of the folds that have it): ``head``, a difficulty head's on the
    test parts (None for a model without one), and ``probe``, the linear probe's on z; each with the number of
    folds it is the mean of. None when neither was scored."""

    def mean(key: str) -> tuple[float | None, int]:
        values = [v for o in folds if (v := finite(o.test.get(key))) is not None]
        return (float(np.mean(values)) if values else None), len(values)

    (head, head_folds), (probe, probe_folds) = mean("difficulty_head_rho"), mean("difficulty_rho")
    if head is None and probe is None:
        return None
    return {"head": head, "head_folds": head_folds, "probe": probe, "probe_folds": probe_folds}


def _mean_over_folds(values: list[Any]) -> list[float] | None:
    rows = [v for v in values if isinstance(v, list) and v]
    return [float(x) for x in np.mean(np.array(rows, dtype=float), axis=0)] if rows else None


def round2_missing(ledger: Ledger, survivors: list[str], folds: list[int], round_: str = ROUND2
                   ) -> list[tuple[str, int]]:
    """(experiment, fold) pairs of ``round_`` with no scored fold event in the ledger."""
    done = {(e.experiment, int(e.fold)) for e in ledger.events("fold") if e.round in (round_, None)}
    return [(n, k) for n in survivors for k in folds if (n, k) not in done]


def round2_summaries(ledger: Ledger, survivors: list[str]) -> dict[str, dict[str, Any]]:
    """Per experiment, the folds' best validation epochs (from the epoch events) and test scores."""
    return {name: summarise(folds) for name, folds in round2_outcomes(ledger, survivors).items()}


def round2_outcomes(ledger: Ledger, survivors: list[str]) -> dict[str, list[FoldOutcome]]:
    """Per experiment with at least one fold: its folds' outcomes, as the run's read model gives them
    (:meth:`pianoray.protocol.view.RunView.fold_outcomes`)."""
    from pianoray.protocol.view import RunView

    return RunView.read(ledger).fold_outcomes(survivors)


def draw_configurations(cfg: ProtocolConfig, run_storage: RunStorage, ledger: Ledger,
                        feedback: Feedback) -> tuple[StudyJournals | None, list[Candidate]]:
    """Round 1's configurations of every searched experiment, from their Optuna studies (drawn on the first
    session, read back on the next), each recorded in the ledger (a ``search`` event per experiment); the
    configurations become experiments of Round 1's config (:func:`pianoray.protocol.search.with_candidates`)."""
    from pianoray.protocol import search

    if not search.searched(cfg):
        return None, []
    journals = search.StudyJournals(run_storage, url=cfg.round1.study_storage)
    candidates = search.draw_all(cfg, journals)
    for name in search.searched(cfg):
        mine = [c.to_json() for c in candidates if c.experiment == name]
        space = {k: v.model_dump(exclude_defaults=True) for k, v in cfg.experiments[name].search.space.items()}
        ledger.append(Event(kind="search", event_id=f"search/{name}", time=time.time(), experiment=name,
                            payload={"experiment": name, "configs": mine, "space": space}))
        feedback.say(f"{name}: {len(mine)} configurations to screen ({', '.join(space)}); study {journals.where(name)}")
    return journals, candidates


def pretrain_encoders(cfg: ProtocolConfig, feedback: Feedback | None = None, ledger: Ledger | None = None) -> ProtocolConfig:
    """Before Round 1: pretrain every enabled experiment that has a pretraining task, once (or once per fold
    under ``pretrain.per_fold``; cached by corpus hash and config, so a resumed run loads it), and point its
    trials at the weights. The ledger gets a ``pretrain`` event per experiment: what MIDI it read and whether
    that included the evaluated folds' validation/test MIDI, which the report states."""
    from pianoray.training.data import ExperimentData
    from pianoray.training.runner import pretrain_for_folds

    names = [n for n in cfg.enabled_experiments() if registry.get(cfg.encoder_name(n)).pretrain is not None]
    if not names:
        return cfg
    data = ExperimentData.from_config(cfg)
    folds = sorted({cfg.round1.fold, *range(cfg.round2.folds)})
    for name in names:
        cfg, record = pretrain_for_folds(cfg, name, data, feedback, folds)
        if record is not None and ledger is not None:
            ledger.append(Event(kind="pretrain", event_id=f"pretrain/{name}", time=time.time(),
                                experiment=name, payload=record))
    return cfg


def publish_starts(cfg: ProtocolConfig, storage: RunStorage, names: list[str]) -> None:
    """Copy the encoder weights each of ``names`` starts from (pretrained weights, a fusion's starting states:
    files on the driver's disk) into the run's storage, once, where a trial on another node fetches them
    (``trials.local_starts``). A file already inside a local run's folder is already there."""
    from pianoray.protocol.trials import start_files, start_rel

    for name in names:
        for fold, path in start_files(cfg, name).items():
            rel = start_rel(name, fold)
            if not storage.exists(rel):
                storage.write_bytes(rel, path.read_bytes())


def record_folds(cfg: ProtocolConfig, run_storage: RunStorage) -> dict[str, Any]:
    """Store the run's folds (``folds.json``, what every trial regenerates from the config) and return
    how they group segments: ``{"unit", "statement"}`` for run.json and the report."""
    from pianoray.data.folds import describe_unit
    from pianoray.training.data import ExperimentData

    folds = ExperimentData.from_config(cfg).folds
    if not run_storage.exists("folds.json"):
        run_storage.write_json("folds.json", folds.to_json())
    return {"unit": folds.unit, "statement": describe_unit(folds)}


def label_names(cfg: ProtocolConfig) -> list[str]:
    from pianoray.data.corpus import open_corpus
    from pianoray.data.taxonomy import Taxonomy

    taxonomy = Taxonomy.load(cfg.data.taxonomy) if cfg.data.taxonomy else Taxonomy.default()
    return list(open_corpus(cfg.data).labels(cfg.data.labels, taxonomy)[0])


def run_protocol(
    cfg: ProtocolConfig,
    *,
    storage: str | None = None,
    name: str | None = None,
    fresh: bool = False,
    address: str | None = None,
    feedback: Feedback | None = None,
    until: str = ROUND2,
) -> dict[str, Any]:
    """Run (or resume) the protocol and return the run results (the report's input). An exception that is
    not the user's to fix (not a ``PianorayError``) is recorded in the ledger as a ``crash`` event, then
    re-raised. ``feedback`` hears the run's lines and draws its live board (None: logged, no board).
    ``until=ROUND1`` stops after Round 1 (``pianoray search``): nothing is selected."""
    feedback = or_default(feedback)
    run_storage = RunStorage(storage or cfg.storage, name or cfg.name)
    if fresh:
        for rel in run_storage.list(""):
            run_storage.delete(rel)
        local = run_storage.local_dir()
        if local is not None and local.exists():
            import shutil

            shutil.rmtree(local)
        StudyJournals(run_storage, url=cfg.round1.study_storage).clear()
    check_same_config(run_storage, cfg)
    ledger = Ledger(run_storage)
    try:
        return _run(cfg, run_storage, ledger, address, feedback, until)
    except PianorayError:
        raise  # the user's to fix (or an interruption); its one line says what
    except Exception as e:
        # A bug: the CLI shows its traceback; the ledger keeps it, so that the run's record says how it ended.
        ledger.append(Event(kind="crash", event_id=f"crash/{time.strftime('%Y%m%dT%H%M%S')}", time=time.time(),
                            payload={"type": type(e).__name__, "message": str(e)[:2000],
                                     "traceback": traceback.format_exc()[-8000:]}))
        raise


def _run(cfg: ProtocolConfig, run_storage: RunStorage, ledger: Ledger, address: str | None,
         feedback: Feedback, until: str = ROUND2) -> dict[str, Any]:
    """The protocol from pretraining to selection (:func:`run_protocol` without its crash record)."""
    from pianoray.protocol.session import start_ray
    from pianoray.protocol.view import build_results

    journals, candidates = draw_configurations(cfg, run_storage, ledger, feedback)
    if candidates:
        from pianoray.protocol.search import with_candidates

        cfg = with_candidates(cfg, candidates)
    cfg = pretrain_encoders(cfg, feedback, ledger)
    publish_starts(cfg, run_storage, list(cfg.experiments))
    tracks = {}
    for n in cfg.enabled_experiments() + sorted({c.experiment for c in candidates}):
        spec = registry.get(cfg.encoder_name(n))
        tracks[n] = (spec.track, spec.role)

    session = start_ray(address)
    feedback.say(f"run {run_storage.uri}")
    if session.dashboard_url:
        feedback.say(f"Ray dashboard: {session.dashboard_url}  (Train run pages; per-trial progress is below)")
    ctx = RunContext(cfg, run_storage, ledger, tracks, feedback, cpus=session.cpus, gpus=session.gpus,
                     local=session.local, candidates=candidates, journals=journals)
    folds = record_folds(cfg, run_storage)
    feedback.say(folds["statement"])
    if not run_storage.exists("run.json"):
        run_storage.write_json("run.json", {"name": run_storage.name, "config": cfg.name,
                                            "dimensions": label_names(cfg), "tracks": tracks,
                                            # Rounds 1-2's tracks; Round 3 adds the fusion track's
                                            # (record_track_specs)
                                            "track_specs": [t.to_json() for t in registry.tracks(("neural", "fitted"))],
                                            "dashboard": session.dashboard_url, "folds": folds})
    board = ProgressBoard(tracks)
    title = f"pianoray · {run_storage.name}"
    with feedback.live(lambda: board.render(title)) as redraw:
        refresh = _throttled(redraw)
        HOOKS[ctx.key] = _hooks(ctx, board, refresh)
        try:
            experiments = {n: {"track": t, "role": r} for n, (t, r) in tracks.items()}
            if ledger.is_round_finished(ROUND1):
                r1 = ledger.round_summary(ROUND1) or {}
                feedback.say(f"round 1 already finished: promoted {', '.join(r1.get('promoted', []))}")
            else:
                ledger.round_started(ROUND1, {n: experiments[n] for n in cfg.enabled_experiments()
                                              if not is_fitted(cfg, n)})
                r1 = run_round1(ctx, refresh, board)
                ledger.round_finished(ROUND1, r1)
                ledger.compact(ROUND1)
            survivors = list(r1["promoted"])
            ctx.cfg = cfg = round2_config(cfg, r1)
            if until != ROUND1 and ledger.is_round_finished(ROUND2):
                feedback.say("round 2 already finished")
            elif until != ROUND1:
                ledger.round_started(ROUND2, {n: experiments[n] for n in survivors})
                run_round2(ctx, survivors)
                ledger.round_finished(ROUND2, {"experiments": survivors})
                ledger.compact(ROUND2)
            redraw()
        finally:
            HOOKS.pop(ctx.key, None)

    if until == ROUND1:
        return build_results(ledger, cfg, run_storage)
    if ledger.selected() is None:
        outcomes = round2_outcomes(ledger, survivors)
        summaries = {n: summarise(f) for n, f in outcomes.items()}
        sel = select_winners(summaries, {n: tracks[n] for n in summaries},
                             veto=cfg.selection.robustness_veto,
                             veto_tracks=[t.name for t in registry.tracks() if t.robustness_veto],
                             tie_tolerance=cfg.selection.tie_tolerance,
                             folds=outcomes, n_boot=cfg.selection.n_boot, seed=cfg.seed)
        ledger.selection({**sel, "summaries": summaries})
    winners = dict((ledger.selected() or {}).get("winners") or {})
    if cfg.round3.enabled and not ledger.is_round_finished(ROUND3):
        with feedback.live(lambda: board.render(f"{title} · round 3", rounds=(ROUND3,))) as redraw:
            HOOKS[ctx.key] = _hooks(ctx, board, _throttled(redraw))
            try:
                r3 = run_round3(ctx, winners)
            finally:
                HOOKS.pop(ctx.key, None)
            redraw()
        if r3.get("skipped"):
            feedback.say(f"round 3 skipped: {r3['skipped']}")
        ledger.round_finished(ROUND3, r3)
    if cfg.round3.enabled and not ledger.events("fusion"):
        from pianoray.protocol.trials import BestStore

        r3 = ledger.round_summary(ROUND3) or {}
        store = BestStore(run_storage.storage_uri, run_storage.name)
        ledger.append(Event(kind="fusion", event_id="fusion/verdict", time=time.time(),
                            payload=fusion_verdict(ledger, cfg, r3, winners, store)))
    return build_results(ledger, cfg, run_storage)


def _throttled(redraw: Callable[[], None], every: float = 0.25) -> Callable[[], None]:
    """``redraw``, at most once per ``every`` seconds (the board refreshes on every report)."""
    last = [0.0]

    def refresh() -> None:
        now = time.monotonic()
        if now - last[0] > every:
            redraw()
            last[0] = now

    return refresh
