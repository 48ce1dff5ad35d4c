"""TrackGapScheduler driven by scripted result streams, fake trials and a fake controller (no cluster).

The fake controller (tests/protocol/fake_tune.py) does what Ray's TuneController does with a decision: PAUSE -> status PAUSED;
STOP -> ``stop_trial`` (which calls ``on_trial_complete`` for a RUNNING trial, ``on_trial_remove`` for a
PAUSED/PENDING one); and it resumes only what ``choose_trial_to_run`` returns.
"""

from __future__ import annotations

import logging
import math

import pytest
from ray.tune.experiment import Trial

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.decisions import Decision, MissingStatistics
from pianoray.protocol.scheduler import TrackGapScheduler
from pianoray.records import SELECTION_METRIC
from tests.protocol.fake_tune import CONTINUE, PAUSE, STOP, FakeController
from tests.protocol.synthetic_counts import synthetic_counts

METRIC = SELECTION_METRIC


class FakeTrial:
    def __init__(self, experiment: str, track: str, role: str = "candidate", trial_id: str | None = None):
        self.trial_id = trial_id or f"id-{experiment}"
        self.config = {"experiment": experiment, "track": track, "role": role}
        self.status = Trial.PENDING
        self.is_saving = False

    def __repr__(self) -> str:
        return self.config["experiment"]


def setup(*specs, **kw):
    log: list[Decision] = []
    sched = TrackGapScheduler(metric=METRIC, rungs=kw.pop("rungs", [5, 10]), on_decision=log.append, **kw)
    trials = {s[0]: FakeTrial(*s) for s in specs}
    return sched, FakeController(sched, list(trials.values())), trials, log


def by_exp(decisions):
    return {d.experiment: d for d in decisions}


def test_sync_pauses_until_track_reported_then_stops_losers_and_resumes_winners():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), ("A3", "audio"))
    assert tc.report(t["A1"], 4, 0.70) == CONTINUE  # before the rung
    assert tc.report(t["A1"], 5, 0.80) == PAUSE
    assert tc.report(t["A2"], 5, 0.65) == PAUSE
    assert log == []
    assert tc.report(t["A3"], 5, 0.70) == CONTINUE  # exactly 10 points behind: within
    d = by_exp(log)
    assert {k: v.decision for k, v in d.items()} == {"A1": "continue", "A2": "stop", "A3": "continue"}
    assert t["A2"].status == Trial.TERMINATED and "A1" in d["A2"].reason and d["A2"].leader == "A1"
    assert tc.resumable() == {"A1"}  # the paused winner comes back through choose_trial_to_run
    assert tc.report(t["A1"], 6, 0.81) == CONTINUE


def test_all_within_gap_all_continue():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    assert tc.report(t["A1"], 5, 0.72) == PAUSE
    assert tc.report(t["A2"], 5, 0.80) == CONTINUE
    assert [d.decision for d in log] == ["continue", "continue"]
    assert tc.resumable() == {"A1"}


def test_tie_is_within_gap():
    sched, tc, t, log = setup(("S1", "symbolic"), ("S2", "symbolic"))
    tc.report(t["S1"], 5, 0.7)
    assert tc.report(t["S2"], 5, 0.7) == CONTINUE
    assert all(d.decision == "continue" for d in log) and by_exp(log)["S2"].gap_points == 0.0


def test_track_with_one_candidate_continues_without_waiting():
    sched, tc, t, log = setup(("A1", "audio"), ("S1", "symbolic"))
    assert tc.report(t["S1"], 5, 0.40) == CONTINUE  # does not wait for the audio track
    assert len(log) == 1 and log[0].decision == "continue" and "leads" in log[0].reason


def test_errored_trial_no_longer_blocks_the_rung():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), ("A3", "audio"))
    assert tc.report(t["A1"], 5, 0.80) == PAUSE
    assert tc.report(t["A2"], 5, 0.60) == PAUSE
    tc.error(t["A3"])  # the last one due errors: the rung is decided without it
    assert {d.experiment: d.decision for d in log} == {"A1": "continue", "A2": "stop"}
    assert t["A2"].status == Trial.TERMINATED
    assert tc.resumable() == {"A1"}


