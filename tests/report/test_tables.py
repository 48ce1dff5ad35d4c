"""Comparison, decision, fold and resource tables from a fake run."""

from __future__ import annotations

import copy
import math

from rich.console import Console

from pianoray.report.tables import (
    comparison_data,
    comparison_markdown,
    comparison_rows,
    comparison_table,
    decision_rows,
    decisions_table,
    difficulty_data,
    error_correlation_text,
    final_reference_text,
    fold_data,
    fusion_data,
    fusion_text,
    hours_unit,
    md_text,
    planted_data,
    planted_text,
    resource_data,
    to_markdown,
)
from tests.report.conftest import add_fusion, add_search, strip_optional


def _render(table) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(table)
    return console.export_text()


def test_symbolic_rows_order_candidates_by_pairwise_then_references(run_results):
    rows = comparison_rows(run_results, "symbolic")
    # S2 beats S2H on pairwise but was vetoed: it still lists first; the reference comes last.
    assert [r["experiment"] for r in rows] == ["S2", "S2H", "S1 (ref)"]
    s2, s2h, s1 = rows
    assert s2h["winner"] and not s2["winner"] and not s1["winner"]
    assert s2["status"] == "vetoed" and s2["robustness_drop"] == 0.21
    assert math.isclose(s2h["pairwise"], 0.752) and math.isclose(s2h["pairwise_ci"][1], 0.782)
    assert math.isclose(s2h["r2"], 0.47) and s2h["folds"] == 4
    assert s2h["hours_unit"] == "GPU" and s2h["hours"] == 1.1
    assert s1["role"] == "reference" and s1["name"] == "S1"


def test_round2_experiments_precede_round1_even_with_lower_pairwise(run_results):
    run_results["experiments"][1]["pairwise_accuracy"]["mean"] = 0.95  # A2: Round-1 only, fold 0
    assert [r["name"] for r in comparison_rows(run_results, "audio")] == ["A1", "A2"]


def test_unmeasured_pairwise_sorts_last(run_results):
    run_results["experiments"][3]["pairwise_accuracy"] = None  # S2
    assert [r["name"] for r in comparison_rows(run_results, "symbolic")] == ["S2H", "S2", "S1"]


def test_hours_column_is_cpu_when_no_gpu_was_used(run_results):
    assert comparison_data(run_results, "audio").columns[7] == "GPU-hours"
    for e in run_results["experiments"]:
        e["resource_hours"]["gpu_hours"] = 0.0
    assert hours_unit(run_results, "audio") == "CPU"
    data = comparison_data(run_results, "audio")
    assert data.columns[7] == "CPU-hours"
    assert data.rows[0][7] == "10.00"  # A1's CPU-hours, not its zero GPU-hours
    assert "CPU-hours" in data.note


def test_comparison_markdown_content(run_results):
    md = comparison_markdown(run_results, "symbolic")
    lines = md.strip().splitlines()
    assert lines[0] == "| Experiment | R2 | Pairwise | Difficulty rho | Robustness | Test R2 | Test pairwise | GPU-hours | Round | Status |"
    assert lines[1].count("---") == 10
    assert lines[2].startswith("| S2 | 0.450 ± 0.040 | 78.0% ± 3.0 | 0.550 | 21.0% | 0.430 | 77.0% | 0.90 | round2 | vetoed |")
    assert lines[3].startswith("| **S2H** |") and "**winner**" in lines[3]  # the winner is bold
    assert lines[4].startswith("| S1 (ref) |") and "| — |" in lines[4]  # no robustness measured


def test_markdown_escapes_pipes_and_html(run_results):
    run_results["experiments"][0]["name"] = "A1|<b>x</b>"
    run_results["winners"]["audio"] = "A1|<b>x</b>"
    md = comparison_markdown(run_results, "audio")
    assert "A1\\|\\<b\\>x\\</b\\>" in md and "<b>" not in md
    header = md.splitlines()[0]
    assert all(line.count(" | ") - line.count("\\| ") == header.count(" | ") for line in md.splitlines()[2:])
    assert md_text("a_b*c") == "a\\_b\\*c"


def test_rich_comparison_table_renders(run_results):
    text = _render(comparison_table(run_results, "audio"))
    assert "GPU-hours" in text and "Difficulty rho" in text
    assert "80.1% ± 3.0" in text and "eliminated" in text


