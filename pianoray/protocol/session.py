"""Starting or joining Ray for a run.

Locally we start our own head, bound to loopback, with the dashboard on 127.0.0.1:8265. Ray 2.60 turns
token authentication on for a local ``ray.init()``; we disable it only for this head that we start
ourselves (nothing else can reach a loopback-bound head). On a cluster (``--address auto``) we join the
head started by ``cluster.yaml``, whose token auth stays on.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass


@dataclass
class RaySession:
    dashboard_url: str | None
    local: bool
    cpus: float
    gpus: float


def start_ray(address: str | None = None, *, num_cpus: int | None = None, dashboard: bool = True) -> RaySession:
    import ray

    os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")  # V1 hangs with two workers here (DESIGN.md)
    # Tune/Train print their own progress tables unless told otherwise; ours is the rich board.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Per-epoch checkpoints trigger Tune's "snapshotting too often" warning; it is expected here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # Tune warns when a callback takes > 0.5 s; on a 2-core laptop starting fold jobs that happens by load
    # alone (our callback writes one small ledger object per report): warn only past 2 s.
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", "2")
    # Tune reads that variable once, when ray.tune is first imported, and the run's modules import it before
    # Ray starts: without this the threshold stayed at 0.5 s and the warnings reached the run's output.
    from ray.tune.utils.util import warn_if_slow

    warn_if_slow.DEFAULT_THRESHOLD = float(os.environ["TUNE_WARN_THRESHOLD_S"])
    if not ray.is_initialized():
        if address:
            ctx = ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        else:
            os.environ["RAY_AUTH_MODE"] = "disabled"  # only for the loopback head started right here
            # Train V2's controller polls its workers every 2 s; on a laptop, where a Round-2 fold job
            # trains for seconds, that idle wait is a large share of each job. Workers inherit this env.
            os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
            # A laptop head has no spot nodes to drain: skip the per-job preemption-watcher actor (one
            # Python process fewer per fold job; on a cluster it stays on).
            os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
            ctx = ray.init(
                address="local",  # a head of our own, even with RAY_ADDRESS set or another cluster running
                num_cpus=num_cpus,
                include_dashboard=dashboard,
                dashboard_host="127.0.0.1",
                log_to_driver=False,
                logging_level=logging.WARNING,
            )
        url = getattr(ctx, "dashboard_url", None) or None
    else:
        url = None
    res = ray.cluster_resources()
    return RaySession(
        dashboard_url=(f"http://{url}" if url and not url.startswith("http") else url),
        local=not address,
        cpus=float(res.get("CPU", 0)),
        gpus=float(res.get("GPU", 0)),
    )
