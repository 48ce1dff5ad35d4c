"""Which model ``pianoray export`` takes from a finished run's results (the whole path runs in test_run_e2e)."""

from __future__ import annotations

import pytest

from pianoray.protocol.export import ExportError, choose

WINNERS = {"audio": "A1", "symbolic": "S2"}


def results(final: dict | None = None, winners: dict | None = None, fusion_winner: str | None = None) -> dict:
    fusion = None if final is None else {"final": final, "winner": fusion_winner}
    return {"winners": winners if winners is not None else WINNERS, "fusion": fusion}


def test_the_final_model_by_default_with_its_reason() -> None:
    final = {"model": "F3", "kind": "fusion", "reason": "F3 beats A1 by +4.0 points"}
    name, why = choose(results(final, fusion_winner="F3"))
    assert name == "F3" and "final model" in why and "F3 beats A1" in why
    name, why = choose(results({"model": "A1", "kind": "single", "reason": "no fusion beats A1"}))
    assert (name, why.endswith("no fusion beats A1")) == ("A1", True)


def test_a_track_or_an_experiment_when_asked() -> None:
    r = results({"model": "F3", "kind": "fusion", "reason": "x"}, fusion_winner="F2")
    assert choose(r, track="symbolic")[0] == "S2" and choose(r, track="fusion")[0] == "F2"
    assert choose(r, experiment="S2H") == ("S2H", "asked for with --experiment")
    with pytest.raises(ExportError, match="--track timing: the run has no timing winner .*audio=A1, symbolic=S2"):
        choose(r, track="timing")


def test_without_a_final_model_one_winner_is_taken_and_two_are_asked_about() -> None:
    assert choose(results(winners={"audio": None, "symbolic": "S2"}))[0] == "S2"
    with pytest.raises(ExportError, match=r"give --track \(audio, symbolic\)"):
        choose(results())
    with pytest.raises(ExportError, match="selected no winner"):
        choose(results(winners={"audio": None, "symbolic": None}))
