"""The run ledger: durable, append-only record of what the protocol did, in the run's storage.

Ray Tune does not restore scheduler state on resume (ray issue #30838) and restarts a resumed trial's
``training_iteration``, so elimination state and epoch counts live here instead. S3 has no append, so every
event is its own immutable object, ``ledger/events/<kind>/<sanitised event id>.json``, written only if
absent: the event id is deterministic from what happened (``epoch/round1/S1/fold0/e0007``,
``decision/rung4/S1``, ``round/round1/started``), so a retried or resumed writer re-appending the same event
is a no-op, never a duplicate. Readers list each kind's folder in one call and merge.

:meth:`Ledger.compact` writes all events so far to ``ledger/compacted/<round>.parquet``; readers merge the
parquet files with the loose objects (de-duplicated by event id) and skip reading loose objects the parquet
already holds, which keeps reading cheap on S3 where each object is a round trip.

Event kinds written here: ``epoch``, ``decision``, ``rejudged``, ``round``, ``selection``, ``resources``,
``trial`` (any lower-case word is accepted by :meth:`Ledger.append`).

Decision events are immutable: a rung decision taken again later (a ``rejudged`` event, when the leader it
was judged against errored for good) is a new event naming the decision it replaces. :meth:`Ledger.decisions`
gives the decisions as they stand (re-judgements applied); ``as_decided=True`` gives them as first taken.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re
import time
from typing import Any, Callable, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from pianoray.errors import InputError
from pianoray.protocol.accounting import ResourceRecord
from pianoray.protocol.storage import RunStorage
from pianoray.records import PAYLOADS, validate_payload

EVENTS_DIR = "ledger/events"
COMPACTED_DIR = "ledger/compacted"

_KIND = re.compile(r"^[a-z][a-z0-9_]*$")
_SAFE = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.=,+")
_MAX_NAME = 180  # well under the 255-byte file-name limit of local filesystems

ELIMINATING_ACTIONS = frozenset({"stop", "eliminate", "eliminated"})
PROMOTING_ACTIONS = frozenset({"promote", "promoted"})


def sanitise_event_id(event_id: str) -> str:
    """File-name form of an event id: ``/`` -> ``~``, other unsafe characters -> ``%XX`` (injective).

    Very long ids keep a readable head plus a hash of the whole id.
    """
    out = []
    for ch in event_id:
        if ch == "/":
            out.append("~")
        elif ch in _SAFE:
            out.append(ch)
        else:
            out.append("".join(f"%{b:02X}" for b in ch.encode()))
    name = "".join(out)
    if name.startswith("."):  # leading dots are hidden/tmp names
        name = "%2E" + name[1:]
    if len(name) > _MAX_NAME:
        name = f"{name[:_MAX_NAME - 17]}-{hashlib.sha256(event_id.encode()).hexdigest()[:16]}"
    return name


def event_relpath(kind: str, event_id: str) -> str:
    """Where an event of ``kind`` with ``event_id`` is stored in the run folder (its own immutable object)."""
    return f"{EVENTS_DIR}/{kind}/{sanitise_event_id(event_id)}.json"


def _decision_dict(d: Any) -> dict[str, Any]:
    """A decision as a plain dict: a dict, a dataclass, or an object with ``to_dict()``."""
    if hasattr(d, "to_dict"):
        return dict(d.to_dict())
    if dataclasses.is_dataclass(d) and not isinstance(d, type):
        return dataclasses.asdict(d)
    if isinstance(d, Mapping):
        return dict(d)
    raise TypeError(f"decision must be a dict, a dataclass or have to_dict(), got {type(d).__name__}")


def _jsonable(obj: Any) -> Any:
    """Plain JSON types for payloads holding numpy/torch scalars or arrays."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "tolist"):  # numpy arrays/scalars, torch tensors
        return _jsonable(obj.tolist())
    if hasattr(obj, "item"):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return _jsonable(dataclasses.asdict(obj))
    raise TypeError(f"ledger payload value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


class Event(BaseModel):
    """One immutable ledger event. ``time`` is Unix seconds (wall clock, comparable across nodes)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    event_id: str
    kind: str
    time: float
    round: str | None = None
    experiment: str | None = None
    fold: int | None = None
    payload: dict[str, Any] = {}

    @field_validator("event_id")
    @classmethod
    def _id_nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("event_id must not be empty")
        return v

    @field_validator("kind")
    @classmethod
    def _kind_word(cls, v: str) -> str:
        if not _KIND.match(v):
            raise ValueError(f"kind must be a lower-case word such as 'epoch', got {v!r}")
        return v

    @field_validator("payload", mode="before")
    @classmethod
    def _payload_json(cls, v: Any) -> Any:
        return _jsonable(v)

    @model_validator(mode="after")
    def _payload_of_its_kind(self) -> "Event":
        validate_payload(self.kind, self.payload)  # records.PAYLOADS: one type per kind
        return self

    @property
    def data(self) -> Any:
        """The payload as its kind's type (``records.PAYLOADS``: ``e.data.epoch``, ``e.data.metrics``), validated
        on each read, so that events compacted to parquet (read without validation) are checked too. A kind
        without a type gives the plain dict."""
        model = PAYLOADS.get(self.kind)
        return model.model_validate(self.payload) if model is not None else self.payload

    def relpath(self) -> str:
        return event_relpath(self.kind, self.event_id)

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(), sort_keys=True).encode()

    @property
    def sort_key(self) -> tuple[float, str]:
        return (self.time, self.event_id)


_PARQUET_SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("kind", pa.string()),
        ("time", pa.float64()),
        ("round", pa.string()),
        ("experiment", pa.string()),
        ("fold", pa.int64()),
        ("payload", pa.string()),  # JSON: payloads differ by kind, so no fixed columns
    ]
)


def events_to_parquet(events: Iterable[Event]) -> bytes:
    events = list(events)
    cols: dict[str, list[Any]] = {name: [] for name in _PARQUET_SCHEMA.names}
    for e in events:
        cols["event_id"].append(e.event_id)
        cols["kind"].append(e.kind)
        cols["time"].append(e.time)
        cols["round"].append(e.round)
        cols["experiment"].append(e.experiment)
        cols["fold"].append(e.fold)
        cols["payload"].append(json.dumps(e.payload, sort_keys=True))
    buf = io.BytesIO()
    pq.write_table(pa.table(cols, schema=_PARQUET_SCHEMA), buf)
    return buf.getvalue()


def events_from_parquet(data: bytes, source: str) -> list[Event]:
    try:
        rows = pq.read_table(pa.BufferReader(data)).to_pylist()
    except pa.ArrowException as e:
        raise InputError(f"{source}: not a readable compacted ledger parquet: {e}") from None
    # Rows were validated as Events when written; re-validating 10^4 payloads would dominate the read.
    return [Event.model_construct(**{**r, "payload": json.loads(r["payload"])}) for r in rows]


class Ledger:
    """Append-only event log of one run in :class:`RunStorage`.

    Loose event objects are immutable, so this reader caches every one it has read and on later calls
    reads only objects it has not seen (one LIST per call, plus one GET per new object).
    ``now`` is injectable so tests can script the order of events.
    """

    def __init__(self, storage: RunStorage, *, now: Callable[[], float] = time.time) -> None:
        self.storage = storage
        self._now = now
        self._loose: dict[str, Event] = {}  # run-relative path -> event

    # -- writing -----------------------------------------------------------------------------------
    def append(self, event: Event) -> bool:
        """Store ``event`` unless an event with its id exists; True when this call wrote it."""
        rel = event.relpath()
        if rel in self._loose:
            return False
        written = self.storage.write_bytes(rel, event.to_json(), overwrite=False)
        if written:
            self._loose[rel] = event
        return written

    def _new(self, kind: str, event_id: str, **fields: Any) -> Event:
        event = Event(kind=kind, event_id=event_id, time=self._now(), **fields)
        self.append(event)
        return event

    @staticmethod
    def epoch_id(round: str, experiment: str, fold: int, epoch: int) -> str:
        return f"epoch/{round}/{experiment}/fold{fold}/e{epoch:04d}"

    def epoch(
        self,
        round: str,
        experiment: str,
        fold: int,
        epoch: int,
        metrics: Mapping[str, Any],
        *,
        trial: str | None = None,
    ) -> Event:
        """One finished epoch. ``epoch`` is ours (counted across resumes), not Tune's training_iteration."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch} for {round}/{experiment}/fold{fold}")
        return self._new(
            "epoch",
            self.epoch_id(round, experiment, fold, epoch),
            round=round,
            experiment=experiment,
            fold=fold,
            payload={"epoch": epoch, "metrics": dict(metrics), "trial": trial},
        )

    def decision(self, d: Any, *, round: str | None = None) -> Event:
        """A scheduler decision: a dict, a dataclass, or an object with ``to_dict()`` (the scheduler's
        :class:`~pianoray.protocol.decisions.Decision`, whose ``event_id`` is ``rung<r>:<experiment>``).

        The payload is ``to_dict()`` unchanged (event_id included), so ``Decision.from_dict(event.payload)``
        gives the decision back when a resumed scheduler needs its ``prior_decisions``. The ledger id is
        ``decision/<round>/<id>`` (``decision/<id>`` without a round; ``round`` from the argument or the
        dict), so the same rung in two rounds never collides; ``<id>`` is the decision's event_id, else
        ``rung<rung>:<experiment>``. :class:`~pianoray.protocol.view.RunView` reads experiment, track, role and the verdict
        (``decision`` or ``action``: stop|eliminate|promote|continue|pause).
        """
        if hasattr(d, "to_dict"):
            data = dict(d.to_dict())
        elif dataclasses.is_dataclass(d) and not isinstance(d, type):
            data = dataclasses.asdict(d)
        elif isinstance(d, Mapping):
            data = dict(d)
        else:
            raise TypeError(f"decision must be a dict, a dataclass or have to_dict(), got {type(d).__name__}")
        own_id = data.get("event_id") or getattr(d, "event_id", None)
        if not own_id:
            missing = [k for k in ("rung", "experiment") if data.get(k) is None]
            if missing:
                raise ValueError(f"decision has no event_id and lacks {missing} to build one: {data}")
            own_id = f"rung{data['rung']}:{data['experiment']}"
        round = round if round is not None else (None if data.get("round") is None else str(data["round"]))
        fold = data.get("fold")
        return self._new(
            "decision",
            f"decision/{round}/{own_id}" if round is not None else f"decision/{own_id}",
            round=round,
            experiment=data.get("experiment"),
            fold=None if fold is None else int(fold),
            payload=data,
        )

    def rejudged(self, previous: Any, new: Any, errored: str, *, round: str | None = None) -> Event:
        """A rung decision taken again without ``errored`` (a leader that errored for good): ``new`` replaces
        ``previous`` (both decisions, as :meth:`decision` takes them; same rung and experiment). The payload
        holds ``decision`` (the new one, what :meth:`decisions` now returns), ``previous``, ``errored``,
        ``reason`` and ``decision_event`` (the ledger id of the decision it replaces). One event per
        (decision, errored leader): a second leader erroring later re-judges again under another id."""
        new_d, prev_d = _decision_dict(new), _decision_dict(previous)
        own_id = new_d.get("event_id") or f"rung{new_d['rung']}:{new_d['experiment']}"
        decision_event = f"decision/{round}/{own_id}" if round is not None else f"decision/{own_id}"
        return self._new(
            "rejudged",
            f"rejudged/{round or 'none'}/{own_id}/without-{errored}",
            round=round,
            experiment=new_d.get("experiment"),
            payload={"decision": new_d, "previous": prev_d, "errored": errored, "reason": new_d.get("reason"),
                     "decision_event": decision_event},
        )

    def round_started(self, round: str, experiments: Mapping[str, Mapping[str, Any]] | None = None) -> Event:
        """Round start; ``experiments`` maps name -> {"track", "role", ...} for :class:`~pianoray.protocol.view.RunView`."""
        payload = {"experiments": {k: dict(v) for k, v in (experiments or {}).items()}}
        return self._new("round", f"round/{round}/started", round=round, payload=payload)

    def round_finished(self, round: str, summary: Mapping[str, Any]) -> Event:
        """Round end. ``summary`` may list "promoted"/"eliminated" experiment names."""
        return self._new("round", f"round/{round}/finished", round=round, payload=dict(summary))

    def selection(self, payload: Mapping[str, Any], *, name: str = "final") -> Event:
        """The selection result; ``payload["winners"]`` maps track -> experiment."""
        return self._new("selection", f"selection/{name}", payload={"name": name, **payload})

    def trial(self, round: str, experiment: str, trial: str, state: str, **info: Any) -> Event:
        """A trial's life-cycle step (started, paused, resumed, terminated, errored...)."""
        return self._new(
            "trial",
            f"trial/{round}/{experiment}/{trial}/{state}",
            round=round,
            experiment=experiment,
            payload={"trial": trial, "state": state, **info},
        )

    def resources(
        self,
        experiment: str,
        trial: str,
        resource: str,
        amount_hours: float,
        wall_seconds: float,
        *,
        round: str | None = None,
        fold: int | None = None,
    ) -> Event:
        """Resource-hours billed for one trial (or one fold of a CV job); see accounting.resource_hours."""
        rec = ResourceRecord(experiment, trial, resource, float(amount_hours), float(wall_seconds), round, fold)
        suffix = "" if fold is None else f"/fold{fold}"
        return self._new(
            "resources",
            f"resources/{round or 'none'}/{experiment}/{trial}{suffix}",
            round=round,
            experiment=experiment,
            fold=fold,
            payload={"trial": rec.trial, "resource": rec.resource, "amount_hours": rec.amount_hours,
                     "wall_seconds": rec.wall_seconds},
        )

    def compact(self, round: str) -> str:
        """Write every event so far to ``ledger/compacted/<round>.parquet``; returns its path."""
        rel = f"{COMPACTED_DIR}/{sanitise_event_id(round)}.parquet"
        self.storage.write_bytes(rel, events_to_parquet(self.events()), overwrite=True)
        return rel

    # -- reading -----------------------------------------------------------------------------------
    def _compacted(self) -> dict[str, Event]:
        out: dict[str, Event] = {}
        rels = [r for r in self.storage.list(COMPACTED_DIR) if r.endswith(".parquet")]
        for rel, data in self.storage.read_many(rels).items():
            for e in events_from_parquet(data, self.storage.path(rel)):
                out.setdefault(e.event_id, e)
        return out

    def events(self, kind: str | None = None) -> list[Event]:
        """All events (of ``kind``), compacted and loose merged by id, ordered by (time, event_id)."""
        if kind is not None and not _KIND.match(kind):
            raise ValueError(f"kind must be a lower-case word, got {kind!r}")
        merged = {e.event_id: e for e in self._compacted().values() if kind is None or e.kind == kind}
        covered = {e.relpath() for e in merged.values()}
        prefix = EVENTS_DIR if kind is None else f"{EVENTS_DIR}/{kind}"
        listed = [r for r in self.storage.list(prefix) if r.endswith(".json")]
        fresh = [r for r in listed if r not in self._loose and r not in covered]
        for rel, data in self.storage.read_many(fresh).items():
            try:
                self._loose[rel] = Event.model_validate(json.loads(data))
            except ValueError as e:
                raise InputError(f"{self.storage.path(rel)}: not a valid ledger event: {e}") from None
        for rel in listed:
            e = self._loose.get(rel)
            if e is not None and (kind is None or e.kind == kind):
                merged.setdefault(e.event_id, e)
        return sorted(merged.values(), key=lambda e: e.sort_key)

    def is_round_finished(self, round: str) -> bool:
        return any(e.event_id == f"round/{round}/finished" for e in self.events("round"))

    def round_summary(self, round: str) -> dict[str, Any] | None:
        for e in self.events("round"):
            if e.event_id == f"round/{round}/finished":
                return dict(e.payload)
        return None

    def decisions(self, round: str | None = None, *, as_decided: bool = False) -> list[Event]:
        """Decision events (of ``round``); ``e.payload`` is the decision's ``to_dict()``.

        A decision re-judged later (a ``rejudged`` event) comes back with the latest re-judgement's decision
        as its payload (same event id and time), unless ``as_decided``."""
        decided = [e for e in self.events("decision") if round is None or e.round == round]
        if as_decided:
            return decided
        latest = {r.data.decision_event: r for r in self.rejudgements(round)}
        return [e.model_copy(update={"payload": dict(latest[e.event_id].data.decision)})
                if e.event_id in latest else e for e in decided]

    def rejudgements(self, round: str | None = None) -> list[Event]:
        """``rejudged`` events (of ``round``), oldest first; see :meth:`rejudged`."""
        return [e for e in self.events("rejudged") if round is None or e.round == round]

    def rung_reports(
        self, round: str, *, fold: int | None = None, key: str = "epoch"
    ) -> dict[str, dict[int, dict[str, Any]]]:
        """Per experiment, what it reported at each value of ``key``: the epoch event's metrics plus
        ``trial_id`` (the reporting trial) and ``epoch`` (the ledger's own epoch).

        ``key`` is "epoch" (the ledger's epoch count) or a metrics key counting epochs, such as
        "rung_epoch" (the supervised epochs rungs count; an epoch of a self-supervised stage repeats the
        previous value: the first report of each value is kept, the one the scheduler judged). A rung is
        judged on the value reported at the rung epoch: this is where a resumed run reads it back."""
        out: dict[str, dict[int, dict[str, Any]]] = {}
        events = sorted(((e, e.data) for e in self.epochs(round=round, fold=fold)), key=lambda ep: ep[1].epoch)
        for e, p in events:
            metrics = p.metrics
            value = p.epoch if key == "epoch" else metrics.get(key)
            if e.experiment is None or not isinstance(value, (int, float)):
                continue
            by_value = out.setdefault(e.experiment, {})
            by_value.setdefault(int(value), {**metrics, "epoch": p.epoch, "trial_id": p.trial})
        return out

    def epochs(
        self, experiment: str | None = None, *, round: str | None = None, fold: int | None = None
    ) -> list[Event]:
        return [
            e
            for e in self.events("epoch")
            if (experiment is None or e.experiment == experiment)
            and (round is None or e.round == round)
            and (fold is None or e.fold == fold)
        ]

    def last_epoch(self, round: str, experiment: str, fold: int) -> int | None:
        """Highest epoch recorded for one (round, experiment, fold): where a resumed trial carries on."""
        eps = [e.data.epoch for e in self.epochs(experiment, round=round, fold=fold)]
        return max(eps) if eps else None

    def selected(self, name: str | None = None) -> dict[str, Any] | None:
        """Payload of the latest selection (or the one called ``name``); None before selection."""
        sel = [e for e in self.events("selection") if name is None or e.data.name == name]
        return dict(sel[-1].payload) if sel else None

    def resource_records(self) -> list[ResourceRecord]:
        return [
            ResourceRecord(
                experiment=e.experiment or "",
                trial=e.data.trial,
                resource=e.data.resource,
                amount_hours=e.data.amount_hours,
                wall_seconds=e.data.wall_seconds,
                round=e.round,
                fold=e.fold,
            )
            for e in self.events("resources")
        ]
