"""The records that cross layers, and their one conversion to and from Ray's result dicts."""

from __future__ import annotations

import json

from pianoray.records import SELECTION_METRIC, EpochRecord, FoldScore, reportable


def test_a_fold_score_carries_the_pair_counts_as_one_json_string_and_back() -> None:
    counts = {"val": {"groups": ["p0"], "correct": [[1.5]], "total": [[2.0]]},
              "test": {"groups": ["p1", "p2"], "correct": [[1.0], [0.0]], "total": [[1.0], [1.0]]}}
    scores = {"pairwise_accuracy": 0.5, "r2": 0.1, "pairwise_accuracy_per_dim": [0.5], "difficulty_rho": None,
              "pair_counts": counts}
    score = FoldScore.from_scores("S2", 1, scores)
    out = score.to_report()
    assert out["final"] is True and (out["experiment"], out["fold"], out["round"]) == ("S2", 1, "round2")
    assert out["test/pairwise_accuracy"] == 0.5 and "test/difficulty_rho" not in out  # None: dropped
    assert "test/pair_counts" not in out and json.loads(out["pair_counts"]) == counts
    assert "pair_counts" in scores  # the caller's dict is left alone
    assert "pair_counts" not in FoldScore.from_scores("S2", 1, {"pairwise_accuracy": 0.5}).to_report()
    back = FoldScore.from_report({**out, "trial_id": "abc", "timestamp": 1}, "S2", 1)
    assert back.pair_counts == counts and back.test == {k: v for k, v in scores.items()
                                                       if k != "pair_counts" and v is not None}
    assert back.ledger_payload() == {"test": back.test, "pair_counts": counts}


def test_test_values_that_are_not_short_number_lists_travel_as_json_and_come_back_whole() -> None:
    scores = {"planted_passages": ["p0", "p1"], "planted_correct": [1.0] * 70, "gates": [0.2, 0.8],
              "per_dim": [0.5, None], "why": "text"}
    out = FoldScore.from_scores("F3", 0, scores, "round3").to_report()
    # nothing Ray's loggers would trip over (a list of names) or drop (more than 64 items)
    assert out["test/planted_passages"] == 'json:["p0","p1"]' and out["test/gates"] == [0.2, 0.8]
    assert out["test/planted_correct"].startswith("json:[1.0,") and out["test/why"] == "text"
    assert FoldScore.from_report(out, "F3", 0, "round3").test == scores


def test_an_epoch_record_round_trips_through_a_ray_result() -> None:
    rec = EpochRecord(epoch=3, stage="supervised", best_epoch=2, best_metric=0.71, stop=False, early_stopped=False,
                      rung_epoch=3, seconds=1.5, samples=64,
                      metrics={SELECTION_METRIC: 0.7, "val/r2": 0.2, "train/total": 0.9, "lr": 1e-4,
                               "selectable": True, "val/pairwise_accuracy_ci": [0.6, 0.8]})
    report = rec.to_report(experiment="S1", fold=0, round="round1")
    assert EpochRecord.is_report(report) and not EpochRecord.is_report({**report, "final": True})
    ray_result = {**report, "training_iteration": 7, "trial_id": "t1", "time_this_iter_s": 0.1}
    kept = EpochRecord.ledger_fields(ray_result)
    assert kept == rec.flat()  # Ray's own bookkeeping and the extras stay out of the ledger; the rest intact
    assert rec.selectable


def test_reportable_keeps_scalars_and_short_lists() -> None:
    assert reportable({"a": 1, "b": None, "c": [0.0] * 64, "d": [0.0] * 65, "e": {"x": 1}, "f": "s"}) == {
        "a": 1, "c": [0.0] * 64, "f": "s"}
