from __future__ import annotations

import math

import numpy as np
import pytest

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.selection import FoldOutcome, fold_pair_counts, mean_ci, select_winners, summarise


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
    s = {"A1": _summary(0.74, 0.30), "A2": _summary(0.74, 0.35), "A3": _summary(0.733, 0.9)}
    assert select_winners(s, TRACKS, tie_tolerance=0.0)["winners"]["audio"] == "A2"
    # with a tolerance of 1 point, A3 ties too and its R2 wins
    out = select_winners(s, TRACKS, tie_tolerance=1.0)
    assert out["winners"]["audio"] == "A3" and out["margins"]["audio"]["decided_by"] == "r2"
    assert "within 1.0 points" in out["explanations"]["audio"]


def test_r2_decides_only_within_the_default_half_point_of_the_leader() -> None:
    """The default tolerance is 0.5 points (the config's too): a candidate 0.4 points behind the leader is
    tied and wins on R2; one 0.6 points behind never wins, however high its R2."""
    from pianoray.config import SelectionConfig

    assert SelectionConfig().tie_tolerance == 0.5
    close = {"A1": _summary(0.700, 0.30), "A2": _summary(0.696, 0.60)}
    far = {"A1": _summary(0.700, 0.30), "A2": _summary(0.694, 0.99)}
    assert select_winners(close, TRACKS)["winners"]["audio"] == "A2"
    assert select_winners(far, TRACKS)["winners"]["audio"] == "A1"
    assert select_winners(far, TRACKS)["margins"]["audio"]["decided_by"] == "pairwise"
    # exactly at the tolerance counts as tied (floating point must not decide it)
    edge = {"A1": _summary(0.74, 0.30), "A3": _summary(0.735, 0.9)}
    assert select_winners(edge, TRACKS)["winners"]["audio"] == "A3"


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


# ------------------------------------------------------------------ margins and references (hand-made counts)


def _counts(correct: list[list[float]], total: list[list[float]] | None = None, prefix: str = "p") -> PairCounts:
    c = np.array(correct, dtype=float)
    t = np.array(total, dtype=float) if total is not None else np.full_like(c, 4.0)
    return PairCounts(tuple(f"{prefix}{i}" for i in range(len(c))), c, t)


def _folds(per_fold: list[tuple[PairCounts, PairCounts]]) -> list[FoldOutcome]:
    return [FoldOutcome(k, v.accuracy(), 0.2, 3, 5, None, {"pairwise_accuracy": t.accuracy(), "r2": 0.1}, v, t)
            for k, (v, t) in enumerate(per_fold)]


def _run(folds: dict[str, list[FoldOutcome]], tracks: dict[str, tuple[str, str]], **kw) -> dict:
    return select_winners({n: summarise(f) for n, f in folds.items()}, tracks, folds=folds, n_boot=2000, **kw)


def test_margin_over_the_runner_up_with_a_paired_ci_and_a_statistical_tie() -> None:
    """A1 is right on 3 of 4 pairs of every passage, A2 on 2: a clear 25-point lead, on every resample, so the
    CI is [25, 25] and excludes 0. A3 differs from A1 on one passage of one fold only: a 3.1-point lead whose
    CI covers 0, which the selection calls a statistical tie."""
    tracks = {"A1": ("audio", "candidate"), "A2": ("audio", "candidate")}
    three, two = [[3.0, 3.0]] * 4, [[2.0, 2.0]] * 4
    clear = {"A1": _folds([(_counts(three), _counts(three))] * 2), "A2": _folds([(_counts(two), _counts(two))] * 2)}
    m = _run(clear, tracks)["margins"]["audio"]
    assert (m["winner"], m["runner_up"], m["basis"]) == ("A1", "A2", "validation")
    assert m["gap_points"] == pytest.approx(25.0) and m["ci_points"] == pytest.approx([25.0, 25.0])
    assert m["statistical_tie"] is False and (m["folds"], m["passages"]) == (2, 8)

    tracks = {"A1": ("audio", "candidate"), "A3": ("audio", "candidate")}
    base = [[3.0, 3.0], [2.0, 2.0], [3.0, 1.0], [2.0, 3.0]]
    better = [[4.0, 4.0], [2.0, 2.0], [3.0, 1.0], [2.0, 3.0]]  # one more correct pair per dimension on p0
    near = {"A1": _folds([(_counts(better), _counts(better)), (_counts(base), _counts(base))]),
            "A3": _folds([(_counts(base), _counts(base)), (_counts(base), _counts(base))])}
    out = _run(near, tracks, tie_tolerance=0.0)
    m = out["margins"]["audio"]
    assert out["winners"]["audio"] == "A1"
    # fold 0: +1 correct of 16 pairs per dimension = 6.25 points; fold 1: 0; the mean over folds
    assert m["gap_points"] == pytest.approx(3.125)
    lo, hi = m["ci_points"]
    assert lo <= 0.0 <= hi and m["statistical_tie"] is True