def test_decision_rows_stops_first_within_rung(run_results):
    rows = decision_rows(run_results)
    assert len(rows) == 9
    first = rows[0]
    assert (first["rung"], first["experiment"], first["decision"]) == (10, "A2", "stop")
    assert first["gap_points"] == 14.2 and "10-point gap" in first["reason"]
    assert [r["rung"] for r in rows] == sorted(r["rung"] for r in rows)
    text = _render(decisions_table(run_results))
    assert "A1 (74.2%)" in text and "14.2" in text


def test_fold_and_resource_tables(run_results):
    folds = fold_data(run_results)
    assert len(folds.rows) == 16  # 4 Round-2 experiments x 4 folds; A2 never reached Round 2
    assert folds.rows[0][:4] == ["A1", "audio", "0", "78.6%"] and folds.rows[0][-1] == "20 / 40"
    res = resource_data(run_results)
    assert res.rows[-1][0] == "Total" and res.highlight[-1]
    assert res.rows[-1][3] == f"{1.25 + 0.1 + 0.0 + 0.9 + 1.1:.2f}"


def test_missing_fields_render_as_dashes(run_results):
    bare = strip_optional(run_results)
    rows = comparison_rows(bare, "symbolic")
    assert all(r["pairwise"] is None and r["hours"] is None and not r["winner"] for r in rows)
    md = comparison_markdown(bare, "symbolic") + to_markdown(fold_data(bare)) + to_markdown(resource_data(bare))
    assert "— | —" in md and "_(none)_" in md  # no folds at all: an explicit empty row
    assert "stop" in _render(decisions_table(bare))


def test_nan_metrics_count_as_missing(run_results):
    r = copy.deepcopy(run_results)
    r["experiments"][0]["pairwise_accuracy"] = {"mean": float("nan"), "ci": [float("nan"), 1.0], "per_dim": []}
    row = comparison_rows(r, "audio")[0]
    assert row["name"] == "A1" and row["pairwise"] is None and row["pairwise_ci"] is None


def test_margin_and_reference_tables(run_results):
    from pianoray.report.tables import margin_data, reference_data

    margins = margin_data(run_results)
    assert [r[:3] for r in margins.rows] == [["audio", "A1", "—"], ["symbolic", "S2H", "—"]]
    assert "within 0.5 points" in margins.note
    run_results["selection"]["audio"]["margin"].update(runner_up="A3", runner_up_mean=0.797, gap_points=0.4,
                                                       ci_points=[-2.1, 2.9], statistical_tie=True)
    row = margin_data(run_results).rows[0]
    assert row[2:] == ["A3", "80.1%", "79.7%", "+0.4", "-2.1 to +2.9", "statistical tie", "pairwise"]
    assert margin_data(run_results).highlight == [True, False]  # a tie stands out

    refs = reference_data(run_results)
    assert refs.rows == [["symbolic", "S2H", "S1", "74.2%", "69.2%", "+5.0", "+1.2 to +8.8", "beats"]]
    assert "never used to choose" in refs.note
    bare = strip_optional(run_results)
    assert margin_data(bare).rows == [] and reference_data(bare).rows == []


def test_a_tracks_recorded_metrics_pick_its_columns(run_results):
    """A figure the scorer adds (here ``test.pairwise_accuracy_t0``) reaches a track's table through the run's
    recorded TrackSpec metrics: a path into the experiment row; a known path gets its title and format, any
    other shows as a number under its own name."""
    for e in run_results["experiments"]:
        if e.get("test"):
            e["test"]["pairwise_accuracy_t0"] = {"mean": 0.612, "ci": [0.6, 0.62], "n": 4}
    run_results["tracks"] = [
        {"name": "audio", "order": 0, "robustness_veto": True, "metrics": ["difficulty_rho", "robustness.drop"]},
        {"name": "symbolic", "order": 1, "robustness_veto": False,
         "metrics": ["test.pairwise_accuracy", "test.pairwise_accuracy_t0"]},
    ]
    data = comparison_data(run_results, "symbolic")
    assert data.columns[3:5] == ["Test pairwise", "test.pairwise_accuracy_t0"]
    s2 = next(row for row in data.rows if row[0] == "S2")
    assert s2[4] == "0.612" and s2[3].endswith("%")
    assert "Robustness" not in data.note
    assert comparison_data(run_results, "audio").columns[3:5] == ["Difficulty rho", "Robustness"]
    assert "veto over 15%" in comparison_data(run_results, "audio").note


