"""The cluster path of docs/cluster.md, rehearsed on loopback: a real two-node Ray cluster (``ray start --head``
then ``ray start --address``, token auth on), and ``pianoray run --address auto`` on it, as a user runs it
on the head. The fold job is data parallel with one Train worker on each node.

Both nodes are this machine, told they have 1 CPU each: a 0.9-CPU Train worker fills a node, so the fold's
two workers must land on different nodes, and the 0.1-CPU fold launcher fits beside one of them. Run
storage is a local folder, which both nodes see (on a cluster it is S3). The cluster is this test's own:
its own temp dir and ports, torn down by the process ids it started (never ``ray stop``, which would kill
other Ray instances on the machine); other tests start their own local heads and never attach to it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil
import pytest

from tests.net import free_ports
from tests.protocol.conftest import REPO, write_fault_config

pytestmark = pytest.mark.slow

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
RUN_TIMEOUT = 900  # a guard against a hang, not a speed target (tests/protocol/test_faults.py)


def _cluster_processes(marker: str) -> list[psutil.Process]:
    """Every live process of this cluster: Ray passes the session folder (under our own temp dir) to each."""
    out = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or ()) and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.Error:
            continue
    return out


@pytest.fixture
def two_node_cluster():
    """(address, env for clients, temp dir): a head and one worker node on 127.0.0.1, 1 CPU each."""
    temp = Path(tempfile.mkdtemp(prefix="prc-", dir="/tmp"))  # short: Ray's unix sockets live under it
    gcs, dash, client, agent1, agent2 = free_ports(5)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16),
           "RAY_TRAIN_V2_ENABLED": "1", "PYTHONPATH": str(REPO)}
    env.pop("RAY_ADDRESS", None)
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--num-gpus=0", "--disable-usage-stats"]
    address = f"127.0.0.1:{gcs}"
    try:
        # The dashboard serves Ray's state API, which the test reads to see where the Train workers ran.
        subprocess.run([*RAY, "start", "--head", f"--port={gcs}", f"--temp-dir={temp}", "--include-dashboard=true",
                        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--ray-client-server-port={client}",
                        f"--dashboard-agent-listen-port={agent1}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        subprocess.run([*RAY, "start", f"--address={address}", f"--dashboard-agent-listen-port={agent2}", *common],
                       env=env, check=True, capture_output=True, timeout=120)
        yield address, {**env, "RAY_ADDRESS": address}, temp
    finally:
        procs = _cluster_processes(str(temp))
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass
        psutil.wait_procs(procs, timeout=10)
        assert not _cluster_processes(str(temp)), "processes of the test cluster survived"
        shutil.rmtree(temp, ignore_errors=True)


def test_pianoray_run_address_auto_on_a_two_node_cluster(two_node_cluster, e2e_data: Path, tmp_path: Path) -> None:
    address, env, _temp = two_node_cluster
    nodes = _query(address, env, "[n['NodeID'] for n in ray.nodes() if n['Alive']]")
    assert len(nodes) == 2, f"expected two live nodes, got {nodes}"

    cfg = write_fault_config(tmp_path / "two.yaml", "two", ["audio-frozen"], {
        "resources": {"cpu": 0.9}, "round1": {"epochs": 2, "rungs": [1]},
        "round2": {"epochs": 2, "patience": 2, "folds": 1, "workers_per_fold": 2}})
    storage = tmp_path / "storage"
    proc = subprocess.run([sys.executable, "-m", "pianoray.cli", "run", "--config", str(cfg), "--data", str(e2e_data),
                           "--storage", str(storage), "--address", "auto"],
                          env={**env, "COLUMNS": "160"}, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    run = storage / "two"
    events = lambda kind: [json.loads(f.read_text()) for f in sorted((run / "ledger" / "events" / kind).glob("*.json"))]  # noqa: E731
    assert [e["payload"]["epoch"] for e in events("epoch") if e["round"] == "round2"] == [1, 2]
    (fold,) = events("fold")
    assert 0.0 <= fold["payload"]["test"]["pairwise_accuracy"] <= 1.0
    assert events("selection"), "the run made no selection"
    # Where the fold's two Train workers ran: Ray Train V2 records each worker's node in its run state.
    workers = _query(address, env, "[a.node_id for a in list_actors(filters=[('class_name', '=', 'RayTrainWorker')],"
                                   " limit=100, detail=True)]")
    assert len(workers) == 2 and set(workers) == set(nodes), f"Train workers on nodes {workers}, nodes {nodes}"


def _query(address: str, env: dict[str, str], expression: str) -> list[str]:
    """``expression`` evaluated by a Ray client of the test cluster, in its own process (with the cluster's
    token in its environment; this pytest process never joins the cluster)."""
    code = ("import json, ray; from ray.util.state import list_actors; "
            f"ray.init(address={address!r}, logging_level='ERROR', log_to_driver=False); "
            f"print(json.dumps({expression}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