def test_removed_pending_trial_no_longer_blocks_the_rung():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    assert tc.report(t["A1"], 5, 0.80) == PAUSE
    tc.stop_trial(t["A2"])  # PENDING trial removed -> on_trial_remove
    assert [d.experiment for d in log] == ["A1"] and tc.resumable() == {"A1"}


def test_late_arrival_is_judged_against_the_recorded_leader():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    tc.report(t["A1"], 5, 0.80)
    tc.report(t["A2"], 5, 0.75)
    late_bad, late_good = FakeTrial("A3", "audio"), FakeTrial("A4", "audio")
    tc.add(late_bad)
    tc.add(late_good)
    assert tc.report(late_bad, 5, 0.65) == STOP  # no pause: the rung was decided at leader 0.80
    d = by_exp(log)["A3"]
    assert d.leader == "A1" and d.leader_metric == 0.80 and d.gap_points == pytest.approx(15.0)
    assert tc.report(late_good, 5, 0.85) == CONTINUE  # better than the recorded leader: continues


def test_retried_trial_rejoins_as_late_arrival():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    tc.report(t["A1"], 5, 0.80)
    tc.error(t["A2"])  # Tune requeues a trial with retries left: on_trial_error then on_trial_add
    t["A2"].status = Trial.PENDING
    sched.on_trial_add(tc, t["A2"])
    assert tc.report(t["A2"], 5, 0.50) == STOP and by_exp(log)["A2"].leader == "A1"


def test_nan_metric_is_stopped_and_never_leads():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    tc.report(t["A1"], 5, float("nan"))
    assert tc.report(t["A2"], 5, 0.30) == CONTINUE
    d = by_exp(log)
    assert d["A1"].decision == "stop" and "metric is NaN" in d["A1"].reason
    assert d["A2"].leader == "A2" and t["A1"].status == Trial.TERMINATED


def test_missing_metric_counts_as_nan():
    sched, tc, t, log = setup(("A1", "audio"))
    assert sched.on_trial_result(tc, t["A1"], {"epoch": 5}) == STOP
    assert math.isnan(log[0].metric)


def test_reference_never_leads_but_can_be_stopped():
    sched, tc, t, log = setup(("ref", "audio", "reference"), ("A1", "audio"), ("A2", "audio"), ("A3", "audio"))
    tc.report(t["ref"], 5, 0.95)
    tc.report(t["A1"], 5, 0.70)
    tc.report(t["A2"], 5, 0.64)
    assert tc.report(t["A3"], 5, 0.40) == STOP
    d = by_exp(log)
    assert {k: v.decision for k, v in d.items()} == {"ref": "continue", "A1": "continue", "A2": "continue", "A3": "stop"}
    assert all(v.leader == "A1" for v in d.values())
    assert tc.resumable() == {"ref", "A1", "A2"}


def test_two_tracks_are_decided_independently():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), ("S1", "symbolic"), ("S2", "symbolic"))
    assert tc.report(t["A1"], 5, 0.95) == PAUSE
    assert tc.report(t["S1"], 5, 0.60) == PAUSE
    assert tc.report(t["S2"], 5, 0.45) == STOP  # symbolic decided while audio still waits for A2
    assert {d.experiment for d in log} == {"S1", "S2"} and by_exp(log)["S1"].decision == "continue"
    assert tc.report(t["A2"], 5, 0.90) == CONTINUE
    assert by_exp(log)["A1"].decision == "continue" and tc.resumable() == {"A1", "S1"}


def test_second_rung_and_skipped_epochs():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), rungs=[5, 10])
    tc.report(t["A1"], 5, 0.8)
    tc.report(t["A2"], 5, 0.75)
    tc.resumable()
    assert tc.report(t["A1"], 12, 0.85) == PAUSE  # jumped past rung 10: judged there with this metric
    assert tc.report(t["A2"], 10, 0.70) == STOP
    assert [d.event_id for d in log][-2:] == ["rung10:A1", "rung10:A2"]


