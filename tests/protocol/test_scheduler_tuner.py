"""TrackGapScheduler under a real Ray Tune run: scripted curves, real PAUSE/resume from checkpoints.

Three audio trials with 1 CPU each on a 2-CPU Ray: the third can only start when the first one to reach
the rung PAUSEs and frees its CPU. At the rung (epoch 3) the weak trial is 30 points behind and is
stopped before its 8-epoch budget; the others resume from their checkpoints (the trainable logs the
epoch it restored from, and its epochs continue from there).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray import tune

from pianoray.protocol.decisions import Decision
from pianoray.protocol.scheduler import TrackGapScheduler

METRIC = "val/pairwise_accuracy"
EPOCHS = 8
RUNG = 3
CURVES = {"A1": 0.80, "A2": 0.50, "A3": 0.74}  # flat scripted curves: the rung outcome is known


def scripted_trainable(config: dict) -> None:
    """Reports ``epoch`` and the scripted metric each epoch with a checkpoint holding the epoch."""
    events = Path(config["events"])
    start = 1
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = json.loads((Path(d) / "state.json").read_text())["epoch"]
        start = restored + 1
        with events.open("a") as f:
            f.write(json.dumps({"experiment": config["experiment"], "restored_epoch": restored}) + "\n")
    for epoch in range(start, EPOCHS + 1):
        time.sleep(0.05)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            metrics = {"epoch": epoch, METRIC: config["level"] + 0.001 * epoch, "experiment": config["experiment"]}
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))


class FinalStatuses(tune.Callback):
    """Records each trial's status when the experiment ends (runs in the driver)."""

    def __init__(self) -> None:
        self.final: dict[str, str] = {}

    def on_experiment_end(self, trials, **info) -> None:
        self.final = {t.config["experiment"]: t.status for t in trials}


@pytest.fixture(scope="module")
def local_ray():
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, ignore_reinit_error=True)
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_tuner_stops_loser_early_and_resumes_paused_trials_from_checkpoint(local_ray, tmp_path):
    decisions: list[Decision] = []
    statuses = FinalStatuses()
    events = tmp_path / "events.jsonl"
    scheduler = TrackGapScheduler(metric=METRIC, mode="max", rungs=[RUNG], gap=10.0, on_decision=decisions.append)
    experiment = tune.grid_search(list(CURVES))
    tuner = tune.Tuner(
        tune.with_resources(scripted_trainable, {"cpu": 1}),
        param_space={
            "experiment": experiment,
            "track": "audio",
            "role": "candidate",
            "level": tune.sample_from(lambda config: CURVES[config["experiment"]]),
            "events": str(events),
        },
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(
            storage_path=str(tmp_path / "runs"), name="gap", verbose=0, callbacks=[statuses]
        ),
    )
    results = tuner.fit()

    final = {r.config["experiment"]: r for r in results}
    assert not results.errors
    last_epoch = {e: r.metrics["epoch"] for e, r in final.items()}
    assert last_epoch == {"A1": EPOCHS, "A2": RUNG, "A3": EPOCHS}  # A2 eliminated before its budget

    by_exp = {d.experiment: d for d in decisions}
    assert sorted(by_exp) == ["A1", "A2", "A3"] and len(decisions) == 3
    assert by_exp["A2"].decision == "stop" and by_exp["A2"].leader == "A1"
    assert "more than the 10-point gap" in by_exp["A2"].reason
    assert by_exp["A1"].decision == by_exp["A3"].decision == "continue"

    assert statuses.final == {"A1": "TERMINATED", "A2": "TERMINATED", "A3": "TERMINATED"}
    restored = [json.loads(line) for line in events.read_text().splitlines()]
    # Whoever was paused at the rung resumed from its own checkpoint at the rung epoch.
    assert restored, "no trial was paused and resumed"
    assert all(e["restored_epoch"] == RUNG and e["experiment"] != "A2" for e in restored)
    # The paused trials' epochs continued from the checkpoint: every epoch reported exactly once.
    for exp in ("A1", "A3"):
        epochs = list(final[exp].metrics_dataframe["epoch"])
        assert epochs == list(range(1, EPOCHS + 1)), (exp, epochs)
