"""A real S3 endpoint for tests: ``moto_server`` (pip ``moto[server]``) over HTTP on 127.0.0.1.

No in-process mocks: pyarrow's AWS SDK, boto3 and Ray's storage layer all talk HTTP to this process,
exactly as they would to AWS. moto keeps no state across a restart, so an outage is simulated by
freezing the process (SIGSTOP: connections are accepted by the kernel but never answered, which is
what a hung endpoint looks like) and thawing it (SIGCONT) with everything it stored intact.

Fixtures (import them into a test module: ``from tests.protocol.s3server import moto_s3, moto_server``):

- ``moto_server``: one server for the whole session (starting one costs ~1-2 s).
- ``moto_s3``: AWS_* environment pointed at the session server (monkeypatched, so only inside the test),
  bucket ``pianoray`` created; yields the endpoint URL.
- ``own_moto_s3``: a private server for tests that freeze it; yields the :class:`MotoServer`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

BUCKET = "pianoray"
START_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    endpoint: str
    process: subprocess.Popen
    bucket: str = BUCKET

    def create_bucket(self, name: str | None = None) -> str:
        import boto3

        name = name or self.bucket
        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        if name not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
            client.create_bucket(Bucket=name)
        return name

    def objects(self, prefix: str = "", bucket: str | None = None) -> dict[str, int]:
        """Every object under ``prefix`` as key -> size (through boto3, independent of pyarrow)."""
        import boto3

        client = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out

    @contextmanager
    def outage(self) -> Iterator[None]:
        """Freeze the server for the duration of the block (it always resumes, even on failure)."""
        os.kill(self.process.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.process.pid, signal.SIGCONT)


def _answers(endpoint: str) -> bool:
    try:
        with urllib.request.urlopen(endpoint + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


@contextmanager
def running_moto_server() -> Iterator[MotoServer]:
    """Start ``moto_server`` on a free loopback port, wait until it answers HTTP, terminate at exit."""
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.exists():
        pytest.skip(f"moto_server not installed beside {sys.executable} (pip install 'moto[server]')")
    pytest.importorskip("boto3")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _answers(endpoint):
            if proc.poll() is not None:
                pytest.fail(f"moto_server exited with {proc.returncode} before answering on {endpoint}")
            if time.monotonic() > deadline:
                pytest.fail(f"moto_server did not answer on {endpoint} within {START_TIMEOUT_S:.0f} s")
            time.sleep(0.1)
        server = MotoServer(endpoint, proc)
        server.create_bucket()
        yield server
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)  # a frozen process cannot act on SIGTERM
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def point_aws_at(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> None:
    """Environment for pyarrow, boto3 and Ray workers started after this call; undone after the test."""
    for k, v in {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                 "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                 "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    with running_moto_server() as server:
        yield server


@pytest.fixture
def moto_s3(moto_server: MotoServer, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The session's moto server with bucket ``pianoray``; yields the endpoint URL."""
    point_aws_at(monkeypatch, moto_server.endpoint)
    moto_server.create_bucket()
    yield moto_server.endpoint


@pytest.fixture
def own_moto_s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[MotoServer]:
    """A private moto server (tests that freeze it must not stall the others)."""
    with running_moto_server() as server:
        point_aws_at(monkeypatch, server.endpoint)
        yield server