def test_running_loser_is_stopped_at_its_next_report():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    tc.report(t["A1"], 5, 0.5)
    t["A1"].status = Trial.RUNNING  # e.g. its pause had not been applied yet
    assert tc.report(t["A2"], 5, 0.9) == CONTINUE
    assert by_exp(log)["A1"].decision == "stop" and t["A1"].status == Trial.RUNNING
    assert tc.report(t["A1"], 6, 0.5) == STOP


def test_async_decides_at_once_against_best_so_far():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), ("A3", "audio"), sync=False)
    assert tc.report(t["A1"], 5, 0.60) == CONTINUE  # leads so far
    assert tc.report(t["A2"], 5, 0.80) == CONTINUE
    assert tc.report(t["A3"], 5, 0.65) == STOP
    assert [d.mode for d in log] == ["async"] * 3 and by_exp(log)["A3"].leader == "A2"


def test_every_decision_reaches_on_decision_once_and_is_logged(caplog):
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    with caplog.at_level(logging.INFO, logger="pianoray.protocol.scheduler"):
        tc.report(t["A1"], 5, 0.8)
        tc.report(t["A2"], 5, 0.6)
    assert sorted(d.event_id for d in log) == ["rung5:A1", "rung5:A2"]
    assert sched.decisions == log
    lines = [r.getMessage() for r in caplog.records]
    assert any("rung5:A2 STOP" in line and "gap" in line for line in lines)


def _uninterrupted_run():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), ("A3", "audio"))
    for exp, m in [("A1", 0.8), ("A2", 0.6), ("A3", 0.75)]:
        tc.report(t[exp], 5, m)
    tc.resumable()
    for exp, m in [("A1", 0.85), ("A3", 0.70)]:
        tc.report(t[exp], 10, m)
    return log


def test_prior_decisions_are_reapplied_after_resume():
    full = _uninterrupted_run()
    prior = [d for d in full if d.rung == 5]  # the run died between rung 5 and rung 10
    log: list[Decision] = []
    sched = TrackGapScheduler(metric=METRIC, rungs=[5, 10], on_decision=log.append, prior_decisions=prior)
    # New trial ids (a fresh Tuner): decisions are keyed by experiment.
    t = {e: FakeTrial(e, "audio", trial_id=f"new-{e}") for e in ("A1", "A2", "A3")}
    tc = FakeController(sched, list(t.values()))
    assert tc.report(t["A2"], 6, 0.99) == STOP  # stopped at rung 5 before: stopped again at once
    assert tc.report(t["A1"], 6, 0.82) == CONTINUE  # rung 5 not re-decided, no waiting
    assert tc.report(t["A1"], 10, 0.85) == PAUSE
    assert tc.report(t["A3"], 10, 0.70) == STOP  # 15 points behind, as in the uninterrupted run
    assert [d.event_id for d in log] == ["rung10:A1", "rung10:A3"]  # only new decisions are written
    key = lambda d: (d.event_id, d.decision, d.leader, d.leader_metric)  # noqa: E731
    assert sorted(map(key, sched.decisions)) == sorted(map(key, full))


def test_prior_decisions_judge_late_arrivals_with_the_recorded_leader():
    prior = [d for d in _uninterrupted_run() if d.rung == 5]
    log: list[Decision] = []
    sched = TrackGapScheduler(metric=METRIC, rungs=[5, 10], on_decision=log.append, prior_decisions=prior + prior)
    assert len(sched.decisions) == len(prior)  # duplicates in the ledger are ignored
    tc = FakeController(sched, [FakeTrial("A4", "audio")])
    assert tc.report(tc.trials[0], 5, 0.69) == STOP and log[0].leader_metric == 0.8


