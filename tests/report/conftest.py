"""A realistic fake "run results" dict: 2 tracks, 5 experiments (one eliminated at a Round-1 rung with a
stop decision, one vetoed for robustness, one reference), 4 folds in Round 2, timed curves (A2's with a
self-supervised stage, so its epochs and the scheduler's supervised epochs differ), and selection's margins
and reference comparison."""

from __future__ import annotations

import copy
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest

DIMS = ["dynamics", "timing", "pedaling", "articulation", "phrasing", "interpretation"]
T0 = datetime(2026, 11, 3, 9, 0, tzinfo=timezone.utc)


def _iso(minutes: float) -> str:
    return (T0 + timedelta(minutes=minutes)).isoformat()


def _stat(mean: float, half: float, per_dim: list[float] | None = None) -> dict[str, Any]:
    return {"mean": mean, "ci": [mean - half, mean + half], "per_dim": per_dim or [mean] * len(DIMS)}


def _folds(val: float, r2: float) -> list[dict[str, Any]]:
    return [
        {"fold": k, "val_pairwise": val + 0.01 * (k - 1.5), "val_r2": r2 + 0.02 * (k - 1.5),
         "test_pairwise": val - 0.01, "test_r2": r2 - 0.02, "best_epoch": 20 + 3 * k, "epochs": 40 + 3 * k}
        for k in range(4)
    ]


def _experiment(name, track, role, status, furthest, pw, r2, *, per_dim=None, rob=None, gpu=0.0, cpu=0.5,
                folds=True, round1_best=None, eliminated_at=None, reason=None) -> dict[str, Any]:
    round2 = furthest == "round2"
    return {
        "name": name, "track": track, "role": role, "furthest_round": furthest, "status": status,
        "pairwise_accuracy": _stat(pw, 0.03 if round2 else 0.05, per_dim),
        "r2": _stat(r2, 0.04 if round2 else 0.07),
        "test": {"pairwise_accuracy": _stat(pw - 0.01, 0.03), "r2": _stat(r2 - 0.02, 0.04)} if round2 else None,
        "difficulty_rho": 0.55 if round2 else None, "stop_auc": None, "competition_rho": None,
        "robustness": rob,
        "resource_hours": {"gpu_hours": gpu, "cpu_hours": cpu},
        "folds": _folds(pw, r2) if (round2 and folds) else [],
        "round1": {"epochs": 30 if eliminated_at is None else eliminated_at, "best_metric": round1_best or pw,
                   "eliminated_at": eliminated_at, "reason": reason},
    }


def _curve(rnd: str, exp: str, fold: int, epochs: int, start: float, top: float, step_min: float,
           self_supervised: int = 0) -> list[dict]:
    """``self_supervised`` leading epochs select nothing (A2's stage): rung_epoch counts only the others."""
    return [
        {"round": rnd, "experiment": exp, "fold": fold, "epoch": e, "rung_epoch": max(0, e - self_supervised),
         "selectable": e > self_supervised,
         "val_pairwise": 0.5 + (top - 0.5) * (1 - 0.85 ** e) + 0.004 * ((e * 7 + fold) % 3 - 1),
         "train_loss": 1.0 / e, "time": _iso(start + step_min * e)}
        for e in range(1, epochs + 1)
    ]


