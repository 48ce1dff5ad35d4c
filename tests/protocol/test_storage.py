import os
import threading

import pytest

from pianoray.protocol.storage import RunStorage, StorageError


@pytest.fixture
def store(tmp_path):
    return RunStorage(tmp_path / "runs", "demo", fsync=False, backoff_s=0.001)


def test_paths_and_uri(tmp_path, store):
    assert store.uri == str((tmp_path / "runs" / "demo").resolve())
    assert store.storage_uri == str((tmp_path / "runs").resolve())
    assert store.local_dir() == (tmp_path / "runs" / "demo").resolve()
    assert store.path("ledger", "events") == f"{store.uri}/ledger/events"
    assert RunStorage(f"file://{tmp_path}", "x").uri == f"{tmp_path.resolve()}/x"


def test_s3_uri_is_built_without_contacting_a_server(monkeypatch):
    # Constructing the filesystem must not need the network (no bucket-region lookup).
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    s = RunStorage("s3://bucket/some/prefix/", "run1")
    assert s.uri == "s3://bucket/some/prefix/run1"
    assert s.storage_uri == "s3://bucket/some/prefix"
    assert s.local_dir() is None
    assert s.path("a/b.json") == "s3://bucket/some/prefix/run1/a/b.json"


def test_bad_names_are_errors(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        RunStorage(tmp_path, "/")
    s = RunStorage(tmp_path, "r")
    with pytest.raises(ValueError, match=r"\.\."):
        s.write_bytes("../escape", b"x")
    with pytest.raises(ValueError, match="no bucket"):
        RunStorage("s3://", "r")


def test_bytes_and_json_round_trip(store):
    assert store.write_bytes("a/b/c.bin", b"\x00\x01") is True
    assert store.read_bytes("a/b/c.bin") == b"\x00\x01"
    store.write_json("meta.json", {"x": [1, 2.5, None]})
    assert store.read_json("meta.json") == {"x": [1, 2.5, None]}
    assert store.exists("meta.json") and not store.exists("nope.json")
    assert store.list() == ["a/b/c.bin", "meta.json"]
    assert store.list("a") == ["a/b/c.bin"]
    assert store.list("missing") == []
    store.delete("meta.json")
    store.delete("meta.json")  # absent is fine
    assert not store.exists("meta.json")


def test_missing_file_and_bad_json_name_the_uri(store):
    with pytest.raises(FileNotFoundError, match=store.uri):
        store.read_bytes("absent.json")
    store.write_bytes("bad.json", b"{not json")
    with pytest.raises(ValueError, match="bad.json"):
        store.read_json("bad.json")


def test_overwrite_false_is_create_if_absent(store):
    assert store.write_bytes("e.json", b"first", overwrite=False) is True
    assert store.write_bytes("e.json", b"second", overwrite=False) is False
    assert store.read_bytes("e.json") == b"first"
    assert store.write_bytes("e.json", b"third") is True
    assert store.read_bytes("e.json") == b"third"
    # No temporary files are left behind by either path.
    assert os.listdir(store.local_dir()) == ["e.json"]


def test_tmp_files_are_never_listed(store):
    store.write_bytes("d/real.json", b"{}")
    (store.local_dir() / "d" / ".tmp-abc-half.json").write_bytes(b'{"trunc')
    assert store.list("d") == ["d/real.json"]


def test_racing_create_if_absent_has_one_winner(store):
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def writer(i: int) -> None:
        barrier.wait()
        results.append(store.write_bytes("race.json", f"writer {i}".encode(), overwrite=False))

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    assert store.read_bytes("race.json").startswith(b"writer ")


def test_transient_errors_are_retried(store, monkeypatch):
    calls = {"n": 0}
    real = store._write_local

    def flaky(rel, data, overwrite):
        calls["n"] += 1
        if calls["n"] < 3:
            raise ConnectionResetError("connection reset")
        return real(rel, data, overwrite)

    monkeypatch.setattr(store, "_write_local", flaky)
    assert store.write_bytes("x.json", b"{}") is True
    assert calls["n"] == 3


def test_persistent_errors_give_up_naming_the_uri(tmp_path, monkeypatch):
    store = RunStorage(tmp_path, "r", attempts=3, backoff_s=0.001)
    calls = {"n": 0}

    def broken(rel, data, overwrite):
        calls["n"] += 1
        raise TimeoutError("timed out")

    monkeypatch.setattr(store, "_write_local", broken)
    with pytest.raises(StorageError, match=rf"{store.uri}/x\.json: write failed after 3 attempt"):
        store.write_bytes("x.json", b"{}")
    assert calls["n"] == 3
    with pytest.raises(ValueError):
        RunStorage(tmp_path, "r", attempts=0)
