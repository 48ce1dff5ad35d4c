"""TrackGapScheduler under a real Ray Tune run: scripted curves, real PAUSE/resume from checkpoints.

Three audio trials with 1 CPU each on a 2-CPU Ray: the third can only start when the first one to reach
the rung PAUSEs and frees its CPU. At the rung (epoch 3) the weak trial is 30 points behind and is
stopped before its 8-epoch budget; the others resume from their checkpoints (the trainable logs the
epoch it restored from, and its epochs continue from there).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from pathlib import Path

import pytest
import ray
from ray import tune
from ray.tune.error import TuneError

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


# ---------------------------------------------------------------------------------------------------------
# The rule as a run applies it: each trial records its validation pair counts in a ledger before it reports
# (as the Round-1 trainable does), the scheduler reads them back to judge, and the last epoch is a rung.

SHORT = 4  # epochs: rung 2, final rung 4


def counted_trainable(config: dict) -> None:
    """Reports ``epoch``, ``stop`` and a metric that is the pairwise accuracy of synthetic pair counts drawn
    around ``config["curve"][epoch - 1]``; records the counts first (unless ``config["record"]`` is False)."""
    from pianoray.protocol.pair_counts import record_pair_counts, run_ledger
    from tests.protocol.synthetic_counts import synthetic_counts

    name = config["experiment"]
    start = 1
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = json.loads((Path(d) / "state.json").read_text())["epoch"] + 1
    ledger = run_ledger(config["run_storage"], config["run_name"])
    for epoch in range(start, SHORT + 1):
        time.sleep(config.get("sleep", 0.05))
        counts = synthetic_counts(config["curve"][epoch - 1], seed=1000 * config["seed"] + epoch, **config["shape"])
        if config.get("record", True):
            record_pair_counts(ledger, "round1", name, 0, epoch, counts)
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report({"epoch": epoch, "stop": epoch == SHORT, METRIC: counts.accuracy(), "experiment": name},
                        checkpoint=tune.Checkpoint.from_directory(d))


def run_counted(tmp_path: Path, trials: dict[str, dict], *, noise_guard: bool = False, sync: bool = True,
                shape: dict | None = None, record: bool = True, tag: str = "run"):
    """One Tuner run of ``counted_trainable`` under the run's scheduler settings (rung 2, final rung 4)."""
    from pianoray.protocol.pair_counts import counts_source
    from pianoray.protocol.storage import RunStorage

    storage = RunStorage(str(tmp_path / "store"), tag)
    decisions: list[Decision] = []
    scheduler = TrackGapScheduler(metric=METRIC, mode="max", rungs=[2], final_rung=SHORT, gap=10.0, sync=sync,
                                  noise_guard=noise_guard, on_decision=decisions.append, n_boot=500,
                                  pair_counts=counts_source(storage, "round1", 0))
    spec = {name: {"track": "audio", "role": "candidate", "seed": i, **t} for i, (name, t) in enumerate(trials.items())}
    tuner = tune.Tuner(
        tune.with_resources(counted_trainable, {"cpu": 1}),
        param_space={
            "experiment": tune.grid_search(list(spec)),
            **{key: tune.sample_from(lambda config, key=key: spec[config["experiment"]][key])
               for key in ("track", "role", "curve", "seed")},
            "sleep": tune.sample_from(lambda config: spec[config["experiment"]].get("sleep", 0.05)),
            "shape": shape or {"groups": 20, "dims": 2, "pairs": 6},
            "record": record,
            "run_storage": storage.storage_uri,
            "run_name": storage.name,
        },
        tune_config=tune.TuneConfig(scheduler=scheduler, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name=tag, verbose=0),
    )
    return tuner, scheduler, decisions


def verdicts(decisions: list[Decision], rung: int) -> dict[str, str]:
    return {d.experiment: d.decision for d in decisions if d.rung == rung}