def make_results() -> dict[str, Any]:
    stop_reason = "A2 is 14.2 points behind A1 (leader 0.742) at rung 10, more than the 10-point gap"
    experiments = [
        _experiment("A1", "audio", "candidate", "winner", "round2", 0.801, 0.512, gpu=1.25, cpu=10.0,
                    per_dim=[0.83, 0.79, 0.76, 0.81, 0.80, 0.82], rob={"drop": 0.06, "pearson": 0.93}),
        _experiment("A2", "audio", "candidate", "eliminated", "round1", 0.600, 0.21, gpu=0.1, cpu=0.8,
                    per_dim=[0.62, 0.58, 0.61, 0.59, 0.60, 0.60], eliminated_at=10, reason=stop_reason),
        _experiment("S1", "symbolic", "reference", "promoted", "round2", 0.702, 0.38, gpu=0.0, cpu=0.2,
                    per_dim=[0.72, 0.69, 0.66, 0.71, 0.71, 0.72]),
        _experiment("S2", "symbolic", "candidate", "vetoed", "round2", 0.780, 0.45, gpu=0.9, cpu=7.0,
                    per_dim=[0.80, 0.77, 0.74, 0.79, 0.78, 0.80], rob={"drop": 0.21, "pearson": 0.71}),
        _experiment("S2H", "symbolic", "candidate", "winner", "round2", 0.752, 0.47, gpu=1.1, cpu=8.0,
                    per_dim=[0.77, 0.75, 0.70, 0.76, 0.76, 0.77], rob={"drop": 0.08, "pearson": 0.9}),
    ]
    decisions = []
    for rung, metrics in ((10, {"A1": 0.742, "A2": 0.600, "S2": 0.70, "S2H": 0.69, "S1": 0.66}),
                          (25, {"A1": 0.78, "S2": 0.76, "S2H": 0.74, "S1": 0.70})):
        for exp, m in metrics.items():
            track = "audio" if exp.startswith("A") else "symbolic"
            leader = max((e for e in metrics if e[0] == exp[0]), key=metrics.get)
            gap = round((metrics[leader] - m) * 100, 1)
            stop = gap > 10
            decisions.append({
                "round": "round1", "rung": rung, "experiment": exp, "track": track, "metric": m, "leader": leader,
                "leader_metric": metrics[leader], "gap_points": gap, "decision": "stop" if stop else "continue",
                "reason": stop_reason if stop else f"within 10 points of {leader}", "time": _iso(rung * 1.0 + 0.5),
            })
    curves = []
    for exp, top, epochs in (("A1", 0.79, 30), ("S1", 0.71, 30), ("S2", 0.78, 30), ("S2H", 0.75, 30)):
        curves += _curve("round1", exp, 0, epochs, 0.0, top, 1.0)
    curves += _curve("round1", "A2", 0, 13, 0.0, 0.61, 1.0, self_supervised=3)  # stopped at rung 10 = epoch 13
    for i, exp in enumerate(("A1", "S1", "S2", "S2H")):
        top = next(e["pairwise_accuracy"]["mean"] for e in experiments if e["name"] == exp)
        for fold in range(4):
            curves += _curve("round2", exp, fold, 40 + 3 * fold, 35.0 + 5 * i, top + 0.01, 0.8)
    results = {
        "run": {"name": "demo-<run>", "storage": "/tmp/pianoray/demo", "config": "experiments/protocol.yaml",
                "status": "finished", "started": _iso(0), "finished": _iso(120), "dashboard": "http://127.0.0.1:8265"},
        "dimensions": list(DIMS),
        "experiments": experiments,
        "decisions": decisions,
        "winners": {"audio": "A1", "symbolic": "S2H"},
        "selection": {
            "audio": {"winner": "A1", "explanation": "A1 has the best mean pairwise accuracy (80.1%) of the audio track."},
            "symbolic": {"winner": "S2H", "explanation": "S2 (78.0%) was vetoed: robustness drop 21% > 15%; "
                                                         "S2H is next best (75.2%)."},
        },
        "curves": curves,
        "rounds": [{"round": "round1", "started": _iso(0), "finished": _iso(31)},
                   {"round": "round2", "started": _iso(34), "finished": _iso(120)}],
    }
    results["selection"]["audio"].update(
        tie_tolerance_points=0.5, versus_reference=None,
        margin={"winner": "A1", "runner_up": None, "basis": "validation", "decided_by": "pairwise",
                "winner_mean": 0.801, "runner_up_mean": None, "gap_points": None, "ci_points": [None, None],
                "folds": 0, "passages": 0, "passages_left_out": 0, "statistical_tie": None})
    reference = {"reference": "S1", "reference_mean": 0.692, "gap_points": 5.0, "ci_points": [1.2, 8.8], "folds": 4,
                 "passages": 48, "passages_left_out": 0, "verdict": "beats", "beats": True}
    results["selection"]["symbolic"].update(
        tie_tolerance_points=0.5,
        margin={"winner": "S2H", "runner_up": None, "basis": "validation", "decided_by": "pairwise",
                "winner_mean": 0.752, "runner_up_mean": None, "gap_points": None, "ci_points": [None, None],
                "folds": 0, "passages": 0, "passages_left_out": 0, "statistical_tie": None},
        versus_reference={"winner": "S2H", "basis": "test", "winner_mean": 0.742, **reference,
                          "references": [dict(reference)]})
    return results


