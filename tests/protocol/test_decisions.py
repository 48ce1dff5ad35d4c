"""The pure elimination rule (no Ray): known-value cases of judge_rung / judge_trial."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pianoray.protocol.decisions import Decision, Leader, RungEntry, find_leader, judge_rung, judge_trial


def entry(exp: str, metric: float, track: str = "audio", role: str = "candidate", **kw) -> RungEntry:
    return RungEntry(f"t-{exp}", exp, track, role, metric, **kw)


def verdicts(decisions: list[Decision]) -> dict[str, str]:
    return {d.experiment: d.decision for d in decisions}


def test_more_than_gap_below_leader_is_stopped_exact_gap_continues():
    ds, leaders = judge_rung([entry("A1", 0.80), entry("A2", 0.70), entry("A3", 0.6999)], rung=10, gap=10.0)
    assert verdicts(ds) == {"A1": "continue", "A2": "continue", "A3": "stop"}
    assert leaders["audio"].experiment == "A1"
    a2 = ds[1]
    assert a2.gap_points == pytest.approx(10.0) and a2.leader == "A1" and a2.leader_metric == 0.80
    assert "within" in a2.reason
    assert ds[2].event_id == "rung10:A3" and "more than the 10-point gap" in ds[2].reason


def test_tie_with_leader_continues_and_first_reported_leads():
    ds, leaders = judge_rung([entry("A1", 0.75), entry("A2", 0.75)], rung=5, gap=10.0)
    assert verdicts(ds) == {"A1": "continue", "A2": "continue"}
    assert leaders["audio"].experiment == "A1" and ds[1].gap_points == 0.0


def test_nan_is_stopped_and_never_leads():
    ds, leaders = judge_rung([entry("A1", float("nan")), entry("A2", 0.55)], rung=5, gap=10.0)
    assert verdicts(ds) == {"A1": "stop", "A2": "continue"}
    assert "metric is NaN" in ds[0].reason
    assert leaders["audio"].experiment == "A2"


def test_reference_is_judged_but_never_leads():
    ds, leaders = judge_rung(
        [entry("ref", 0.95, role="reference"), entry("A1", 0.70), entry("A2", 0.62)], rung=5, gap=10.0
    )
    assert leaders["audio"].experiment == "A1"
    assert verdicts(ds) == {"ref": "continue", "A1": "continue", "A2": "continue"}
    ds, _ = judge_rung([entry("ref", 0.55, role="reference"), entry("A1", 0.70)], rung=5, gap=10.0)
    assert verdicts(ds) == {"ref": "stop", "A1": "continue"}


def test_tracks_are_decided_independently():
    ds, leaders = judge_rung(
        [entry("A1", 0.90), entry("S1", 0.62, track="symbolic"), entry("S2", 0.60, track="symbolic")],
        rung=5,
        gap=10.0,
    )
    assert verdicts(ds) == {"A1": "continue", "S1": "continue", "S2": "continue"}
    assert leaders["symbolic"].experiment == "S1"


def test_track_without_finite_candidate_has_no_leader():
    ds, leaders = judge_rung([entry("ref", 0.6, role="reference")], rung=5, gap=10.0)
    assert leaders["audio"] is None and ds[0].decision == "continue" and ds[0].leader is None


def test_min_mode_flips_the_direction():
    ds, _ = judge_rung([entry("A1", 0.10), entry("A2", 0.25)], rung=5, gap=10.0, metric_mode="min")
    assert verdicts(ds) == {"A1": "continue", "A2": "stop"} and ds[1].gap_points == pytest.approx(15.0)


def _noisy_pairs(acc_a: float, acc_b: float, n_groups: int, per_group: int, seed: int):
    rng = np.random.default_rng(seed)
    n = n_groups * per_group
    groups = np.repeat(np.arange(n_groups), per_group)
    a = (rng.random(n) < acc_a).astype(float)
    b = (rng.random(n) < acc_b).astype(float)
    return a, b, groups


def test_noise_guard_keeps_a_trial_whose_gap_interval_crosses_the_threshold():
    # 12 points behind on 60 pairs over 6 passages: the CI is wide, its lower end below 10.
    a, b, g = _noisy_pairs(0.80, 0.68, 6, 10, seed=1)
    lead = entry("A1", a.mean(), pair_correct=a, pair_group=g)
    trail = entry("A2", lead.metric - 0.12, pair_correct=b, pair_group=g)
    point, _ = judge_rung([lead, trail], rung=5, gap=10.0)
    guarded, _ = judge_rung([lead, trail], rung=5, gap=10.0, noise_guard=True)
    assert point[1].decision == "stop"
    assert guarded[1].decision == "continue"
    lo, hi = guarded[1].gap_ci
    assert lo <= 10.0 < hi and "noise guard" in guarded[1].reason


def test_noise_guard_stops_a_clear_loser_and_falls_back_without_vectors():
    a, b, g = _noisy_pairs(0.95, 0.50, 100, 20, seed=2)
    lead = entry("A1", a.mean(), pair_correct=a, pair_group=g)
    trail = entry("A2", b.mean(), pair_correct=b, pair_group=g)
    ds, _ = judge_rung([lead, trail], rung=5, gap=10.0, noise_guard=True)
    assert ds[1].decision == "stop" and ds[1].gap_ci[0] > 10.0
    bare, _ = judge_rung([entry("A1", 0.9), entry("A2", 0.7)], rung=5, gap=10.0, noise_guard=True)
    assert bare[1].decision == "stop" and "point rule" in bare[1].reason and bare[1].gap_ci is None


def test_noise_guard_refuses_to_pair_vectors_of_different_pairs():
    a, b, g = _noisy_pairs(0.9, 0.6, 10, 10, seed=3)
    lead = entry("A1", 0.9, pair_correct=a, pair_group=g)
    trail = entry("A2", 0.6, pair_correct=b[:50], pair_group=g[:50])
    d = judge_trial(trail, Leader.of(lead), rung=5, gap=10.0, mode="sync", noise_guard=True)
    assert d.decision == "stop" and "differ in length" in d.reason


def test_find_leader_ignores_references_and_nan():
    assert find_leader([entry("r", 0.9, role="reference"), entry("x", float("nan"))]) is None


def test_decision_round_trips_through_json():
    ds, _ = judge_rung([entry("A1", 0.8), entry("A2", float("nan"))], rung=3, gap=10.0, mode="async")
    for d in ds:
        back = Decision.from_dict(json.loads(json.dumps(d.to_dict())))
        assert back.event_id == d.event_id and back.decision == d.decision
        assert (math.isnan(back.metric) and math.isnan(d.metric)) or back == d
    with pytest.raises(ValueError, match="unknown field"):
        Decision.from_dict({**ds[0].to_dict(), "bogus": 1})