@pytest.mark.slow
def test_tuner_async_mode_decides_on_arrival_and_at_the_end_of_the_round(local_ray, tmp_path):
    # A2 keeps up at rung 2 but falls 20 points behind by the end: the final rung stops it, so it would not
    # be promoted. A3 (weak) only gets a CPU once A1 has finished: it is judged against the best so far.
    tuner, scheduler, decisions = run_counted(tmp_path, {
        "A1": {"curve": [0.75, 0.80, 0.80, 0.80]},
        "A2": {"curve": [0.74, 0.78, 0.68, 0.60], "sleep": 0.5},  # reaches the end after A1
        "A3": {"curve": [0.50, 0.50, 0.50, 0.50]},
    }, sync=False, tag="async")
    results = tuner.fit()
    assert not results.errors
    assert verdicts(decisions, 2) == {"A1": "continue", "A2": "continue", "A3": "stop"}
    assert verdicts(decisions, SHORT) == {"A1": "continue", "A2": "stop"}
    final = {d.experiment: d for d in decisions if d.rung == SHORT}
    assert all(d.final and d.mode == "async" for d in final.values()) and final["A2"].leader == "A1"
    # Every decision carries the rule and the gap's interval, computed from the recorded counts.
    assert all(d.rule == "point" and d.gap_ci is not None and d.epoch == d.rung for d in decisions)
    assert final["A2"].gap_ci[0] > 10.0  # ~20 points behind on 240 pairs
    epochs = {r.config["experiment"]: r.metrics["epoch"] for r in results}
    assert epochs == {"A1": SHORT, "A2": SHORT, "A3": 2}


@pytest.mark.slow
def test_tuner_reference_is_judged_at_a_rung_but_never_leads(local_ray, tmp_path):
    # REF scores far above every candidate: were it the leader, both candidates would be stopped. REF2 is a
    # weak reference: stopped like a candidate would be. Sync rungs: 4 trials on 2 CPUs pause and resume.
    tuner, scheduler, decisions = run_counted(tmp_path, {
        "A1": {"curve": [0.70] * SHORT},
        "A2": {"curve": [0.66] * SHORT},
        "REF": {"curve": [0.92] * SHORT, "role": "reference"},
        "REF2": {"curve": [0.50] * SHORT, "role": "reference"},
    }, tag="reference")
    results = tuner.fit()
    assert not results.errors
    assert verdicts(decisions, 2) == {"A1": "continue", "A2": "continue", "REF": "continue", "REF2": "stop"}
    assert {d.leader for d in decisions} == {"A1"}
    by = {(d.experiment, d.rung): d for d in decisions}
    assert by[("REF", 2)].gap_points < -10 and by[("REF", 2)].role == "reference"
    assert by[("REF", 2)].gap_ci[1] < 0  # ahead of the best candidate, and surely so
    assert verdicts(decisions, SHORT) == {"A1": "continue", "A2": "continue", "REF": "continue"}
    assert all(d.gap_ci is not None for d in decisions)


@pytest.mark.slow
def test_tuner_guard_and_point_rule_decide_differently_on_the_same_curves(local_ray, tmp_path):
    # A2 is ~12 points behind A1 on a small validation set (6 passages): more than the gap, but the interval
    # reaches below 10. The point rule stops A2 at rung 2; the guard keeps it to the end.
    curves = {"A1": {"curve": [0.80] * SHORT}, "A2": {"curve": [0.68] * SHORT}}
    small = {"groups": 6, "dims": 1, "pairs": 8}
    out = {}
    for rule, guard in (("point", False), ("guard", True)):
        tuner, scheduler, decisions = run_counted(tmp_path, curves, noise_guard=guard, shape=small, tag=rule)
        assert not tuner.fit().errors
        out[rule] = {(d.experiment, d.rung): d for d in decisions}
    point, guard = out["point"][("A2", 2)], out["guard"][("A2", 2)]
    assert point.gap_points == guard.gap_points > 10.0 and point.gap_ci == guard.gap_ci
    assert point.gap_ci[0] <= 10.0 < point.gap_ci[1]
    assert (point.rule, point.decision) == ("point", "stop")
    assert (guard.rule, guard.decision) == ("guard", "continue")
    assert ("A2", SHORT) not in out["point"] and out["guard"][("A2", SHORT)].rule == "guard"

    # Guard on and the statistics missing: the run ends at once with the reason, not with the point rule.
    tuner, scheduler, decisions = run_counted(tmp_path, curves, noise_guard=True, shape=small, record=False,
                                              tag="missing")
    with pytest.raises(TuneError):
        tuner.fit()
    assert re.search(r"A[12] has no pair counts for epoch 2", str(scheduler.failure)) and decisions == []