def add_search(results: dict[str, Any], *, importance: dict[str, float] | None = None) -> dict[str, Any]:
    """``results`` with A1 searched: two configurations, A1.c0 stopped at rung 3 and A1.c1 (the best) complete,
    promoted to Round 2 as A1."""
    def config(number, params, state, rung, value, stopped_at, epochs, gpu, cpu):
        return {"id": f"A1.c{number}", "experiment": "A1", "number": number, "params": params, "state": state,
                "rung": rung, "value": value, "r2": 0.4, "stopped_at": stopped_at, "epochs": epochs,
                "rungs": {str(rung): value}, "resource_hours": {"gpu_hours": gpu, "cpu_hours": cpu}}

    results["experiments"][0]["search"] = {
        "space": {"model.lora.rank": {"type": "int", "low": 16, "high": 64, "log": True},
                  "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                  "model.dropout": {"type": "float", "low": 0.0, "high": 0.5, "log": False}},
        "configs": [config(0, {"model.lora.rank": 31, "optim.lr": 0.005798, "model.dropout": 0.1234},
                           "pruned", 3, 0.6123, 3, 3, 0.05, 0.4),
                    config(1, {"model.lora.rank": 36, "optim.lr": 0.00048566, "model.dropout": 0.25},
                           "complete", 10, 0.7421, None, 10, 0.2, 1.5)],
        "best": "A1.c1",
        "promoted": {"A1": "A1.c1"},
        "importance": importance,
    }
    return results


def add_fusion(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` with a Round-3 verdict: F3 against the best single encoder A1, its gates, the winners' error
    correlation, the planted pairs of F3 and A1, and F-score left out."""
    n = len(results["dimensions"])
    results["fusion"] = {
        "fuses": {"audio": "A1", "symbolic": "S2"}, "skipped": None, "best_single": "A1",
        "comparisons": {"F3": {"versus": "A1", "gap_points": 2.1, "ci_points": [0.4, 3.9], "verdict": "beats",
                               "r2_gap": 0.031, "r2_ci": [-0.012, 0.07], "r2_verdict": "no clear difference",
                               "folds": 4, "passages": 40, "passages_left_out": 0}},
        "error_correlation": {"between": ["A1", "S2"], "mean": 0.62, "ci": [0.55, 0.69], "per_dim": [0.6] * n,
                              "segments": 160, "folds": 4},
        "gates": {"F3": [0.1 + 0.8 * i / max(n - 1, 1) for i in range(n)]},
        "planted": {"F3": {"accuracy": 0.75, "ci": [0.6, 0.875], "pairs": 48, "passages": 24, "folds": 4,
                           "verdict": "above chance"},
                    "A1": {"accuracy": 0.5, "ci": [0.375, 0.625], "pairs": 48, "passages": 24, "folds": 4,
                           "verdict": "not distinguishable from chance"}},
        "planted_why": None, "not_run": {"F-score": "12 of 400 segments have no score MIDI"},
        "difficulty": {"F3": {"head": 0.45, "head_folds": 4, "probe": 0.3, "probe_folds": 4},
                       "A1": {"head": None, "head_folds": 0, "probe": 0.2, "probe_folds": 3}},
        "winner": "F3", "final": {"model": "F3", "kind": "fusion", "reason": "F3 beats A1", "versus_references": {
            "winner": "F3", "reference": "symbolic-gbm", "gap_points": -4.6, "ci_points": [-8.2, -1.2],
            "verdict": "below", "folds": 4, "passages": 24, "passages_left_out": 0,
            "references": [{"reference": "symbolic-gbm", "gap_points": -4.6, "ci_points": [-8.2, -1.2],
                            "verdict": "below"}]}},
    }
    return results


def strip_optional(results: dict[str, Any]) -> dict[str, Any]:
    """Every field the schema allows to be None set to None (and optional lists emptied)."""
    r = copy.deepcopy(results)
    r["run"].update(finished=None, dashboard=None)
    for e in r["experiments"]:
        e.update(pairwise_accuracy=None, r2=None, test=None, difficulty_rho=None, stop_auc=None,
                 competition_rho=None, robustness=None, resource_hours=None, folds=None, round1=None)
    for d in r["decisions"]:
        d.update(metric=None, leader=None, leader_metric=None, gap_points=None, time=None)
    r["winners"] = {"audio": None, "symbolic": None}
    r["selection"] = None
    r["curves"] = []
    r["rounds"] = []
    return r


@pytest.fixture
def run_results() -> dict[str, Any]:
    return make_results()
