"""Typed records that cross the layers, and the names they share.

Ray Tune and Train carry a trial's results as flat dicts of scalars and short lists, and the ledger stores
JSON. The records here are what the training loop produces and the protocol and report consume; each
converts to and from that flat form in this module only (``to_report``, ``ledger_fields``, ``from_report``), so a
new field is added in one place. Pure: no ray, no torch, no rich (``pianoray status`` imports it without loading either).

- :class:`EpochRecord`: one epoch of ``training.loop.fit`` (or a fitted reference's one "epoch");
- :class:`FoldScore`: a fold's test scores and its per-passage pair counts, reported once at the fold's end;
- one payload type per ledger event kind (:data:`PAYLOADS`), validated whenever an event is built or read
  (``pianoray.protocol.ledger.Event``). They name the fields readers rely on and allow others (add, never
  rename), so older ledgers stay readable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Mapping, Optional, Union

from pydantic import BaseModel, ConfigDict, ValidationError

if TYPE_CHECKING:
    from pianoray.objectives.metrics import PairCounts

SELECTION_METRIC = "val/pairwise_accuracy"  # what rungs, early stopping, checkpoint ranking and winners use
ROUND1, ROUND2, ROUND3 = "round1", "round2", "round3"
FOLD_ROUNDS = (ROUND2, ROUND3)  # the rounds that train every fold (Ray Train fold jobs)
Role = Literal["candidate", "reference"]  # a reference is trained and reported, never a leader nor a winner
PAIR_COUNTS = "pair_counts"  # the key of a fold's per-passage counts ({"val": ..., "test": ...})
# A track's comparison-table figures unless its TrackSpec says otherwise: dotted paths into an experiment's row.
DEFAULT_TRACK_METRICS = ("difficulty_rho", "robustness.drop", "test.r2", "test.pairwise_accuracy")

METRIC_PREFIXES = ("val/", "train/")  # an epoch's metric keys
TEST_PREFIX = "test/"


def finite(x: Any) -> float | None:
    """``x`` as a float when it is a finite number, else None (None, NaN, inf, booleans and non-numbers all
    count as "not measured": what a record's JSON says for a figure there is none of)."""
    if isinstance(x, bool) or x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def reportable(metrics: Mapping[str, Any]) -> dict[str, Any]:
    """What a Ray result may carry: scalars, strings and lists of at most 64 items (None and the rest dropped)."""
    return {k: v for k, v in metrics.items()
            if isinstance(v, (int, float, str, bool)) or (isinstance(v, list) and len(v) <= _MAX_REPORT_LIST)}


_JSON_VALUE = "json:"  # a report value carried as JSON text (FoldScore.to_report)
_MAX_REPORT_LIST = 64


def _as_json(v: Any) -> Any:
    numbers = isinstance(v, list) and len(v) <= _MAX_REPORT_LIST and all(
        isinstance(x, (int, float)) and not isinstance(x, bool) for x in v)
    return _JSON_VALUE + json.dumps(v, separators=(",", ":")) if isinstance(v, (list, dict)) and not numbers else v


def _from_json(v: Any) -> Any:
    return json.loads(v[len(_JSON_VALUE):]) if isinstance(v, str) and v.startswith(_JSON_VALUE) else v


@dataclass
class EpochRecord:
    """One epoch's result. ``metrics`` holds the ``train/*`` loss parts, ``lr``, the ``val/*`` scores
    (:func:`pianoray.training.evaluate.validation_scores`) and ``selectable``; the rest is the loop's own."""

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
    seconds: float | None
    samples: int
    checkpoint: Path | None = None
    # The validation split's pair counts (per passage and dimension): what a rung decision's bootstrap needs.
    # Not in the flat form: they go into the checkpoint (pair_counts.json) and, in Round 1, the run's ledger.
    pair_counts: "PairCounts | None" = None

    # flat key -> attribute, for the loop's own fields
    LOOP_FIELDS: ClassVar[dict[str, str]] = {
        "epoch": "epoch", "rung_epoch": "rung_epoch", "stage": "stage", "best_epoch": "best_epoch",
        "best_metric": "best_metric", "stop": "stop", "early_stopped": "early_stopped",
        "epoch_seconds": "seconds", "samples": "samples",
    }
    OWN_METRICS: ClassVar[tuple[str, ...]] = ("lr", "selectable")

    @property
    def selectable(self) -> bool:
        return self.metrics.get("selectable", True) is not False

    def flat(self) -> dict[str, Any]:
        """The metrics plus the loop's own fields, as one flat dict (checkpoint metrics, Ray reports)."""
        return {**self.metrics, **{key: getattr(self, attr) for key, attr in self.LOOP_FIELDS.items()}}

    def to_report(self, **extra: Any) -> dict[str, Any]:
        """The Ray result of this epoch, with ``extra`` (experiment, fold, round) merged in."""
        return reportable({**self.flat(), **extra})

    @classmethod
    def is_report(cls, result: Mapping[str, Any]) -> bool:
        """Whether a Ray result is an epoch's (not a fold's final test report)."""
        return not result.get("final") and "epoch" in result and SELECTION_METRIC in result

    @classmethod
    def ledger_fields(cls, result: Mapping[str, Any]) -> dict[str, Any]:
        """The part of an epoch's Ray result that the ledger keeps: metrics and loop fields, not Ray's own
        bookkeeping (trial id, timestamps, training_iteration)."""
        return {k: v for k, v in result.items()
                if k.startswith(METRIC_PREFIXES) or k in cls.LOOP_FIELDS or k in cls.OWN_METRICS}


@dataclass
class FoldScore:
    """A Round-2 fold's end: its test metrics (``test``: the metrics suite's flat keys, e.g. ``r2``,
    ``pairwise_accuracy_ci``) and the per-passage pair counts of its inner validation and test parts
    (``pair_counts``: {"val": PairCounts JSON, "test": ...}; selection's paired bootstraps need them)."""

    experiment: str
    fold: int
    test: dict[str, Any]
    pair_counts: dict[str, Any] | None = None
    round: str = ROUND2

    @classmethod
    def from_scores(cls, experiment: str, fold: int, scores: Mapping[str, Any], round: str = ROUND2) -> "FoldScore":
        """From a scorer's dict (``evaluate_checkpoint``, ``fit_and_score``), whose ``pair_counts`` entry it
        takes out of the test metrics."""
        test = dict(scores)
        return cls(experiment, fold, test, test.pop(PAIR_COUNTS, None), round)

    def to_report(self) -> dict[str, Any]:
        """The fold's last Ray report: ``test/<key>`` metrics and ``final: True``; the pair counts travel as
        one JSON string (Ray results keep only scalars and short lists, and a string passes whole), and so does a
        test value that is not a short list of numbers (a list of passage names, per-pair outcomes): marked
        ``json:``, it reaches :meth:`from_report` whole, and Ray's loggers, which take numbers, leave it alone."""
        test = {f"{TEST_PREFIX}{k}": _as_json(v) for k, v in self.test.items()}
        out = reportable({**test, "experiment": self.experiment, "fold": self.fold, "round": self.round,
                          "final": True})
        if self.pair_counts is not None:
            out[PAIR_COUNTS] = json.dumps(self.pair_counts, separators=(",", ":"))
        return out

    @classmethod
    def from_report(cls, result: Mapping[str, Any], experiment: str, fold: int, round: str = ROUND2) -> "FoldScore":
        test = {k.removeprefix(TEST_PREFIX): _from_json(v) for k, v in result.items() if k.startswith(TEST_PREFIX)}
        counts = result.get(PAIR_COUNTS)
        return cls(experiment, fold, test, json.loads(counts) if isinstance(counts, str) else None, round)

    def ledger_payload(self) -> dict[str, Any]:
        """The ``fold`` ledger event's payload (the counts' one durable place)."""
        return {"test": self.test, **({PAIR_COUNTS: self.pair_counts} if self.pair_counts is not None else {})}


# ------------------------------------------------------------------------------------- ledger payloads


class _Payload(BaseModel):
    model_config = ConfigDict(extra="allow")


class EpochPayload(_Payload):
    """``epoch``: one reported epoch. ``metrics``: :meth:`EpochRecord.ledger_fields` of its Ray result."""

    epoch: int
    metrics: dict[str, Any]
    trial: Optional[str] = None


class DecisionPayload(_Payload):
    """``decision``: a rung decision, ``pianoray.protocol.decisions.Decision.to_dict()`` (older writers used
    ``action`` for the verdict)."""

    experiment: Optional[str] = None
    rung: Optional[int] = None
    decision: Optional[str] = None
    action: Optional[str] = None
    reason: Optional[str] = None


class RejudgedPayload(_Payload):
    """``rejudged``: a rung decision taken again without a leader that errored for good."""

    decision: dict[str, Any]
    previous: dict[str, Any]
    errored: str
    decision_event: str
    reason: Optional[str] = None


class RoundPayload(_Payload):
    """``round``: started (``experiments``: name -> {track, role}) or finished (``promoted``, ``eliminated``,
    ``errored``, ``exempt``: names; Round 2's lists its ``experiments``)."""

    experiments: Union[dict[str, dict[str, Any]], list[str]] = {}
    promoted: list[str] = []
    eliminated: list[str] = []
    errored: list[str] = []


class SelectionPayload(_Payload):
    """``selection``: ``protocol.selection.select_winners`` plus the summaries it read."""

    name: str
    winners: dict[str, Optional[str]] = {}
    vetoed: list[str] = []
    summaries: dict[str, Any] = {}


class TrialPayload(_Payload):
    """``trial``: a trial's life-cycle step."""

    trial: str
    state: str


class ResourcesPayload(_Payload):
    """``resources``: resource-hours billed for one trial or fold."""

    trial: str
    resource: str
    amount_hours: float
    wall_seconds: float


class FoldPayload(_Payload):
    """``fold``: :meth:`FoldScore.ledger_payload`."""

    test: dict[str, Any]
    pair_counts: Optional[dict[str, Any]] = None


class PairCountsPayload(_Payload):
    """``paircounts``: an epoch's validation pair counts (``PairCounts.to_json()``), written before its report."""

    counts: dict[str, Any]


class PretrainPayload(_Payload):
    """``pretrain``: what an experiment's self-supervised pretraining read (``training.provenance``)."""

    experiment: str


class SearchPayload(_Payload):
    """``search``: a searched experiment's configurations, drawn before Round 1 (``protocol.search``):
    ``configs`` each ``{"id", "experiment", "number", "params"}``; ``space`` the search block as configured."""

    experiment: str
    configs: list[dict[str, Any]]
    space: dict[str, Any] = {}


class FusionPayload(_Payload):
    """``fusion``: Round 3's verdict (``protocol.run.fusion_verdict``): the fused winners, each fusion against
    the best single encoder, the fusion track's winner and the run's final model with the reason; ``planted``:
    each fusion's and fused winner's accuracy on the planted score-conditioned pairs; ``difficulty``: the
    fusions' difficulty-head rho beside the probe's; ``not_run``: the fusions Round 3 left out (F-score on a
    corpus without score MIDI), each with why."""

    fuses: dict[str, str] = {}
    skipped: Optional[str] = None
    not_run: dict[str, str] = {}
    planted: dict[str, dict[str, Any]] = {}
    planted_why: Optional[str] = None
    difficulty: dict[str, dict[str, Any]] = {}
    best_single: Optional[str] = None
    comparisons: dict[str, dict[str, Any]] = {}
    winners: dict[str, Optional[str]] = {}
    summaries: dict[str, Any] = {}
    final: dict[str, Any]


class CrashPayload(_Payload):
    """``crash``: an exception that was not the user's to fix ended the driver."""

    type: str
    message: str
    traceback: str


PAYLOADS: dict[str, type[_Payload]] = {
    "epoch": EpochPayload, "decision": DecisionPayload, "rejudged": RejudgedPayload, "round": RoundPayload,
    "selection": SelectionPayload, "trial": TrialPayload, "resources": ResourcesPayload, "fold": FoldPayload,
    "paircounts": PairCountsPayload, "pretrain": PretrainPayload, "crash": CrashPayload, "search": SearchPayload,
    "fusion": FusionPayload,
}


def validate_payload(kind: str, payload: Mapping[str, Any]) -> None:
    """Check an event's payload against its kind's type (a kind without one is free-form); a ``ValueError``
    names each field at fault (``payload.<field>: <problem>``)."""
    model = PAYLOADS.get(kind)
    if model is None:
        return
    try:
        model.model_validate(payload)
    except ValidationError as e:
        problems = "; ".join(f"payload.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"a {kind!r} event's {problems}") from None


__all__ = ["DEFAULT_TRACK_METRICS", "EpochRecord", "FoldScore", "PAYLOADS", "validate_payload", "METRIC_PREFIXES", "PAIR_COUNTS", "ROUND1", "ROUND2", "ROUND3", "FOLD_ROUNDS", "Role",
           "SELECTION_METRIC", "TEST_PREFIX", "reportable"]
