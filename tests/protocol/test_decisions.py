"""The pure elimination rule (no Ray): known-value cases of judge_rung / judge_trial."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from pianoray.objectives.metrics import PairCounts, paired_accuracy_gap
from pianoray.protocol.decisions import (
    Decision,
    Leader,
    MissingStatistics,
    RungEntry,
    find_leader,
    gap_interval,
    judge_rung,
    judge_trial,
)
from tests.protocol.synthetic_counts import synthetic_counts


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


def counted(exp: str, counts: PairCounts, role: str = "candidate", track: str = "audio") -> RungEntry:
    """An entry whose metric is its counts' pairwise accuracy (as the real validation reports it)."""
    return RungEntry(f"t-{exp}", exp, track, role, counts.accuracy(), counts=counts, epoch=5)


def test_noise_guard_keeps_a_trial_whose_gap_interval_crosses_the_threshold():
    # ~12 points behind on 8 passages x 6 pairs: the interval is wide, its lower end below 10.
    lead = counted("A1", synthetic_counts(0.80, seed=1, groups=8, dims=1))
    trail = counted("A2", synthetic_counts(0.68, seed=2, groups=8, dims=1))
    point, _ = judge_rung([lead, trail], rung=5, gap=10.0)
    guarded, _ = judge_rung([lead, trail], rung=5, gap=10.0, noise_guard=True)
    assert point[1].gap_points > 10.0 and point[1].decision == "stop" and point[1].rule == "point"
    assert guarded[1].decision == "continue" and guarded[1].rule == "guard"
    lo, hi = guarded[1].gap_ci
    assert lo <= 10.0 < hi and "noise guard" in guarded[1].reason
    # The same interval is recorded whatever the rule.
    assert point[1].gap_ci == guarded[1].gap_ci and point[1].leader_bias == guarded[1].leader_bias


def test_noise_guard_stops_a_clear_loser_and_fails_without_statistics():
    lead = counted("A1", synthetic_counts(0.95, seed=3, groups=100, pairs=10))
    trail = counted("A2", synthetic_counts(0.50, seed=4, groups=100, pairs=10))
    ds, _ = judge_rung([lead, trail], rung=5, gap=10.0, noise_guard=True)
    assert ds[1].decision == "stop" and ds[1].gap_ci[0] > 10.0 and ds[1].epoch == 5
    # Guard on, statistics missing: an error that says so, never the point rule in disguise.
    with pytest.raises(MissingStatistics, match="A2 has no pair counts"):
        judge_rung([lead, entry("A2", 0.5)], rung=5, gap=10.0, noise_guard=True)
    # The point rule decides without them; the decision then has no interval.
    bare, _ = judge_rung([entry("A1", 0.9), entry("A2", 0.7)], rung=5, gap=10.0)
    assert bare[1].decision == "stop" and bare[1].gap_ci is None and bare[1].rule == "point"


def test_statistics_that_do_not_describe_the_report_are_refused():
    a, b = synthetic_counts(0.9, seed=5), synthetic_counts(0.6, seed=6)
    other_pairs = PairCounts(b.groups, b.correct, b.total + 1)
    lead = counted("A1", a)
    with pytest.raises(MissingStatistics, match="other validation pairs"):
        judge_trial(counted("A2", other_pairs), Leader.of(lead), rung=5, gap=10.0, mode="sync", noise_guard=True)
    wrong_metric = RungEntry("t", "A2", "audio", "candidate", 0.7, counts=b)
    with pytest.raises(MissingStatistics, match="do not describe"):
        judge_trial(wrong_metric, Leader.of(lead), rung=5, gap=10.0, mode="sync", noise_guard=True)
    d = judge_trial(wrong_metric, Leader.of(lead), rung=5, gap=10.0, mode="sync")
    assert d.gap_ci is None and d.decision == "stop"


def test_interval_is_on_the_per_dimension_mean_like_the_point_gap():
    # Dimension 0 has 10x the pairs of dimension 1, and the two models differ only on dimension 1: pooled
    # over (pair, dimension) entries the gap would be ~1/11 of the per-dimension mean's.
    groups = tuple(f"g{i:02d}" for i in range(40))
    total = np.tile([[20.0, 2.0]], (40, 1))
    a = PairCounts(groups, np.c_[np.full(40, 14.0), np.full(40, 2.0)], total)
    b = PairCounts(groups, np.c_[np.full(40, 14.0), np.r_[np.zeros(20), np.ones(20)]], total)
    ref, lead = counted("ref", b, role="reference"), counted("A1", a)
    interval, why = gap_interval(ref, [lead], n_boot=500, seed=7)
    assert why == "" and interval.gap == pytest.approx((a.accuracy() - b.accuracy()) * 100) == pytest.approx(37.5)
    # One rival and a reference: no leader to choose, so the resamples are paired_accuracy_gap's, and the
    # interval is their basic (reflected) interval around the observed gap.
    gap, (lo, hi) = paired_accuracy_gap([(a, b)], n_boot=500, seed=7)
    assert interval.lo == pytest.approx(2 * gap * 100 - hi * 100) and interval.hi == pytest.approx(2 * gap * 100 - lo * 100)
    assert interval.bias == pytest.approx(0.0, abs=0.5)


def test_leader_bias_is_removed_when_several_candidates_tie_at_the_top():
    # Three candidates of equal true accuracy 0.80 and B truly 10 points behind: B must not be stopped.
    # The observed leader is the best of three noisy scores, so the observed gap overstates 10 points: the
    # point rule stops B ~70% of the time, a paired CI against the observed leader alone ~7% (measured on
    # 600 draws), the guard's interval, simultaneous over the candidates, ~3% (the nominal one-sided 2.5%).
    stopped = {"point": 0, "guard": 0}
    biases = []
    sims = 120
    for k in range(sims):
        entries = [counted(f"A{j}", synthetic_counts(0.80, seed=1000 * k + j, groups=30, shared_sd=0.0))
                   for j in range(3)]
        entries.append(counted("B", synthetic_counts(0.70, seed=1000 * k + 9, groups=30, shared_sd=0.0)))
        for rule, guard in (("point", False), ("guard", True)):
            d = judge_rung(entries, rung=5, gap=10.0, noise_guard=guard, n_boot=300, seed=k)[0][3]
            stopped[rule] += d.stopped
        biases.append(d.leader_bias)
    assert np.mean(biases) > 0.5  # points: the max of three noisy scores is biased upwards
    assert stopped["point"] > 0.5 * sims and stopped["guard"] <= 0.05 * sims, stopped


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
    # A decision written before rule / interval / epoch / final existed still reads.
    old = {k: v for k, v in ds[0].to_dict().items() if k not in ("rule", "gap_ci", "leader_bias", "epoch", "final")}
    assert Decision.from_dict(old).rule == "point" and Decision.from_dict(old).final is False
