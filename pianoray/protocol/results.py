"""Assemble a run's results (what `pianoray report` renders and `--json` prints) from its ledger alone.

Only the ledger and ``run.json`` are read, so it works from any shell against local or S3 storage,
during a run (partial results) or after it.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

from pianoray.protocol.ledger import Ledger
from pianoray.protocol.storage import RunStorage

ROUND1, ROUND2 = "round1", "round2"


def _iso(t: float | None) -> str | None:
    return None if t is None else dt.datetime.fromtimestamp(t, dt.timezone.utc).isoformat(timespec="seconds")


def _f(x: Any) -> float | None:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _interval(x: Any) -> list[float | None] | None:
    if not isinstance(x, (list, tuple)) or len(x) != 2:
        return None
    return [_f(x[0]), _f(x[1])]


def build_results(ledger: Ledger, cfg: Any = None, storage: RunStorage | None = None) -> dict[str, Any]:
    storage = storage or ledger.storage
    run_meta = storage.read_json("run.json") if storage.exists("run.json") else {}
    tracks: dict[str, tuple[str, str]] = {k: tuple(v) for k, v in run_meta.get("tracks", {}).items()}
    state = ledger.state()
    for name, es in state.experiments.items():
        if name is not None:
            tracks.setdefault(name, (es.track or "?", es.role or "candidate"))
    selected = ledger.selected() or {}
    summaries: dict[str, Any] = selected.get("summaries", {})
    winners = selected.get("winners", {})
    vetoed = set(selected.get("vetoed", []))

    decisions = []
    stop_rung: dict[str, dict[str, Any]] = {}
    for e in ledger.decisions(ROUND1):
        d = e.payload
        row = {"round": e.round or ROUND1, "rung": d.get("rung"), "experiment": d.get("experiment"),
               "track": d.get("track"), "metric": _f(d.get("metric")), "leader": d.get("leader"),
               "leader_metric": _f(d.get("leader_metric")), "gap_points": _f(d.get("gap_points")),
               # the gap's 95% interval in points (None: no pair counts) and the rule that decided
               "gap_ci": _interval(d.get("gap_ci")), "rule": d.get("rule", "point"),
               "leader_bias": _f(d.get("leader_bias")),
               "final": bool(d.get("final", False)), "epoch": d.get("epoch"),
               "decision": d.get("decision"), "reason": d.get("reason"), "time": _iso(e.time)}
        decisions.append(row)
        if d.get("decision") == "stop":
            stop_rung[d.get("experiment")] = row

    curves, r1_best, r1_epochs = [], {}, {}
    for e in ledger.epochs():
        m = e.payload.get("metrics", {})
        pw = _f(m.get("val/pairwise_accuracy"))
        # rung_epoch: the supervised epochs the scheduler counts (rungs are on this axis); None in old ledgers
        rung_epoch = m.get("rung_epoch")
        curves.append({"round": e.round, "experiment": e.experiment, "fold": e.fold, "epoch": e.payload["epoch"],
                       "rung_epoch": int(rung_epoch) if isinstance(rung_epoch, (int, float)) else None,
                       "selectable": m.get("selectable", True) is not False,
                       "val_pairwise": pw, "train_loss": _f(m.get("train/total")), "time": _iso(e.time)})
        if e.round == ROUND1:
            r1_epochs[e.experiment] = max(r1_epochs.get(e.experiment, 0), int(e.payload["epoch"]))
            if pw is not None:
                r1_best[e.experiment] = max(r1_best.get(e.experiment, -1.0), pw)

    hours: dict[str, dict[str, float]] = {}
    for r in ledger.resource_records():
        h = hours.setdefault(r.experiment, {"gpu_hours": 0.0, "cpu_hours": 0.0})
        h["gpu_hours" if r.resource.upper() == "GPU" else "cpu_hours"] += r.amount_hours

    round2_names = set((ledger.round_summary(ROUND1) or {}).get("promoted", []))
    experiments = []
    for name, (track, role) in sorted(tracks.items()):
        s = summaries.get(name)
        if name in winners.values():
            status = "winner"
        elif name in vetoed:
            status = "vetoed"
        elif name in stop_rung:
            status = "eliminated"
        elif name in round2_names:
            status = "promoted"
        else:
            status = state.experiments.get(name).status if name in state.experiments else "running"
        r1 = {"epochs": r1_epochs.get(name), "best_metric": r1_best.get(name),
              "eliminated_at": (stop_rung.get(name) or {}).get("rung"),
              "reason": (stop_rung.get(name) or {}).get("reason")}
        exp: dict[str, Any] = {
            "name": name, "track": track, "role": role,
            "furthest_round": ROUND2 if name in round2_names else ROUND1,
            "status": status,
            "resource_hours": hours.get(name, {"gpu_hours": 0.0, "cpu_hours": 0.0}),
            "round1": r1,
        }
        if s is not None:
            exp.update({k: s.get(k) for k in ("pairwise_accuracy", "r2", "test", "difficulty_rho", "stop_auc",
                                             "competition_rho", "robustness", "folds")})
        else:  # Round-1 figures only (fold 0)
            exp.update({"pairwise_accuracy": {"mean": r1_best.get(name), "ci": [None, None], "per_dim": None},
                        "r2": None, "test": None, "difficulty_rho": None, "stop_auc": None,
                        "competition_rho": None, "robustness": None, "folds": []})
        experiments.append(exp)

    rounds = []
    for rname, status in state.rounds.items():
        started = [e.time for e in ledger.events("round") if e.event_id == f"round/{rname}/started"]
        finished = [e.time for e in ledger.events("round") if e.event_id == f"round/{rname}/finished"]
        rounds.append({"round": rname, "started": _iso(started[0] if started else None),
                       "finished": _iso(finished[0] if finished else None)})
    return {
        "run": {"name": storage.name, "storage": storage.uri, "config": run_meta.get("config"),
                "status": "finished" if selected else "running",
                "started": rounds[0]["started"] if rounds else None,
                "finished": _iso(max((e.time for e in ledger.events("selection")), default=None)) if selected else None,
                "dashboard": run_meta.get("dashboard"),
                "folds": run_meta.get("folds")},
        "dimensions": run_meta.get("dimensions", []),
        "experiments": experiments,
        "decisions": decisions,
        "winners": {"audio": winners.get("audio"), "symbolic": winners.get("symbolic")},
        # margin: the winner over the runner-up on the inner validation splits (selection.winner_margin);
        # versus_reference: the winner against the track's best reference on the test parts
        # (selection.versus_references); gaps and CIs in points; None when not recorded.
        "selection": {t: {"winner": winners.get(t), "explanation": selected.get("explanations", {}).get(t, ""),
                          "margin": (selected.get("margins") or {}).get(t),
                          "versus_reference": (selected.get("versus_reference") or {}).get(t),
                          "tie_tolerance_points": selected.get("tie_tolerance_points")}
                      for t in ("audio", "symbolic")},
        "curves": curves,
        "rounds": rounds,
        # experiment -> what its self-supervised pretraining read (pianoray.training.provenance's record)
        "pretraining": {e.experiment: e.payload for e in ledger.events("pretrain") if e.experiment},
    }
