from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pianoray.config import ProtocolConfig
from pianoray.training.checkpoint import TopKSink, read_state
from pianoray.training.loop import Budget, cosine_with_warmup, fit

from .synthetic import SyntheticData


def _cfg(**optim) -> ProtocolConfig:
    return ProtocolConfig.model_validate(
        {"optim": {"lr": 3e-3, "batch_size": 24, **optim}, "experiments": {"audio-frozen": {}}}
    )


def test_loss_falls_and_ranking_is_learned() -> None:
    torch.set_num_threads(1)
    results = list(fit(_cfg(), "audio-frozen", SyntheticData(), 0, Budget(epochs=15)))
    losses = [r.metrics["train/total"] for r in results]
    assert losses[-1] < 0.6 * losses[0], losses
    best = max(r.metrics["val/pairwise_accuracy"] for r in results)
    lo, _ = results[-1].metrics["val/pairwise_accuracy_ci"]
    assert best > 0.7 and lo > 0.5, (best, lo)


def test_resume_gives_the_same_result_as_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg, data, budget = _cfg(), SyntheticData(), Budget(epochs=6)
    full = TopKSink(tmp_path / "full", k=2)
    for _ in fit(cfg, "audio-frozen", data, 0, budget, sink=full):
        pass

    part = TopKSink(tmp_path / "part", k=2)
    for r in fit(cfg, "audio-frozen", data, 0, budget, sink=part):
        if r.epoch == 3:
            break  # the "crash": the epoch-3 checkpoint is complete, nothing after it
    assert read_state(part.latest())["epoch"] == 3
    resumed = list(fit(cfg, "audio-frozen", data, 0, budget, sink=part, resume_from=part.latest()))
    assert [r.epoch for r in resumed] == [4, 5, 6]

    a, b = read_state(full.latest()), read_state(part.latest())
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["best_metric"] == b["best_metric"] and a["best_epoch"] == b["best_epoch"]


def test_early_stopping_fires_after_patience() -> None:
    # lr ~ 0: the model cannot improve, so the best stays at epoch 1 and patience 2 stops at epoch 3.
    results = list(fit(_cfg(lr=1e-12), "audio-frozen", SyntheticData(), 0, Budget(epochs=10, patience=2)))
    assert [r.epoch for r in results] == [1, 2, 3]
    assert results[-1].early_stopped and results[-1].stop and results[-1].best_epoch == 1


@pytest.mark.parametrize("total, warm", [(100, 0.05), (10, 0.0)])
def test_cosine_schedule_with_warmup(total: int, warm: float) -> None:
    f = cosine_with_warmup(total, warm)
    w = max(1, round(total * warm))
    assert f(0) == pytest.approx(1 / w)
    assert f(w) == pytest.approx(1.0)
    assert f(total) == pytest.approx(0.0, abs=1e-9)
    assert all(f(s) >= f(s + 1) - 1e-12 for s in range(w, total))


def test_rung_epochs_count_only_selecting_stages() -> None:
    from pianoray.models.contract import Stage
    from pianoray.training.loop import _selecting_epochs

    stages = [Stage("self_supervised", 3, select=False), Stage("supervised", 7)]
    assert [_selecting_epochs(stages, e) for e in (1, 3, 4, 10)] == [0, 0, 1, 7]
    assert _selecting_epochs([Stage("supervised", 5)], 4) == 4


def test_each_epoch_carries_its_pair_counts_beside_the_metrics(tmp_path: Path) -> None:
    import json

    from pianoray.objectives.metrics import PairCounts
    from pianoray.training.checkpoint import METRICS_FILE, PAIR_COUNTS_FILE

    torch.set_num_threads(1)
    sink = TopKSink(tmp_path / "ckpt", k=5)
    results = list(fit(_cfg(), "audio-frozen", SyntheticData(), 0, Budget(epochs=2), sink=sink))
    for r in results:
        # The counts describe the reported metric exactly (same pairs, same per-dimension mean) ...
        assert r.pair_counts.accuracy() == r.metrics["val/pairwise_accuracy"]
        assert "val/pair_counts" not in r.flat()  # ... and stay out of what goes to Ray and metrics.json
        folder = sink.root / f"epoch-{r.epoch:04d}"
        stored = PairCounts.from_json(json.loads((folder / PAIR_COUNTS_FILE).read_text()))
        assert stored.groups == r.pair_counts.groups and (stored.correct == r.pair_counts.correct).all()
        assert json.loads((folder / METRICS_FILE).read_text())["epoch"] == r.epoch


def test_a_checkpoint_that_is_not_this_experiments_is_refused_by_name(tmp_path: Path) -> None:
    """Resuming from another experiment's checkpoint, or from weights that no longer fit the configured
    model, is one error naming the checkpoint, never a run continued on the wrong weights."""
    from pianoray.errors import InputError
    from pianoray.training.checkpoint import write_state

    cfg, data = _cfg(), SyntheticData()
    sink = TopKSink(tmp_path / "ckpt", k=1)
    list(fit(cfg, "audio-frozen", data, 0, Budget(epochs=1), sink=sink))
    state = read_state(sink.latest())
    other = tmp_path / "other"
    write_state(other, {**state, "experiment": "A3"}, {"epoch": 1})
    with pytest.raises(InputError, match=f"{other}: a checkpoint of experiment 'A3', not 'audio-frozen'"):
        list(fit(cfg, "audio-frozen", data, 0, Budget(epochs=2), resume_from=other))
    bent = tmp_path / "bent"
    write_state(bent, {**state, "experiment": None, "model": {k: v[..., :1] for k, v in state["model"].items()}},
                {"epoch": 1})
    with pytest.raises(InputError, match=f"{bent}: its weights do not fit audio-frozen's model as configured now"):
        list(fit(cfg, "audio-frozen", data, 0, Budget(epochs=2), resume_from=bent))
