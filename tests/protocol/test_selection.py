from __future__ import annotations

import math

import pytest

from pianoray.protocol.selection import FoldOutcome, mean_ci, select_winners, summarise


def test_mean_ci_known_values() -> None:
    r = mean_ci([0.6, 0.7, 0.8, 0.7])
    # mean 0.7, sd 0.08165, t(0.975, 3) = 3.1824 -> half width 0.12992
    assert r["mean"] == pytest.approx(0.7)
    assert r["ci"][1] - r["mean"] == pytest.approx(3.182446 * 0.0816497 / 2, rel=1e-4)
    assert mean_ci([0.5])["ci"] == [0.5, 0.5]
    assert mean_ci([float("nan")])["mean"] is None


def _summary(pw: float, r2: float, drop: float | None = None) -> dict:
    return {"pairwise_accuracy": {"mean": pw}, "r2": {"mean": r2},
            "robustness": None if drop is None else {"drop": drop, "pearson": 0.9}}


TRACKS = {"A1": ("audio", "candidate"), "A2": ("audio", "candidate"), "A3": ("audio", "candidate"),
          "audio-frozen": ("audio", "reference"), "S1": ("symbolic", "candidate")}


def test_best_pairwise_wins_and_references_never_win() -> None:
    s = {"A1": _summary(0.70, 0.3), "A2": _summary(0.74, 0.2), "A3": _summary(0.72, 0.4),
         "audio-frozen": _summary(0.90, 0.9), "S1": _summary(0.65, 0.1)}
    out = select_winners(s, TRACKS)
    assert out["winners"] == {"audio": "A2", "symbolic": "S1"}
    assert "A2" in out["explanations"]["audio"] and "74.0%" in out["explanations"]["audio"]


def test_tie_broken_by_r2() -> None:
    s = {"A1": _summary(0.74, 0.30), "A2": _summary(0.74, 0.35), "A3": _summary(0.735, 0.9)}
    assert select_winners(s, TRACKS)["winners"]["audio"] == "A2"
    # with a tolerance of 1 point, A3 ties too and its R2 wins
    assert select_winners(s, TRACKS, tie_tolerance=0.01)["winners"]["audio"] == "A3"


def test_robustness_veto() -> None:
    s = {"A1": _summary(0.80, 0.3, drop=0.20), "A2": _summary(0.74, 0.2, drop=0.05)}
    out = select_winners(s, TRACKS, veto=0.15)
    assert out["winners"]["audio"] == "A2" and out["vetoed"] == ["A1"]
    assert "vetoed" in out["explanations"]["audio"]
    all_vetoed = select_winners({"A1": _summary(0.8, 0.3, drop=0.5)}, TRACKS)
    assert all_vetoed["winners"]["audio"] is None


def test_summarise_folds() -> None:
    folds = [FoldOutcome(k, 0.6 + 0.05 * k, 0.2, 5, 10, [0.6, 0.7],
                         {"pairwise_accuracy": 0.6, "r2": 0.1, "robustness_drop": 0.1}) for k in range(4)]
    s = summarise(folds)
    assert s["pairwise_accuracy"]["mean"] == pytest.approx(0.675)
    assert s["pairwise_accuracy"]["per_dim"] == pytest.approx([0.6, 0.7])
    assert s["test"]["pairwise_accuracy"]["mean"] == pytest.approx(0.6)
    assert s["robustness"]["drop"] == pytest.approx(0.1)
    assert s["difficulty_rho"] is None and [f["fold"] for f in s["folds"]] == [0, 1, 2, 3]
    assert not math.isnan(s["pairwise_accuracy"]["ci"][0])
