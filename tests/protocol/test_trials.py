"""The Round-2 fold job's last report and its choice of checkpoint (no Ray needed)."""

from __future__ import annotations

import json
from types import SimpleNamespace

from pianoray.protocol.trials import best_checkpoint, final_report


def test_final_report_carries_the_pair_counts_as_one_json_string() -> None:
    counts = {"val": {"groups": ["p0"], "correct": [[1.5]], "total": [[2.0]]},
              "test": {"groups": ["p1", "p2"], "correct": [[1.0], [0.0]], "total": [[1.0], [1.0]]}}
    test = {"pairwise_accuracy": 0.5, "r2": 0.1, "pairwise_accuracy_per_dim": [0.5], "difficulty_rho": None,
            "pair_counts": counts}
    out = final_report("S2", 1, test)
    assert out["final"] is True and (out["experiment"], out["fold"], out["round"]) == ("S2", 1, "round2")
    assert out["test/pairwise_accuracy"] == 0.5 and "test/difficulty_rho" not in out  # None: dropped as before
    assert "test/pair_counts" not in out and json.loads(out["pair_counts"]) == counts
    assert "pair_counts" in test  # the caller's dict is left alone
    assert "pair_counts" not in final_report("S2", 1, {"pairwise_accuracy": 0.5})


def test_best_checkpoint_skips_epochs_that_select_nothing() -> None:
    """A self-supervised epoch (selectable False) never stands for the fold, even with the best value; ties
    go to the earlier epoch (as the ledger's summaries pick); NaN values are not candidates."""
    kept = [("ssl", {"val/pairwise_accuracy": 0.9, "selectable": False, "epoch": 1}),
            ("e3", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 3}),
            ("e2", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 2}),
            ("nan", {"val/pairwise_accuracy": float("nan"), "selectable": True, "epoch": 4})]
    assert best_checkpoint(SimpleNamespace(best_checkpoints=kept, checkpoint="last")) == "e2"
    only_ssl = SimpleNamespace(best_checkpoints=kept[:1], checkpoint="last")
    assert best_checkpoint(only_ssl) == "ssl"
    assert best_checkpoint(SimpleNamespace(best_checkpoints=[], checkpoint="last")) == "last"
