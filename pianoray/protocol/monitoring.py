"""Monitoring beyond our progress board: TensorBoard event files per trial, and MLflow when installed.

TensorBoard: Ray Tune adds its ``TBXLoggerCallback`` by default when ``tensorboardX`` is importable, and
writes ``events.out.tfevents.*`` into every trial folder, which Ray syncs to the run's storage (local or
S3; verified in tests/protocol/test_s3.py and test_monitoring.py). We add it explicitly anyway so that it
survives ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=1`` (Ray then skips only its own default copy). Point
TensorBoard at the run folder: ``tensorboard --logdir <storage>/<run>/round1``.

MLflow: optional. When ``mlflow`` is importable, :func:`mlflow_callback` returns Ray's
``MLflowLoggerCallback`` logging to a file-based tracking store in the run folder (or ``MLFLOW_TRACKING_URI``
when set, e.g. a shared tracking server); otherwise None and nothing changes.

Hook for the driver (run.py), where each round builds its callbacks::

    callbacks = [ProtocolCallback(...), *monitoring_callbacks(ctx.cfg, ctx.storage, ROUND1)]
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any

from pianoray.config import ProtocolConfig
from pianoray.protocol.storage import RunStorage
from pianoray.records import ROUND1

MLFLOW_DIR = "mlflow"


def tensorboard_callback() -> Any | None:
    """Ray's TBXLoggerCallback (TensorBoard events per trial), or None when tensorboardX is absent."""
    if importlib.util.find_spec("tensorboardX") is None:
        return None
    from ray.tune.logger import TBXLoggerCallback

    return TBXLoggerCallback()


def mlflow_tracking_uri(storage: RunStorage) -> str | None:
    """Where MLflow logs: ``MLFLOW_TRACKING_URI`` if set, else ``file://<run folder>/mlflow`` for local
    storage; None for object storage without a tracking server (MLflow's file store needs a local path)."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    local = storage.local_dir()
    return None if local is None else (local / MLFLOW_DIR).as_uri()


def mlflow_callback(cfg: ProtocolConfig, storage: RunStorage, round_name: str = ROUND1) -> Any | None:
    """Ray's MLflowLoggerCallback (experiment ``<config name>/<round>``), or None when mlflow is not
    installed or there is nowhere to log to."""
    if importlib.util.find_spec("mlflow") is None:
        return None
    uri = mlflow_tracking_uri(storage)
    if uri is None:
        return None
    from ray.air.integrations.mlflow import MLflowLoggerCallback

    return MLflowLoggerCallback(tracking_uri=uri, experiment_name=f"{cfg.name}/{round_name}",
                                tags={"pianoray_run": storage.name, "round": round_name},
                                save_artifact=False)


def monitoring_callbacks(cfg: ProtocolConfig, storage: RunStorage, round_name: str = ROUND1) -> list[Any]:
    """The Tune callbacks to add to a round's ``RunConfig(callbacks=...)`` (those that apply here)."""
    return [cb for cb in (tensorboard_callback(), mlflow_callback(cfg, storage, round_name)) if cb is not None]