class CountsSource:
    """The scheduler's ``pair_counts(experiment, epoch)`` over a dict (a run reads the ledger instead)."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], PairCounts] = {}
        self.reads: list[tuple[str, int]] = []

    def put(self, experiment: str, epoch: int, counts: PairCounts) -> float:
        self.counts[(experiment, epoch)] = counts
        return counts.accuracy()

    def __call__(self, experiment: str, epoch: int) -> PairCounts | None:
        self.reads.append((experiment, epoch))
        return self.counts.get((experiment, epoch))


def test_noise_guard_keeps_trial_whose_gap_interval_crosses_threshold():
    src = CountsSource()
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), noise_guard=True, pair_counts=src)
    tc.report(t["A1"], 5, src.put("A1", 5, synthetic_counts(0.80, seed=1, groups=8, dims=1)))
    action = tc.report(t["A2"], 5, src.put("A2", 5, synthetic_counts(0.68, seed=2, groups=8, dims=1)))
    d = by_exp(log)["A2"]
    assert action == CONTINUE and d.decision == "continue" and d.gap_points > 10.0 and d.gap_ci[0] <= 10.0
    assert d.rule == "guard" and d.epoch == 5 and by_exp(log)["A1"].gap_ci is not None


def test_point_rule_records_the_interval_too():
    src = CountsSource()
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), pair_counts=src)
    tc.report(t["A1"], 5, src.put("A1", 5, synthetic_counts(0.80, seed=1, groups=8, dims=1)))
    assert tc.report(t["A2"], 5, src.put("A2", 5, synthetic_counts(0.68, seed=2, groups=8, dims=1))) == STOP
    assert all(d.rule == "point" and d.gap_ci is not None for d in log)


def test_noise_guard_without_statistics_fails_at_once():
    with pytest.raises(ValueError, match="noise_guard needs pair_counts"):
        TrackGapScheduler(rungs=[5], noise_guard=True)
    src = CountsSource()
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), noise_guard=True, pair_counts=src)
    tc.report(t["A1"], 5, src.put("A1", 5, synthetic_counts(0.80, seed=1)))
    with pytest.raises(MissingStatistics, match="A2 has no pair counts for epoch 5"):
        tc.report(t["A2"], 5, 0.6)  # reported, but its counts were never recorded
    assert isinstance(sched.failure, MissingStatistics) and log == []


def test_late_arrival_after_resume_is_judged_with_the_rivals_counts():
    src = CountsSource()
    first, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), pair_counts=src, rungs=[5])
    tc.report(t["A1"], 5, src.put("A1", 5, synthetic_counts(0.80, seed=1)))
    tc.report(t["A2"], 5, src.put("A2", 5, synthetic_counts(0.78, seed=2)))
    # A new session: the decisions come from the ledger, the counts from the source, by the epoch recorded.
    sched = TrackGapScheduler(metric=METRIC, rungs=[5], noise_guard=True, pair_counts=src, prior_decisions=log)
    tc2 = FakeController(sched, [FakeTrial("A4", "audio")])
    assert tc2.report(tc2.trials[0], 5, src.put("A4", 5, synthetic_counts(0.50, seed=4))) == STOP
    d = sched.decisions[-1]
    assert d.experiment == "A4" and d.leader == "A1" and d.gap_ci[0] > 10.0
    assert {("A1", 5), ("A2", 5)} <= set(src.reads)


def test_final_rung_stops_a_trial_that_fell_behind_after_the_last_rung():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), rungs=[5], final_rung=10)
    tc.report(t["A1"], 5, 0.80)
    assert tc.report(t["A2"], 5, 0.78) == CONTINUE
    tc.resumable()
    # A1 ends first (its last report): nothing pauses at the final rung, A1's verdict waits for A2.
    assert tc.report(t["A1"], 10, 0.85, stop=True) == CONTINUE
    tc.stop_trial(t["A1"])  # the trial finishes
    assert [d.rung for d in log] == [5, 5]
    assert tc.report(t["A2"], 10, 0.70, stop=True) == STOP  # 15 points behind at the end
    final = {d.experiment: d for d in log if d.rung == 10}
    assert final["A2"].decision == "stop" and final["A2"].final and final["A2"].event_id == "rung10:A2"
    assert final["A1"].decision == "continue" and "final rung" in final["A1"].reason  # ended, still recorded


def test_final_rung_is_reached_by_an_early_stop_and_by_the_budget():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), rungs=[5], final_rung=10)
    tc.report(t["A1"], 5, 0.80)
    tc.report(t["A2"], 5, 0.79)
    tc.resumable()
    assert tc.report(t["A2"], 7, 0.60, stop=True) == CONTINUE  # patience: its last report, at epoch 7
    assert tc.report(t["A1"], 10, 0.81) == CONTINUE  # no stop flag, but the budget is the final rung
    final = {d.experiment: d for d in log if d.final}
    assert set(final) == {"A1", "A2"} and final["A2"].decision == "stop" and final["A1"].decision == "continue"


def test_last_report_paused_at_a_rung_still_counts_at_the_final_rung():
    # A1's budget ends exactly at the last listed rung: its last report pauses there.
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), rungs=[5], final_rung=10)
    assert tc.report(t["A1"], 5, 0.60, stop=True) == PAUSE
    assert tc.report(t["A2"], 5, 0.62) == CONTINUE
    assert tc.resumable() == {"A1"}
    tc.stop_trial(t["A1"])  # resumed, nothing left to train: it ends without another report
    tc.report(t["A2"], 10, 0.75, stop=True)
    final = {d.experiment: d for d in log if d.final}
    assert final["A1"].decision == "stop" and final["A1"].metric == 0.60 and final["A1"].gap_points == pytest.approx(15)


def test_final_rung_in_async_mode_judges_on_arrival():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"), rungs=[5], final_rung=10, sync=False)
    assert tc.report(t["A2"], 5, 0.78) == CONTINUE  # alone at rung 5 so far: it leads there
    assert tc.report(t["A1"], 10, 0.85, stop=True) == CONTINUE  # passes rung 5, then leads the final rung
    assert tc.report(t["A2"], 10, 0.70, stop=True) == STOP
    final = [(d.experiment, d.decision, d.mode) for d in log if d.final]
    assert final == [("A1", "continue", "async"), ("A2", "stop", "async")]


def test_invalid_arguments_and_configs_are_named():
    with pytest.raises(ValueError, match="rungs"):
        TrackGapScheduler(rungs=[10, 5])
    with pytest.raises(ValueError, match="gap"):
        TrackGapScheduler(gap=0)
    sched = TrackGapScheduler()
    bad = FakeTrial("A1", "audio")
    del bad.config["track"]
    with pytest.raises(ValueError, match="config\\['track'\\]"):
        sched.on_trial_add(None, bad)
    sched.on_trial_add(None, FakeTrial("A1", "audio", trial_id="x"))
    with pytest.raises(ValueError, match="share config\\['experiment'\\]='A1'"):
        sched.on_trial_add(None, FakeTrial("A1", "audio", trial_id="y"))
    assert sched.set_search_properties("val/pairwise_accuracy", "max") is True
    assert sched.set_search_properties("val/loss", None) is False
    assert not TrackGapScheduler().supports_buffered_results


def test_rung_waiting_on_a_trial_that_is_stopped_at_an_earlier_rung_is_released():
    prior = [d for d in _uninterrupted_run() if d.rung == 5]
    sched = TrackGapScheduler(metric=METRIC, rungs=[5, 10], prior_decisions=prior)
    a1, a3, a4 = FakeTrial("A1", "audio"), FakeTrial("A3", "audio"), FakeTrial("A4", "audio")
    tc = FakeController(sched, [a1, a3, a4])
    assert tc.report(a3, 10, 0.84) == PAUSE
    assert tc.report(a1, 10, 0.85) == PAUSE  # both wait for the newcomer A4 to reach rung 10 (or leave)
    assert tc.report(a4, 5, 0.50) == STOP  # A4 fails rung 5 against the recorded leader ...
    assert {d.experiment for d in sched.decisions if d.rung == 10} == {"A1", "A3"}  # ... releasing rung 10
    assert tc.resumable() == {"A1", "A3"}


def test_loser_still_saving_its_pause_checkpoint_is_stopped_through_the_controller():
    sched, tc, t, log = setup(("A1", "audio"), ("A2", "audio"))
    tc.report(t["A1"], 5, 0.5)
    t["A1"].status, t["A1"].is_saving = Trial.RUNNING, True  # Tune: pause requested, checkpoint in flight
    assert tc.report(t["A2"], 5, 0.9) == CONTINUE
    assert t["A1"].status == Trial.TERMINATED and by_exp(log)["A1"].decision == "stop"