def test_a_table_showing_stop_auc_says_what_it_left_out(run_results):
    """STOP AUC leaves one recording out at a time; on a corpus without recordings (the demo) the performer
    stands in, and the table's note says which, from the folds' record (``stop_group``)."""
    run_results["tracks"] = [{"name": "audio", "order": 0, "metrics": ["stop_auc"]}]
    audio = [e for e in run_results["experiments"] if e.get("track") == "audio" and e.get("test")]
    assert "STOP AUC" not in comparison_data(run_results, "audio").note  # no figure, nothing to explain
    audio[0].update(stop_auc=0.71, stop_group="performer")
    note = comparison_data(run_results, "audio").note
    assert "leaving one performer out at a time (this corpus has no recordings" in note
    audio[0]["stop_group"] = "recording"
    assert "leaving one recording out at a time." in comparison_data(run_results, "audio").note


def test_the_default_columns_show_the_held_out_figures(run_results):
    """Without a track's own list, every comparison table shows test R2 and test pairwise (mean over the
    Round-2 folds' held-out parts) beside the validation figures; rows without test scores show the dash."""
    run_results.pop("tracks", None)
    data = comparison_data(run_results, "symbolic")
    assert data.columns[3:7] == ["Difficulty rho", "Robustness", "Test R2", "Test pairwise"]
    tested = [e for e in run_results["experiments"] if e.get("track") == "symbolic" and e.get("test")]
    assert tested, "the fixture has Round-2 test scores"
    row = next(r for r in data.rows if r[0].split()[0] == tested[0]["name"])
    assert row[5] == f"{tested[0]['test']['r2']['mean']:.3f}" and row[6].endswith("%")


def test_search_table_has_one_row_per_configuration_with_its_parameters_and_outcome(run_results):
    from pianoray.report.tables import search_data

    data = search_data(add_search(run_results), "A1")
    assert data.title == "Search: A1"
    assert data.columns == ["Configuration", "rank", "lr", "dropout", "State", "Rung", "Pairwise", "Epochs",
                            "GPU-hours"]  # the audio track used a GPU
    assert data.rows == [
        ["A1.c0", "31", "5.80e-03", "0.123", "stopped at rung 3", "3", "61.2%", "3", "0.05"],
        ["A1.c1 (best)", "36", "4.86e-04", "0.25", "complete", "10", "74.2%", "10", "0.20"],
    ]
    assert data.highlight == [False, True]


def test_search_text_counts_outcomes_names_the_promotion_and_the_importances(run_results):
    from pianoray.report.tables import search_text

    add_search(run_results, importance={"model.lora.rank": 0.15, "optim.lr": 0.8, "model.dropout": 0.05})
    assert search_text(run_results, "A1") == (
        "2 configurations of A1 were screened in Round 1: 1 completed, 1 stopped at rung 3. A1.c1 went to "
        "Round 2 as A1. Parameter importance over 1 completed configuration (fANOVA; indicative only with "
        "this few): lr 80%, rank 15%, dropout 5%.")


def test_search_while_round1_runs_shows_dashes_and_no_promotion(run_results):
    from pianoray.report.tables import search_data, search_text

    search = add_search(run_results)["experiments"][0]["search"]
    search["configs"][1].update(state="running", rung=None, value=None)
    search.update(best=None, promoted={})
    assert search_data(run_results, "A1").rows[1][:8] == ["A1.c1", "36", "4.86e-04", "0.25", "running", "—", "—",
                                                          "10"]
    assert search_text(run_results, "A1").endswith("1 stopped at rung 3, 1 still running. No configuration has "
                                                   "gone to Round 2 yet.")


def test_search_text_groups_stops_by_rung(run_results):
    from pianoray.report.tables import search_text

    search = add_search(run_results)["experiments"][0]["search"]
    c0 = search["configs"][0]
    search["configs"] += [dict(c0, id="A1.c2", stopped_at=10), dict(c0, id="A1.c3", state="failed"),
                          dict(c0, id="A1.c4")]
    assert search_text(run_results, "A1").startswith(
        "5 configurations of A1 were screened in Round 1: 1 completed, 3 stopped (2 at rung 3, 1 at rung 10), "
        "1 failed. A1.c1 went to Round 2 as A1.")


