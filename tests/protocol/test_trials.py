"""The Round-2 fold job's last report and its choice of checkpoint (no Ray needed)."""

from __future__ import annotations

from pianoray.protocol.trials import best_checkpoint


def test_best_checkpoint_skips_epochs_that_select_nothing() -> None:
    """A self-supervised epoch (selectable False) never stands for the fold, even with the best value; ties
    go to the earlier epoch (as the ledger's summaries pick); NaN values are not candidates."""
    kept = [("ssl", {"val/pairwise_accuracy": 0.9, "selectable": False, "epoch": 1}),
            ("e3", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 3}),
            ("e2", {"val/pairwise_accuracy": 0.7, "selectable": True, "epoch": 2}),
            ("nan", {"val/pairwise_accuracy": float("nan"), "selectable": True, "epoch": 4})]
    assert best_checkpoint(kept) == "e2"
    assert best_checkpoint(kept[:1]) == "ssl"
    assert best_checkpoint(kept[3:]) == "nan"  # no scored epoch: the newest
    assert best_checkpoint([]) is None
