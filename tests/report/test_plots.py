"""Figures: fixed names, real PNGs, drawn (not placeholders) when data exists, placeholders when it does not."""

from __future__ import annotations

from pathlib import Path

from pianoray.report.plots import plot_all, plot_gates, plot_learning_curves, plot_per_dimension, plot_timeline
from tests.report.conftest import add_fusion, add_search, strip_optional

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, f"{path} is not a PNG"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plot_all_writes_fixed_names(run_results, tmp_path):
    paths = plot_all(run_results, tmp_path)
    assert {k: p.name for k, p in paths.items()} == {
        "per_dimension": "per_dimension.png",
        "timeline": "timeline.png",
        "learning_curves_round1": "learning_curves_round1.png",
        "learning_curves_round2": "learning_curves_round2.png",
    }
    for p in paths.values():
        assert p.parent == tmp_path and _png_size(p)[0] > 400
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave nothing behind


def test_figures_with_data_are_larger_than_placeholders(run_results, tmp_path):
    """A placeholder is one short panel; a drawn figure is at least two panels or a multi-row chart."""
    full, empty = tmp_path / "full", tmp_path / "empty"
    bare = strip_optional(run_results)
    for fn in (plot_per_dimension, plot_timeline):
        w, h = _png_size(fn(run_results, full))
        we, he = _png_size(fn(bare, empty))
        assert h > 1.5 * he and w >= we
    w, h = _png_size(plot_learning_curves(run_results, full, "round1"))
    we, he = _png_size(plot_learning_curves(bare, empty, "round1"))
    assert h > 1.5 * he


def test_unknown_round_and_odd_name_get_a_safe_file_name(run_results, tmp_path):
    path = plot_learning_curves(run_results, tmp_path, "round 3/fusion")
    assert path.name == "learning_curves_round_3_fusion.png" and _png_size(path)


def test_same_results_give_identical_png_bytes(run_results, tmp_path):
    a = plot_per_dimension(run_results, tmp_path / "a").read_bytes()
    b = plot_per_dimension(run_results, tmp_path / "b").read_bytes()
    assert a == b


def test_partial_data_still_draws(run_results, tmp_path):
    run_results["experiments"][0]["pairwise_accuracy"]["per_dim"] = [0.8, None, float("nan")]  # short, gappy
    run_results["decisions"][0]["metric"] = None  # a stop without a metric: no X, no crash
    run_results["curves"] = [c for c in run_results["curves"] if c["experiment"] != "A1"]
    run_results["curves"][0]["time"] = "not a time"
    run_results["curves"].append({"round": "round1", "experiment": "ghost", "fold": 0, "epoch": 1,
                                  "val_pairwise": 0.6, "train_loss": None, "time": None})
    for p in plot_all(run_results, tmp_path).values():
        assert _png_size(p)


def test_curves_and_rungs_are_on_the_epochs_the_scheduler_counts(run_results):
    """A2 trains 3 self-supervised epochs first: its rung-10 value was reported at epoch 13. The figure puts
    that value at x = 10, under the rung line and the stop mark, and the self-supervised epochs at x <= 0."""
    from pianoray.report.plots import learning_curve_series

    a2 = learning_curve_series(run_results, "round1")["audio"][("A2", 0)]
    by_epoch = {c["epoch"]: c for c in run_results["curves"] if c["experiment"] == "A2"}
    assert [x for x, _, sel in a2 if not sel] == [-2.0, -1.0, 0.0]
    assert [x for x, _, sel in a2 if sel] == list(range(1, 11))
    assert (10.0, by_epoch[13]["val_pairwise"], True) in a2  # epoch 13 is supervised epoch 10
    stop = next(d for d in run_results["decisions"] if d["experiment"] == "A2" and d["decision"] == "stop")
    assert stop["rung"] == 10 and max(x for x, _, _ in a2) == stop["rung"]
    # a curve without rung epochs (a ledger from before they were recorded) keeps its epochs
    for c in run_results["curves"]:
        c.pop("rung_epoch")
    assert max(x for x, _, _ in learning_curve_series(run_results, "round1")["audio"][("A2", 0)]) == 13.0


def test_judged_epochs_with_an_unjudged_stage_at_the_start_and_at_the_tail():
    from pianoray.report.plots import judged_epochs

    # (epoch, rung_epoch, selectable, value): 2 self-supervised epochs, 2 supervised, then a run still in a
    # self-supervised stage (epochs 5-6)
    pts = [(1, 0, False, 0.5), (2, 0, False, 0.5), (3, 1, True, 0.6), (4, 2, True, 0.7), (5, 2, False, 0.6),
           (6, 2, False, 0.6)]
    assert [x for x, _, _ in judged_epochs(pts)] == [-1.0, 0.0, 1.0, 2.0, 1.0, 2.0]


def test_importance_figure_per_searched_experiment_with_importances(run_results, tmp_path):
    from pianoray.report.plots import plot_importance

    add_search(run_results)
    assert "importance_A1" not in plot_all(run_results, tmp_path / "none")  # Round 1 recorded none: no figure
    placeholder = _png_size(plot_importance(run_results, tmp_path / "none", "A1"))
    run_results["experiments"][0]["search"]["importance"] = {"optim.lr": 0.8, "model.lora.rank": 0.15,
                                                             "model.dropout": 0.05}
    path = plot_all(run_results, tmp_path / "drawn")["importance_A1"]
    assert path == tmp_path / "drawn" / "importance_A1.png"
    w, h = _png_size(path)
    assert h > placeholder[1]  # three bars, not the one-line placeholder


def test_a_gated_fusion_gets_its_gate_figure(run_results, tmp_path):
    """One bar per dimension (a tall figure); none without gates (a placeholder, and plot_all draws none)."""
    assert not [k for k in plot_all(run_results, tmp_path / "none") if k.startswith("gates_")]
    paths = plot_all(add_fusion(run_results), tmp_path)
    assert paths["gates_F3"].name == "gates_F3.png"
    w, h = _png_size(paths["gates_F3"])
    we, he = _png_size(plot_gates(run_results | {"fusion": {}}, tmp_path / "empty", "F3"))
    assert h > 1.5 * he and w > 400
