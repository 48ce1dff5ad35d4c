"""Run storage, the ledger, Ray Tune and `pianoray status` against a real S3 endpoint (moto_server on
loopback, see s3server.py), including an outage in the middle of a run."""

from __future__ import annotations

import json
import os
import time

import pytest

from pianoray.data.remote import S3Limits
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.storage import RunStorage, StorageError
from pianoray.protocol.view import RunView
from pianoray.records import SELECTION_METRIC
from tests.protocol.s3server import MotoServer, moto_s3, moto_server, own_moto_s3  # noqa: F401  (fixtures)
from tests.protocol.test_ledger import Clock, scripted_run

# Short limits so a frozen endpoint fails an operation in ~1-2 s instead of minutes.
FAST_FAIL = S3Limits(connect_timeout_s=0.5, request_timeout_s=0.5, sdk_attempts=1)


def test_storage_round_trips_on_s3(moto_s3, moto_server):
    s = RunStorage("s3://pianoray/rt", "run1", attempts=2)
    assert s.uri == "s3://pianoray/rt/run1" and s.storage_uri == "s3://pianoray/rt"
    assert s.write_bytes("a/b/c.bin", b"\x00\x01") is True
    assert s.read_bytes("a/b/c.bin") == b"\x00\x01"
    s.write_json("meta.json", {"x": [1, 2.5, None]})
    assert s.read_json("meta.json") == {"x": [1, 2.5, None]}
    assert s.exists("meta.json") and not s.exists("nope.json")
    # Create-if-absent keeps the first object.
    assert s.write_bytes("e.json", b"first", overwrite=False) is True
    assert s.write_bytes("e.json", b"second", overwrite=False) is False
    assert s.read_bytes("e.json") == b"first"
    # Large enough for pyarrow's multipart upload (parts of 5 MiB): still one object, complete.
    big = os.urandom(7 * 1024 * 1024)
    s.write_bytes("ckpt/model.pt", big)
    assert s.read_bytes("ckpt/model.pt") == big
    assert moto_server.objects("rt/run1/ckpt/") == {"rt/run1/ckpt/model.pt": len(big)}
    # Another writer's in-flight temporary name is never listed.
    s.write_bytes("d/.tmp-123-x.json", b'{"tru')
    assert s.list() == ["a/b/c.bin", "ckpt/model.pt", "e.json", "meta.json"]
    assert s.list("a") == ["a/b/c.bin"] and s.list("missing") == []
    s.delete("meta.json")
    s.delete("meta.json")
    assert not s.exists("meta.json")
    with pytest.raises(FileNotFoundError, match="s3://pianoray/rt/run1/absent"):
        s.read_bytes("absent")


def test_missing_bucket_is_an_error_naming_the_uri(moto_s3):
    s = RunStorage("s3://no-such-bucket/x", "r", attempts=1, s3=FAST_FAIL)
    with pytest.raises(OSError, match="s3://no-such-bucket/x/r/f.json"):
        s.write_bytes("f.json", b"{}")


def test_ledger_reader_and_writer_merge_on_s3(moto_s3):
    storage = RunStorage("s3://pianoray/runs", "merge", attempts=2)
    writer, reader = Ledger(storage, now=Clock()), Ledger(storage)
    scripted_run(writer)
    before = RunView.read(reader).results()["experiments"]
    writer.compact("round2")
    writer.epoch("round2", "S2", 0, 1, {SELECTION_METRIC: 0.63})  # loose, after compaction
    ids = [e.event_id for e in Ledger(storage).events()]
    assert len(ids) == len(set(ids)) == len(reader.events())
    assert "epoch/round2/S2/fold0/e0001" in ids
    assert [r["name"] for r in RunView.read(Ledger(storage)).results()["experiments"]] == [r["name"] for r in before]


