import importlib.util
import os

import pytest

from pianoray.config import ProtocolConfig
from pianoray.protocol import monitoring
from pianoray.protocol.storage import RunStorage


@pytest.fixture
def local_storage(tmp_path):
    return RunStorage(tmp_path / "runs", "demo", fsync=False)


def test_tensorboard_callback_is_rays_tbx_logger():
    from ray.tune.logger import TBXLoggerCallback

    cb = monitoring.tensorboard_callback()
    if importlib.util.find_spec("tensorboardX") is None:
        assert cb is None
    else:
        assert isinstance(cb, TBXLoggerCallback)


def test_mlflow_callback_is_none_without_mlflow(local_storage, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    assert monitoring.mlflow_callback(ProtocolConfig(), local_storage) is None
    assert all(type(cb).__name__ != "MLflowLoggerCallback"
               for cb in monitoring.monitoring_callbacks(ProtocolConfig(), local_storage))


def test_mlflow_tracking_uri(local_storage, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert monitoring.mlflow_tracking_uri(local_storage) == (local_storage.local_dir() / "mlflow").as_uri()
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    assert monitoring.mlflow_tracking_uri(RunStorage("s3://b/p", "r")) is None
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert monitoring.mlflow_tracking_uri(RunStorage("s3://b/p", "r")) == "http://mlflow.internal:5000"


@pytest.mark.skipif(importlib.util.find_spec("mlflow") is None, reason="mlflow not installed (optional)")
def test_mlflow_callback_when_installed(local_storage, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cb = monitoring.mlflow_callback(ProtocolConfig(name="demo"), local_storage, "round2")
    assert type(cb).__name__ == "MLflowLoggerCallback" and cb.experiment_name == "demo/round2"
    assert cb.tracking_uri.startswith("file://")


def _reporting_trainable(config):
    from ray import tune

    for step in range(2):
        tune.report({"val/pairwise_accuracy": 0.5 + step / 10, "epoch": step})


@pytest.mark.slow
def test_tensorboard_events_are_written_per_trial(tmp_path, local_storage, monkeypatch):
    if importlib.util.find_spec("tensorboardX") is None:
        pytest.skip("tensorboardX not installed")
    ray = pytest.importorskip("ray")
    from ray import tune

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # Ray's own default copy is off: the events must come from the callback we add.
    monkeypatch.setenv("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        grid = tune.Tuner(
            _reporting_trainable,
            param_space={"x": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name="round1", storage_path=local_storage.uri, verbose=0,
                                      callbacks=monitoring.monitoring_callbacks(ProtocolConfig(), local_storage)),
        ).fit()
    finally:
        ray.shutdown()
    assert [r.error for r in grid] == [None, None]
    trial_dirs = [d for d in (local_storage.local_dir() / "round1").iterdir() if d.is_dir()]
    assert len(trial_dirs) == 2
    for d in trial_dirs:
        events = [f for f in os.listdir(d) if f.startswith("events.out.tfevents")]
        assert events, f"no TensorBoard events in {d}: {os.listdir(d)}"
        assert (d / events[0]).stat().st_size > 0
