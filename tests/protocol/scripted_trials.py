"""A scripted Round-1 trainable for real-Tuner tests (tests/protocol/test_resume_decisions.py).

Kept in a module of its own that imports only Ray Tune: every Ray worker that runs a trial imports the module
of its trainable, and importing pianoray's protocol (torch included) there costs seconds per worker.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from ray import tune

METRIC = "val/pairwise_accuracy"


def scripted_trainable(config: dict) -> None:
    """Epochs ``start..last`` of ``config["specs"][experiment]``: ``curve`` (metric per epoch, the last value
    repeating), ``stop_at`` (early stopping: its last epoch), ``error_at`` (raises before that epoch),
    ``gates`` ({epoch: file}: waits for the file before that epoch). Each report has a checkpoint with our
    ``metrics.json``; it resumes after the epoch of the checkpoint it is given, and logs it."""
    name = config["experiment"]
    spec = config["specs"][name]
    last = int(spec.get("stop_at") or config["epochs"])
    start = 1
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            restored = int(json.loads((Path(d) / "metrics.json").read_text())["epoch"])
        start = restored + 1
        with open(config["log"], "a") as f:
            f.write(json.dumps({"experiment": name, "trial": tune.get_context().get_trial_id(),
                                "restored": restored}) + "\n")
    curve = spec["curve"]
    for epoch in range(start, last + 1):
        gate = spec.get("gates", {}).get(str(epoch))
        while gate and not Path(gate).exists():
            time.sleep(0.05)
        if epoch == spec.get("error_at"):
            raise RuntimeError(f"scripted error of {name} before epoch {epoch}")
        time.sleep(0.05)
        metrics = {"epoch": epoch, METRIC: curve[min(epoch, len(curve)) - 1], "stop": epoch == last}
        with tempfile.TemporaryDirectory() as d:
            (Path(d) / "metrics.json").write_text(json.dumps(metrics))
            (Path(d) / "state.json").write_text(json.dumps({"epoch": epoch}))
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
