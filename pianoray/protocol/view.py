"""The one read model of a run: :class:`RunView`, built in one pass over its ledger events and ``run.json``.

Everything that reads a run goes through it: ``pianoray status`` and ``report`` (:meth:`RunView.results`,
the public JSON of ``docs/results-schema.md``), selection after Round 2 (:meth:`RunView.fold_outcomes`) and
the tests. It reads only the ledger and ``run.json``, so it works from any shell against local or S3 storage,
during a run (partial results) or after it, and stays light: it imports neither torch nor ray (nor scipy or
sklearn, which only selection needs).
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

from pianoray.protocol.accounting import ResourceRecord, hours_by_experiment
from pianoray.protocol.ledger import ELIMINATING_ACTIONS, PROMOTING_ACTIONS, Event, Ledger
from pianoray.protocol.schema import SCHEMA_VERSION
from pianoray.protocol.storage import RunStorage
from pianoray.records import DEFAULT_TRACK_METRICS, FOLD_ROUNDS, ROUND1, ROUND2, ROUND3, SELECTION_METRIC, finite

if TYPE_CHECKING:  # selection loads scipy and sklearn: only fold_outcomes needs it, status never does
    from pianoray.protocol.selection import FoldOutcome

def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _num(x: Any) -> float:
    """A figure for ranking epochs: missing or NaN ranks last."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("-inf")
    return v if v == v else float("-inf")


def _interval(x: Any) -> list[float | None] | None:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        return None
    return [finite(x[0]), finite(x[1])]