@pytest.mark.slow
def test_outage_fails_cleanly_and_the_run_continues(own_moto_s3: MotoServer):
    server = own_moto_s3
    storage = RunStorage("s3://pianoray/runs", "outage", attempts=2, backoff_s=0.05, s3=FAST_FAIL)
    writer = Ledger(storage, now=Clock())
    for ep in range(3):
        writer.epoch("round1", "A1", 0, ep, {SELECTION_METRIC: 0.5 + ep / 100})
    old_ckpt, new_ckpt = b"old" * 100_000, os.urandom(6 * 1024 * 1024)
    storage.write_bytes("checkpoints/A1/latest.pt", old_ckpt)

    with server.outage():
        t0 = time.monotonic()
        with pytest.raises(StorageError, match=r"s3://pianoray/runs/outage/ledger/events/epoch/.*e0003\.json: write "
                                               r"failed after 2 attempt"):
            writer.epoch("round1", "A1", 0, 3, {SELECTION_METRIC: 0.6})
        assert time.monotonic() - t0 < 15, "retries must be bounded by S3Limits and attempts"
        with pytest.raises(StorageError, match="s3://pianoray/runs/outage/checkpoints/A1/latest.pt: write"):
            storage.write_bytes("checkpoints/A1/latest.pt", new_ckpt)
        with pytest.raises(StorageError, match=r"s3://pianoray/runs/outage/ledger/\w+: list failed"):
            Ledger(storage).events()

    # Requests that timed out on our side may still be served once the server thaws (as with a real
    # network partition); whatever landed is whole: the old or the new checkpoint, never a prefix.
    time.sleep(0.5)
    assert storage.read_bytes("checkpoints/A1/latest.pt") in (old_ckpt, new_ckpt)
    objects = server.objects("runs/outage/checkpoints/")
    assert objects["runs/outage/checkpoints/A1/latest.pt"] in (len(old_ckpt), len(new_ckpt))
    assert len(objects) == 1
    assert [e.payload["epoch"] for e in Ledger(storage).epochs("A1")] in ([0, 1, 2], [0, 1, 2, 3])

    # The run continues: the failed append is retried by the same writer (and by a resumed one), later
    # appends succeed, and a reader merges everything with no duplicate.
    writer.epoch("round1", "A1", 0, 3, {SELECTION_METRIC: 0.6})
    writer.epoch("round1", "A1", 0, 4, {SELECTION_METRIC: 0.61})
    resumed = Ledger(storage, now=Clock(5000))
    assert resumed.append(writer.events("epoch")[3]) is False
    resumed.epoch("round1", "A1", 0, 5, {SELECTION_METRIC: 0.62})
    storage.write_bytes("checkpoints/A1/latest.pt", new_ckpt)
    fresh = Ledger(storage)
    assert [e.payload["epoch"] for e in fresh.epochs("A1")] == [0, 1, 2, 3, 4, 5]
    assert fresh.last_epoch("round1", "A1", 0) == 5
    assert storage.read_bytes("checkpoints/A1/latest.pt") == new_ckpt
    assert len(server.objects("runs/outage/ledger/events/epoch/")) == 6


def test_status_and_results_read_a_ledger_from_s3(moto_s3):
    from typer.testing import CliRunner

    from pianoray.cli import app
    from pianoray.protocol.view import build_results

    storage = RunStorage("s3://pianoray/runs", "laptop-view", attempts=2)
    storage.write_json("run.json", {"name": "laptop-view", "config": "demo", "dimensions": ["a", "b"],
                                    "tracks": {"A1": ["audio", "candidate"], "A2": ["audio", "candidate"],
                                               "S1": ["symbolic", "candidate"], "S2": ["symbolic", "candidate"]}})
    scripted_run(Ledger(storage, now=Clock()))
    results = build_results(Ledger(storage))
    assert results["run"]["storage"] == "s3://pianoray/runs/laptop-view"
    assert results["winners"] == {"audio": "A1", "symbolic": "S1"}

    out = CliRunner().invoke(app, ["status", "--storage", "s3://pianoray/runs/laptop-view", "--json"])
    assert out.exit_code == 0, out.output
    status = json.loads(out.stdout)
    assert {e["name"]: e["status"] for e in status["experiments"]} == {
        "A1": "winner", "A2": "eliminated", "S1": "winner", "S2": "promoted"}
    missing = CliRunner().invoke(app, ["status", "--storage", "s3://pianoray/runs/never-ran"])
    assert missing.exit_code == 2 and "s3://pianoray/runs/never-ran: no pianoray run here" in missing.output


# -- Ray Tune with storage_path on S3 --------------------------------------------------------------------
def _two_report_trainable(config):
    """Two reports, each with a checkpoint holding the step: enough to exercise Ray's S3 sync."""
    import tempfile

    from ray import tune

    start = 0
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            start = int(open(os.path.join(d, "step.txt")).read()) + 1
    for step in range(start, 2):
        with tempfile.TemporaryDirectory() as d:
            with open(os.path.join(d, "step.txt"), "w") as f:
                f.write(str(step))
            tune.report({"score": config["x"] * (step + 1), "step": step},
                        checkpoint=tune.Checkpoint.from_directory(d))