def test_parameter_headers_and_values():
    from pianoray.report.tables import fmt_param, param_headers

    assert param_headers(["optim.lr", "model.lora.rank", "head.lr"]) == {
        "optim.lr": "optim.lr", "model.lora.rank": "rank", "head.lr": "head.lr"}  # a shared last part: whole paths
    assert fmt_param(16.0, {"type": "int", "log": True}) == "16"
    assert fmt_param(0.00048566, {"type": "float", "log": True}) == "4.86e-04"
    assert fmt_param(0.5, {"type": "float"}) == "0.5"
    assert fmt_param(128, {"type": "categorical", "choices": [64, 128]}) == "128"
    assert fmt_param("adamw", None) == "adamw" and fmt_param(None, None) == "—"
    assert fmt_param(True, None) == "True" and fmt_param(float("nan"), {"type": "float"}) == "—"


def test_fusion_table_gives_both_gaps_with_their_cis_and_the_text_the_error_correlation(run_results):
    results = add_fusion(run_results)
    data = fusion_data(results)
    row = dict(zip(data.columns, data.rows[0]))
    assert (row["Fusion"], row["Best single"], row["Gap (points)"], row["95% CI"], row["Verdict"]) == (
        "F3", "A1", "+2.1", "+0.4 to +3.9", "beats")
    assert (row["R2 gap"], row["R2 95% CI"], row["R2 verdict"]) == ("+0.031", "-0.012 to +0.070", "no clear difference")
    assert data.highlight == [True]
    text = error_correlation_text(results)
    assert "A1 and S2" in text and "r = 0.62" in text and "0.55 to 0.69" in text and "160 segments over 4 folds" in text
    assert error_correlation_text(run_results | {"fusion": {"error_correlation": None}}) == ""
    results["fusion"]["error_correlation"] = None  # Round 3 ran, but no fold kept its predictions
    assert "not available: their folds kept no test predictions" in error_correlation_text(results)


def test_the_final_model_is_set_against_the_strongest_reference_in_plain_words(run_results):
    results = add_fusion(run_results)
    said = final_reference_text(results)
    assert said == ("F3 against the best reference, symbolic-gbm, on the test parts (reported, never used to "
                    "choose): -4.6 points (95% CI -8.2 to -1.2; 4 folds, 24 passages): falls below it.")
    assert fusion_text(results).endswith(said)
    results["fusion"]["final"]["versus_references"] = None
    assert final_reference_text(results) is None and fusion_text(results).endswith("F3 beats A1.")
    assert "F-score did not run: 12 of 400 segments have no score MIDI. Final model" in fusion_text(results)


def test_the_planted_pairs_table_gives_each_models_accuracy_with_its_ci(run_results):
    results = add_fusion(run_results)
    data = planted_data(results)
    rows = [dict(zip(data.columns, r)) for r in data.rows]
    got = [(r["Model"], r["Kind"], r["Accuracy"], r["95% CI"], r["Pairs"], r["Against chance (50%)"]) for r in rows]
    assert got == [
        ("F3", "fusion", "75.0%", "60.0% to 87.5%", "48", "above chance"),
        ("A1", "single", "50.0%", "37.5% to 62.5%", "48", "not distinguishable from chance")]
    assert data.highlight == [True, False] and planted_text(results) == ""
    results["fusion"].update(planted={}, planted_why="the corpus has no planted pairs (only the demo makes them)")
    assert planted_text(results) == ("No planted score-conditioned pairs were scored: the corpus has no planted "
                                     "pairs (only the demo makes them).")


def test_the_difficulty_table_sets_each_head_beside_its_probe(run_results):
    results = add_fusion(run_results)
    results["fusion"]["difficulty"] = dict(reversed(results["fusion"]["difficulty"].items()))  # fusions first
    data = difficulty_data(results)
    assert data.columns == ["Model", "Kind", "Head rho (test parts)", "Probe rho"]
    assert data.rows == [["F3", "fusion", "+0.45 (4 folds)", "+0.30 (4 folds)"],
                         ["A1", "single", "—", "+0.20 (3 folds)"]]