@dataclass
class ExperimentView:
    """One experiment as the ledger tells it."""

    name: str
    track: str | None = None
    role: str | None = None
    round: str | None = None  # latest round it reported an epoch in (or was listed for)
    last_epoch: int | None = None  # highest epoch in that round, over folds
    best_metric: float | None = None  # best selection metric in that round, over folds and epochs
    status: str = "running"  # running | eliminated | promoted | errored | winner | vetoed
    gpu_hours: float = 0.0
    cpu_hours: float = 0.0
    round1_epochs: int | None = None
    round1_best: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunView:
    """A run's state. ``decisions``: every decision's payload as it stands (a re-judgement replaces the decision
    it re-judges and carries ``rejudged``), with its ledger ``event_id`` and ``time``; ``rounds``: round ->
    "running" | "finished", in start order."""

    name: str = ""
    uri: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    experiments: dict[str, ExperimentView] = field(default_factory=dict)
    rounds: dict[str, str] = field(default_factory=dict)
    round_times: dict[str, dict[str, float | None]] = field(default_factory=dict)
    round_summaries: dict[str, dict[str, Any]] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    selection: dict[str, Any] | None = None
    selection_time: float | None = None
    curves: list[dict[str, Any]] = field(default_factory=list)
    folds: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)  # (experiment, fold) -> payload
    epochs: dict[tuple[str, str, int], list[Event]] = field(default_factory=dict)  # (round, exp, fold) -> events
    pretraining: dict[str, Any] = field(default_factory=dict)
    search: dict[str, dict[str, Any]] = field(default_factory=dict)  # experiment -> its search event's payload
    fusion: dict[str, Any] | None = None  # Round 3's verdict (run.fusion_verdict), once recorded

    # ------------------------------------------------------------------------------------------ reading
    @classmethod
    def read(cls, ledger: Ledger, storage: RunStorage | None = None) -> "RunView":
        storage = storage or ledger.storage
        meta = storage.read_json("run.json") if storage.exists("run.json") else {}
        return cls.from_events(ledger.events(), meta, name=storage.name, uri=storage.uri)

    @classmethod
    def from_events(cls, events: Iterable[Event], meta: dict[str, Any] | None = None, *, name: str = "",
                    uri: str = "") -> "RunView":
        view = cls(name=name, uri=uri, meta=dict(meta or {}))
        events = sorted(events, key=lambda e: e.sort_key)
        order: dict[str, int] = {}
        for n, (track, role) in view.meta.get("tracks", {}).items():
            view._exp(n, track, role)
        decided: dict[str, dict[str, Any]] = {}  # ledger event id -> row, in decision order
        resources: list[ResourceRecord] = []
        for e in events:
            if e.round is not None:
                order.setdefault(e.round, len(order))
            handler = getattr(view, f"_on_{e.kind}", None)
            if e.kind == "decision":
                decided[e.event_id] = {"event_id": e.event_id, "time": e.time, **e.payload,
                                       "ledger_round": e.round}
            elif e.kind == "rejudged":
                target = e.payload.get("decision_event")
                if target in decided:
                    decided[target] = {**decided[target], **dict(e.payload.get("decision", {})),
                                       "rejudged": {k: e.payload.get(k) for k in ("errored", "reason", "previous")}}
            elif e.kind == "resources":
                r = e.data
                resources.append(ResourceRecord(e.experiment or "", r.trial, r.resource, r.amount_hours,
                                                r.wall_seconds, e.round, e.fold))
            elif handler is not None:
                handler(e, order)
        view.decisions = list(decided.values())
        view._settle(order, resources)
        return view

    def _exp(self, name: str, track: str | None = None, role: str | None = None) -> ExperimentView:
        x = self.experiments.setdefault(name, ExperimentView(name))
        x.track = track or x.track
        x.role = role or x.role
        return x

    @staticmethod
    def _enter(x: ExperimentView, rnd: str | None, order: dict[str, int]) -> None:
        if rnd is not None and (x.round is None or order[rnd] > order[x.round]):
            x.round, x.last_epoch, x.best_metric = rnd, None, None

    def _on_round(self, e: Event, order: dict[str, int]) -> None:
        if e.round is None:
            return
        times = self.round_times.setdefault(e.round, {"started": None, "finished": None})
        if e.event_id.endswith("/started"):
            self.rounds.setdefault(e.round, "running")
            times["started"] = times["started"] or e.time
            for name, info in e.payload.get("experiments", {}).items():
                self._enter(self._exp(name, info.get("track"), info.get("role")), e.round, order)
        elif e.event_id.endswith("/finished"):
            self.rounds[e.round] = "finished"
            times["finished"] = times["finished"] or e.time
            self.round_summaries[e.round] = dict(e.payload)

    def _on_trial(self, e: Event, order: dict[str, int]) -> None:
        if e.experiment:
            self._enter(self._exp(e.experiment, e.payload.get("track"), e.payload.get("role")), e.round, order)

    def _on_epoch(self, e: Event, order: dict[str, int]) -> None:
        if not e.experiment:
            return
        m, ep = e.data.metrics, e.data.epoch
        pw = finite(m.get(SELECTION_METRIC))
        rung_epoch = m.get("rung_epoch")  # the supervised epochs the scheduler counts; None in old ledgers
        self.curves.append({"round": e.round, "experiment": e.experiment, "fold": e.fold, "epoch": ep,
                            "rung_epoch": int(rung_epoch) if isinstance(rung_epoch, (int, float)) else None,
                            "selectable": m.get("selectable", True) is not False,
                            "val_pairwise": pw, "train_loss": finite(m.get("train/total")), "time": _iso(e.time)})
        if e.round is not None and e.fold is not None:
            self.epochs.setdefault((e.round, e.experiment, int(e.fold)), []).append(e)
        x = self._exp(e.experiment)
        if e.round == ROUND1:
            x.round1_epochs = max(x.round1_epochs or 0, ep)
            if pw is not None:
                x.round1_best = pw if x.round1_best is None else max(x.round1_best, pw)
        self._enter(x, e.round, order)
        if e.round != x.round:
            return  # a late event from an earlier round
        x.last_epoch = ep if x.last_epoch is None else max(x.last_epoch, ep)
        value = m.get(SELECTION_METRIC)
        if isinstance(value, (int, float)) and not math.isnan(value):
            x.best_metric = value if x.best_metric is None else max(x.best_metric, value)

    def _on_fold(self, e: Event, order: dict[str, int]) -> None:
        if e.experiment is not None and e.fold is not None:
            self.folds[(e.experiment, int(e.fold))] = dict(e.payload)

    def _on_selection(self, e: Event, order: dict[str, int]) -> None:
        self.selection, self.selection_time = dict(e.payload), e.time

    def _on_pretrain(self, e: Event, order: dict[str, int]) -> None:
        if e.experiment:
            self.pretraining[e.experiment] = dict(e.payload)

    def _on_fusion(self, e: Event, order: dict[str, int]) -> None:
        self.fusion = dict(e.payload)

    def _on_search(self, e: Event, order: dict[str, int]) -> None:
        if e.experiment:
            self.search[e.experiment] = dict(e.payload)

    def _settle(self, order: dict[str, int], resources: list[ResourceRecord]) -> None:
        """Statuses, from the strongest fact down: winner, vetoed, eliminated (a stop as it stands), promoted,
        errored, else running."""
        for d in self.decisions:
            name = d.get("experiment")
            if name:
                self._exp(name, d.get("track"), d.get("role"))
        stopped = self.stopped()
        promoted = {n for s in self.round_summaries.values() for n in s.get("promoted", [])}
        promoted |= {d["experiment"] for d in self.decisions if d.get("experiment")
                     and str(d.get("action", d.get("decision", ""))).lower() in PROMOTING_ACTIONS}
        eliminated = {n for s in self.round_summaries.values() for n in s.get("eliminated", [])}
        errored = {n for s in self.round_summaries.values() for n in s.get("errored", [])}
        sel = self.selection or {}
        winners, vetoed = set(self.winners.values()), set(sel.get("vetoed", []))
        promoted |= {n for n in (self.round_summaries.get(ROUND3) or {}).get("experiments", [])}
        for n in winners:
            if n:
                self._exp(n)
        for n, x in self.experiments.items():
            x.status = ("winner" if n in winners else "vetoed" if n in vetoed
                        else "eliminated" if n in stopped or n in eliminated else "promoted" if n in promoted
                        else "errored" if n in errored else "running")
        for n, hours in hours_by_experiment(resources).items():
            x = self._exp(n)
            x.gpu_hours, x.cpu_hours = hours.gpu_hours, hours.cpu_hours

    # ------------------------------------------------------------------------------------------ queries
    @property
    def winners(self) -> dict[str, str | None]:
        """track -> winner: Round 2's selection, and the fusion track's from Round 3's verdict."""
        return {**((self.selection or {}).get("winners") or {}), **((self.fusion or {}).get("winners") or {})}

    def stopped(self, round: str | None = None) -> dict[str, dict[str, Any]]:
        """experiment -> the decision (as it stands) that stopped it (in ``round``)."""
        return {d["experiment"]: d for d in self.decisions
                if (round is None or d["ledger_round"] == round) and d.get("experiment")
                and str(d.get("action", d.get("decision", ""))).lower() in ELIMINATING_ACTIONS}

    def tracks(self) -> dict[str, tuple[str, str]]:
        """experiment -> (track, role)."""
        return {n: (x.track or "?", x.role or "candidate") for n, x in self.experiments.items()}

    def track_specs(self) -> list[dict[str, Any]]:
        """The run's tracks in display order, as it recorded them (``run.json``'s ``track_specs``, the
        registry's ``TrackSpec.to_json()`` at launch), so that reading a run needs no registry; a track named by
        an experiment or a winner but not recorded (a run from before tracks were recorded) follows, in
        first-seen order, with ``order`` and ``robustness_veto`` unknown (None)."""
        specs = sorted(self.meta.get("track_specs") or [], key=lambda t: (t.get("order", math.inf), t.get("name")))
        named = [t["name"] for t in specs]
        for name in [t for t, _ in self.tracks().values()] + list(self.winners):
            if name and name != "?" and name not in named:
                named.append(name)
                specs.append({"name": name, "order": None, "robustness_veto": None,
                              "metrics": list(DEFAULT_TRACK_METRICS), "description": ""})
        return specs

    def fold_outcomes(self, experiments: Iterable[str]) -> dict[str, list[FoldOutcome]]:
        """Per experiment with at least one Round-2 (or Round-3: a fusion) fold: each fold's best validation
        epoch among the epochs that select models (from the epoch events), its test scores and per-passage pair
        counts (from the fold event). What selection and Round 3's verdict read."""
        from pianoray.protocol.selection import FoldOutcome, fold_pair_counts

        out: dict[str, list[FoldOutcome]] = {}
        for name in experiments:
            folds = []
            for r, k in sorted((r, f) for (r, n, f) in self.epochs if r in FOLD_ROUNDS and n == name):
                evs = self.epochs[(r, name, k)]
                epochs = [e.data for e in evs]
                selectable = [p for p in epochs if p.metrics.get("selectable", True)] or epochs
                best = max(selectable, key=lambda p: _num(p.metrics.get(SELECTION_METRIC)))
                m = best.metrics
                payload = self.folds.get((name, k)) or {}
                val_counts, test_counts = fold_pair_counts(payload)
                folds.append(FoldOutcome(k, _num(m.get(SELECTION_METRIC)), _num(m.get("val/r2")),
                                         best.epoch, max(p.epoch for p in epochs),
                                         m.get("val/pairwise_accuracy_per_dim"), payload.get("test", {}),
                                         val_counts, test_counts))
            if folds:
                out[name] = folds
        return out

    # ------------------------------------------------------------------------------------------ public JSON
    def results(self) -> dict[str, Any]:
        """The public results dict (``pianoray.protocol.schema``, ``docs/results-schema.md``)."""
        sel = self.selection or {}
        summaries: dict[str, Any] = {**sel.get("summaries", {}), **(self.fusion or {}).get("summaries", {})}
        fused = (self.fusion or {}).get("selection") or {}  # the fusion track's own selection (Round 3)
        sel = {**sel, **{k: {**(sel.get(k) or {}), **(fused.get(k) or {})}
                         for k in ("explanations", "margins", "versus_reference")}}
        winners = self.winners
        track_list = self.track_specs()
        track_order = [t["name"] for t in track_list]
        stop_rung = self.stopped(ROUND1)
        round2_names = set((self.round_summaries.get(ROUND1) or {}).get("promoted", []))

        decisions = []
        for d in self.decisions:
            if d["ledger_round"] != ROUND1:
                continue
            decisions.append({
                "round": ROUND1, "rung": d.get("rung"), "experiment": d.get("experiment"),
                "track": d.get("track"), "metric": finite(d.get("metric")), "leader": d.get("leader"),
                "leader_metric": finite(d.get("leader_metric")), "gap_points": finite(d.get("gap_points")),
                # the gap's 95% interval in points (None: no pair counts) and the rule that decided
                "gap_ci": _interval(d.get("gap_ci")), "rule": d.get("rule", "point"),
                "leader_bias": finite(d.get("leader_bias")),
                "final": bool(d.get("final", False)), "epoch": d.get("epoch"),
                "decision": d.get("decision"), "reason": d.get("reason"), "time": _iso(d.get("time"))})

        searches = {x: self.search_summary(x) for x in self.search}
        # a configuration has a row of its own only when Round 2 took it under its own name
        folded = {c["id"] for x in searches.values() for c in x["configs"]} - round2_names
        experiments = []
        for name, (track, role) in sorted(self.tracks().items()):
            if name in folded:
                continue
            x = self.experiments[name]
            search = searches.get(name)
            # a searched experiment's Round 1 is its best configuration's (the one promoted, else the furthest)
            r1 = x
            if search and search["configs"]:
                furthest = max(search["configs"], key=lambda c: (_num(c["rung"]), _num(c["value"])))
                lead = search["best"] or furthest["id"]
                r1 = self.experiments.get(lead, x)
            stop = stop_rung.get(r1.name) or {}
            gpu, cpu = x.gpu_hours, x.cpu_hours
            if search:
                gpu += sum(c["resource_hours"]["gpu_hours"] for c in search["configs"])
                cpu += sum(c["resource_hours"]["cpu_hours"] for c in search["configs"])
            exp: dict[str, Any] = {
                "name": name, "track": track, "role": role,
                "furthest_round": x.round if x.round in FOLD_ROUNDS
                else ROUND2 if name in round2_names and ROUND2 in self.rounds else ROUND1,
                "status": x.status,
                "resource_hours": {"gpu_hours": gpu, "cpu_hours": cpu},
                "round1": {"epochs": r1.round1_epochs, "best_metric": r1.round1_best,
                           "eliminated_at": stop.get("rung"), "reason": stop.get("reason")},
                "search": search,
            }
            s = summaries.get(name)
            if s is not None:
                exp.update(s)  # selection.summarise's figures, as selection recorded them
            else:  # Round-1 figures only (fold 0)
                exp.update({"pairwise_accuracy": {"mean": r1.round1_best, "ci": [None, None], "per_dim": None},
                            "r2": None, "test": None, "difficulty_rho": None, "stop_auc": None,
                            "stop_group": None, "competition_rho": None, "robustness": None, "folds": []})
            experiments.append(exp)

        rounds = [{"round": r, "started": _iso(self.round_times.get(r, {}).get("started")),
                   "finished": _iso(self.round_times.get(r, {}).get("finished"))} for r in self.rounds]
        return {
            "schema_version": SCHEMA_VERSION,  # the public JSON's version (docs/results-schema.md)
            "run": {"name": self.name, "storage": self.uri, "config": self.meta.get("config"),
                    "status": "finished" if self.selection else "running",
                    "started": rounds[0]["started"] if rounds else None,
                    "finished": _iso(self.selection_time) if self.selection else None,
                    "dashboard": self.meta.get("dashboard"),
                    "folds": self.meta.get("folds")},
            "dimensions": self.meta.get("dimensions", []),
            "experiments": experiments,
            "decisions": decisions,
            "tracks": track_list,
            "winners": {t: winners.get(t) for t in track_order},
            # margin: the winner over the runner-up on the inner validation splits (selection.winner_margin);
            # versus_reference: the winner against the track's best reference on the test parts
            # (selection.versus_references); gaps and CIs in points; None when not recorded.
            "selection": {t: {"winner": winners.get(t), "explanation": sel.get("explanations", {}).get(t, ""),
                              "margin": (sel.get("margins") or {}).get(t),
                              "versus_reference": (sel.get("versus_reference") or {}).get(t),
                              "tie_tolerance_points": sel.get("tie_tolerance_points")}
                          for t in track_order},
            "curves": self.curves,
            "rounds": rounds,
            # experiment -> what its self-supervised pretraining read (pianoray.training.provenance's record)
            "pretraining": self.pretraining,
            "fusion": self.fusion_summary(),
        }

    def fusion_summary(self) -> dict[str, Any] | None:
        """Round 3 (the public ``fusion`` object): what it fused, each fusion against the best single encoder,
        on pairwise accuracy and R2, how alike the fused winners err, the gated fusions' mean gates, the planted
        score-conditioned pairs, the difficulty head against the probe, the fusions left out and why, and the
        run's final model with its reason; the skip reason when it was skipped; None before it."""
        r3 = self.round_summaries.get(ROUND3)
        if self.fusion is None and r3 is None:
            return None
        v = self.fusion or {}
        r3 = r3 or {}
        return {"fuses": v.get("fuses", r3.get("fuses", {})), "skipped": v.get("skipped", r3.get("skipped")),
                "best_single": v.get("best_single"), "comparisons": v.get("comparisons", {}),
                "error_correlation": v.get("error_correlation"), "gates": v.get("gates", {}),
                "planted": v.get("planted", {}), "planted_why": v.get("planted_why"),
                "difficulty": v.get("difficulty", {}),
                "not_run": v.get("not_run", r3.get("not_run", {})),
                "winner": (v.get("winners") or {}).get("fusion"), "final": v.get("final")}

    def search_summary(self, experiment: str) -> dict[str, Any]:
        """A searched experiment's configurations (the public ``search`` object): their outcomes as Round 1's
        summary recorded them, or, while Round 1 runs, as the ledger stands (state running, or pruned at the
        rung of a stop decision), with each configuration's resource-hours, in the order they were drawn."""
        drawn = self.search[experiment]
        r1 = ((self.round_summaries.get(ROUND1) or {}).get("search") or {}).get(experiment)
        stops = self.stopped(ROUND1)
        hours = {n: (x.gpu_hours, x.cpu_hours) for n, x in self.experiments.items()}
        if r1 is not None:
            configs = [dict(c) for c in r1.get("configs", [])]
        else:
            configs = []
            for c in drawn.get("configs", []):
                x = self.experiments.get(c["id"])
                stop = stops.get(c["id"])
                configs.append({**c, "state": "pruned" if stop else "running", "rung": None, "value": None,
                                "r2": None, "stopped_at": (stop or {}).get("rung"),
                                "epochs": (x.round1_epochs if x else None) or 0, "rungs": {}})
        for c in configs:
            gpu, cpu = hours.get(c["id"], (0.0, 0.0))
            c["resource_hours"] = {"gpu_hours": gpu, "cpu_hours": cpu}
        promoted = dict((r1 or {}).get("promoted", {}))
        return {"space": drawn.get("space", {}), "configs": configs, "best": promoted.get(experiment),
                "promoted": promoted, "importance": (r1 or {}).get("importance")}


def build_results(ledger: Ledger, cfg: Any = None, storage: RunStorage | None = None) -> dict[str, Any]:
    """The public results of the run behind ``ledger`` (``cfg`` is unused; kept for callers)."""
    return RunView.read(ledger, storage).results()