@pytest.mark.slow
def test_ray_tune_run_with_s3_storage_path(moto_s3, moto_server, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray import tune

    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")  # a loopback head started by this test only
    monkeypatch.setenv("RAY_TRAIN_V2_ENABLED", "1")
    if ray.is_initialized():
        ray.shutdown()
    # Workers inherit the driver's environment at init, AWS_ENDPOINT_URL included (that is how Ray's
    # pyarrow filesystem finds moto); runtime_env makes it explicit for workers started later.
    aws = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": aws})
    try:
        tuner = tune.Tuner(
            _two_report_trainable,
            param_space={"x": tune.grid_search([1, 2])},
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(name="tiny", storage_path="s3://pianoray/tune-runs", verbose=0,
                                      checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
        )
        grid = tuner.fit()
        assert [r.error for r in grid] == [None, None]
        assert sorted(r.metrics["score"] for r in grid) == [2, 4]
        for r in grid:
            assert r.path.startswith("pianoray/tune-runs/tiny/") or r.path.startswith("s3://")
            with r.checkpoint.as_directory() as d:
                assert open(os.path.join(d, "step.txt")).read() == "1"
        assert tune.Tuner.can_restore("s3://pianoray/tune-runs/tiny")
    finally:
        ray.shutdown()
    keys = moto_server.objects("tune-runs/tiny/")
    assert any(k.split("/")[-1].startswith("experiment_state") for k in keys), sorted(keys)
    trial_dirs = {k.split("/")[2] for k in keys if "checkpoint_" in k}
    assert len(trial_dirs) == 2
    for trial in trial_dirs:
        mine = [k for k in keys if k.split("/")[2] == trial]
        assert any(k.endswith("checkpoint_000001/step.txt") for k in mine), mine
        # Ray's default TBXLoggerCallback writes TensorBoard events per trial; they reach S3 too.
        assert any("events.out.tfevents" in k for k in mine), mine
        assert any(k.endswith("/result.json") for k in mine), mine


# -- the whole protocol CLI with its run storage on S3 ---------------------------------------------------
@pytest.mark.slow
def test_whole_protocol_run_on_s3_storage(moto_s3, moto_server, e2e_data, tmp_path):
    """`pianoray run --storage s3://...` end to end (local data, storage on moto), then `status` reads it."""
    import subprocess

    from tests.protocol.conftest import CLI, CliRun, write_fault_config

    name, root = "s3run", "s3://pianoray/e2e-runs"
    cfg = write_fault_config(tmp_path / "s3run.yaml", name, ["audio-frozen", "symbolic-features"],
                             {"round2": {"folds": 2, "epochs": 2}})
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}  # AWS_* from moto_s3
    env.pop("PIANORAY_REQUIRE_DATA", None)
    run = CliRun(["run", "--config", str(cfg), "--data", str(e2e_data), "--storage", root],
                 tmp_path / "run.log", env).start()
    assert run.wait(timeout=900) == 0, run.tail()
    assert f"run {root}/{name}" in run.log.read_text()
    # The CLI names where the report went: the bucket, not a scratch folder.
    assert f"report: {root}/{name}/report/report.html" in run.tail().replace("\n", ""), run.tail()

    keys = moto_server.objects(f"e2e-runs/{name}/")
    rel = {k[len(f"e2e-runs/{name}/"):] for k in keys}
    assert "run.json" in rel
    # Tune's round folders and the Round-2 Train runs were synced to the bucket.
    for folder in ("round1/", "round2/", "round2-train/"):
        assert any(k.startswith(folder) for k in rel), f"no {folder} in the bucket: {sorted(rel)[:40]}"
    assert any(k.startswith("round1/") and k.split("/")[-1].startswith("experiment_state") for k in rel)
    # The report was uploaded next to the run.
    for f in ("report.md", "report.html", "results.json", "learning_curves_round1.png"):
        assert f"report/{f}" in rel, f
    assert keys[f"e2e-runs/{name}/report/report.html"] > 0

    # The ledger, read back through pyarrow's S3 filesystem: every kind of event, each once.
    ledger = Ledger(RunStorage(root, name, attempts=2))
    events = ledger.events()
    ids = [e.event_id for e in events]
    assert len(ids) == len(set(ids))
    kinds = {e.kind for e in events}
    assert {"epoch", "decision", "round", "fold", "selection"} <= kinds, kinds
    r2 = {(e.experiment, int(e.fold)) for e in ledger.events("epoch") if e.round == "round2"}
    assert r2 and {f for _, f in r2} == {0, 1}, r2  # round2.folds = 2, both written to S3
    assert {(e.experiment, e.fold) for e in ledger.events("fold")} == r2

    status = subprocess.run([*CLI, "status", "--storage", f"{root}/{name}", "--json"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert status.returncode == 0, status.stderr
    s = json.loads(status.stdout)
    assert {e["name"] for e in s["experiments"]} == {"audio-frozen", "symbolic-features"}
