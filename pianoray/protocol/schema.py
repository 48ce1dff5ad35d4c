"""The public JSON of a run: what ``pianoray report --json`` and ``pianoray status --json`` print.

A documented contract (``docs/results-schema.md``) for scripts and dashboards reading runs. The rule is *add,
never rename*: a new key may appear in any object without a version change; renaming or removing a key, or
changing its meaning, bumps :data:`SCHEMA_VERSION`. Every object allows extra keys (so old readers keep
working on newer output); the fields below are the ones a reader may rely on, and ``tests/protocol/
test_schema.py`` pins them against the document and against real runs.
"""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict

SCHEMA_VERSION = 1


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class MeanCI(_Open):
    mean: Optional[float]
    ci: Optional[list[Optional[float]]] = None
    per_dim: Optional[list[Optional[float]]] = None


class ResourceHours(_Open):
    gpu_hours: float
    cpu_hours: float


class Round1Summary(_Open):
    epochs: Optional[int]
    best_metric: Optional[float]
    eliminated_at: Optional[int]
    reason: Optional[str]


class SearchConfigRow(_Open):
    id: str  # the configuration's Round-1 name, A1.c3 (c3: trial 3 of the experiment's Optuna study)
    number: int
    params: dict[str, Any]
    state: str  # complete | pruned (stopped at a rung) | failed | running
    rung: Optional[int]  # the last rung it reached
    value: Optional[float]  # its validation pairwise accuracy there
    stopped_at: Optional[int]
    epochs: int  # Round-1 epochs it trained (its budget used)
    resource_hours: ResourceHours


class SearchSummary(_Open):
    space: dict[str, Any]
    configs: list[SearchConfigRow]
    best: Optional[str]  # the configuration Round 2 took under the experiment's name (None: none survived)
    promoted: dict[str, str]  # Round-2 name -> configuration
    importance: Optional[dict[str, float]] = None  # optuna.importance over completed configurations


class ExperimentRow(_Open):
    name: str
    track: str
    role: str  # candidate | reference
    status: str  # running | eliminated | promoted | winner | vetoed | errored ...
    furthest_round: str  # round1 | round2
    resource_hours: ResourceHours
    round1: Round1Summary
    pairwise_accuracy: Optional[MeanCI]
    r2: Optional[MeanCI]
    test: Optional[dict[str, Any]]
    difficulty_rho: Optional[Any]
    stop_auc: Optional[Any]
    stop_group: Optional[str] = None  # what STOP AUC leaves out: recording, or performer (a corpus without them)
    competition_rho: Optional[Any]
    robustness: Optional[dict[str, Any]]
    folds: Optional[list[Any]]
    search: Optional[SearchSummary] = None  # a searched experiment's Round-1 configurations


class DecisionRow(_Open):
    round: str
    rung: Optional[int]
    experiment: Optional[str]
    track: Optional[str]
    metric: Optional[float]
    leader: Optional[str]
    leader_metric: Optional[float]
    gap_points: Optional[float]
    gap_ci: Optional[list[Optional[float]]]
    rule: str  # point | guard
    final: bool
    epoch: Optional[int]
    decision: Optional[str]  # continue | stop
    reason: Optional[str]
    time: Optional[str]


class RunInfo(_Open):
    name: str
    storage: str
    config: Optional[str]
    status: str  # running | finished
    started: Optional[str]
    finished: Optional[str]


class TrackSelection(_Open):
    winner: Optional[str]
    explanation: str
    margin: Optional[dict[str, Any]]
    versus_reference: Optional[dict[str, Any]]
    tie_tolerance_points: Optional[float]


class TrackInfo(_Open):
    name: str
    order: Optional[int]
    robustness_veto: Optional[bool]
    metrics: list[str]


class StatusJSON(_Open):
    """``pianoray status --json``."""

    schema_version: int
    run: RunInfo
    experiments: list[ExperimentRow]
    decisions: list[DecisionRow]
    winners: dict[str, Optional[str]]


class ResultsJSON(StatusJSON):
    """``pianoray report --json``: the status keys and the rest of the results."""

    dimensions: list[str]
    tracks: list[TrackInfo]
    selection: dict[str, TrackSelection]
    curves: list[dict[str, Any]]
    rounds: list[dict[str, Any]]
    pretraining: dict[str, Any]
    fusion: Optional[dict[str, Any]] = None  # Round 3: fuses, skipped, best_single, comparisons, winner, final


STATUS_KEYS = tuple(StatusJSON.model_fields)


def status_view(results: dict[str, Any]) -> dict[str, Any]:
    """The part of the results ``status --json`` prints."""
    return {k: results[k] for k in STATUS_KEYS}