def test_margin_without_counts_keeps_the_point_gap_and_no_ci() -> None:
    tracks = {"A1": ("audio", "candidate"), "A2": ("audio", "candidate")}
    folds = {n: [FoldOutcome(k, pw, 0.2, 3, 5) for k in range(2)] for n, pw in (("A1", 0.72), ("A2", 0.70))}
    m = select_winners({n: summarise(f) for n, f in folds.items()}, tracks, folds=folds)["margins"]["audio"]
    assert m["gap_points"] == pytest.approx(2.0) and m["ci_points"] == [None, None]
    assert m["statistical_tie"] is None
    alone = select_winners({"A1": summarise(folds["A1"])}, tracks, folds=folds)["margins"]["audio"]
    assert alone["runner_up"] is None and alone["gap_points"] is None


def test_winner_against_the_best_reference_on_the_test_parts() -> None:
    """S2 (winner on validation) against two references on the test parts. symbolic-gbm is the stronger (best)
    reference and S2 beats it on every passage by one pair in four: +25 points, on every resample, so the CI is
    above 0: "beats". Then a symbolic-gbm as good as S2 overall but right on other passages: the CI covers 0,
    "no clear difference", so S2 does not beat its best reference. Validation counts play no part."""
    tracks = {"S2": ("symbolic", "candidate"), "symbolic-gbm": ("symbolic", "reference"),
              "symbolic-features": ("symbolic", "reference")}
    val, weak_val = _counts([[3.0, 3.0]] * 3), _counts([[1.0, 1.0]] * 3)
    s2_test = [[3.0, 3.0], [4.0, 2.0], [3.0, 3.0]]
    gbm_test = [[2.0, 2.0], [3.0, 1.0], [2.0, 2.0]]
    feat_test = [[1.0, 1.0], [1.0, 1.0], [2.0, 1.0]]
    folds = {"S2": _folds([(val, _counts(s2_test))] * 2),
             "symbolic-gbm": _folds([(weak_val, _counts(gbm_test))] * 2),
             "symbolic-features": _folds([(weak_val, _counts(feat_test))] * 2)}
    v = _run(folds, tracks)["versus_reference"]["symbolic"]
    assert (v["winner"], v["reference"], v["basis"]) == ("S2", "symbolic-gbm", "test")
    assert v["gap_points"] == pytest.approx(25.0) and v["ci_points"] == pytest.approx([25.0, 25.0])
    assert v["verdict"] == "beats" and v["beats"] is True and (v["folds"], v["passages"]) == (2, 6)
    assert [r["reference"] for r in v["references"]] == ["symbolic-gbm", "symbolic-features"]
    assert all(r["verdict"] == "beats" for r in v["references"])

    mixed = [[4.0, 3.0], [4.0, 2.0], [2.0, 3.0]]  # S2's totals per dimension, right on other passages
    folds["symbolic-gbm"] = _folds([(weak_val, _counts(mixed))] * 2)
    v = _run(folds, tracks)["versus_reference"]["symbolic"]
    assert v["reference"] == "symbolic-gbm" and v["gap_points"] == pytest.approx(0.0)
    assert v["ci_points"][0] < 0 < v["ci_points"][1]
    assert v["verdict"] == "no clear difference" and v["beats"] is False


def test_a_winner_below_its_reference_and_passages_scored_differently() -> None:
    """The reference is ahead on every passage: "below". A passage the reference has with other pair totals
    (a segment one model could not read) is left out of the paired comparison and counted."""
    tracks = {"A1": ("audio", "candidate"), "audio-frozen": ("audio", "reference")}
    a1 = _counts([[1.0, 1.0], [2.0, 2.0], [1.0, 2.0]])
    ref = _counts([[3.0, 3.0], [4.0, 4.0], [2.0, 2.0]], total=[[4.0, 4.0], [4.0, 4.0], [3.0, 3.0]])
    folds = {"A1": _folds([(a1, a1)]), "audio-frozen": _folds([(ref, ref)])}
    v = _run(folds, tracks)["versus_reference"]["audio"]
    assert v["verdict"] == "below" and v["beats"] is False
    assert (v["passages"], v["passages_left_out"]) == (2, 1)
    # on p0 and p1: A1 3/8 right per dimension, the reference 7/8
    assert v["gap_points"] == pytest.approx(-50.0)


def test_no_reference_in_round2_and_no_winner() -> None:
    tracks = {"A1": ("audio", "candidate"), "audio-frozen": ("audio", "reference")}
    out = _run({"A1": _folds([(_counts([[3.0]]), _counts([[3.0]]))])}, tracks)
    assert out["versus_reference"]["audio"] is None
    vetoed = select_winners({"A1": _summary(0.8, 0.3, drop=0.5)}, TRACKS)
    assert vetoed["margins"]["audio"] is None and vetoed["versus_reference"]["audio"] is None


def test_fold_pair_counts_reads_the_fold_event_payload() -> None:
    c = _counts([[3.0, 2.5]])
    val, test = fold_pair_counts({"test": {}, "pair_counts": {"val": c.to_json(), "test": None}})
    assert val is not None and val.groups == c.groups and np.array_equal(val.correct, c.correct) and test is None
    assert fold_pair_counts({"test": {}}) == (None, None)
    broken = {"val": {"groups": ["a"], "correct": [[1.0]], "total": []}}
    assert fold_pair_counts({"pair_counts": broken}) == (None, None)
