"""Remote data caches (``data.root: s3://bucket/prefix``) against a real S3 endpoint: moto_server on
loopback (tests/protocol/s3server.py). Uploads go through boto3, independent of the code under test."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import pianoray.data.remote as remote
from pianoray.config import DataConfig, load_config
from pianoray.data.cache import CORPUS_FILE, CacheError
from pianoray.data.corpus import open_corpus
from pianoray.data.demo import generate_demo
from pianoray.data.remote import MIRROR_FILE, RemoteDataError, local_mirror_dir, materialize, split_uri
from tests.protocol.s3server import BUCKET, MotoServer, free_port, moto_s3, moto_server  # noqa: F401  (fixtures)

PREFIX = "cache"
URI = f"s3://{BUCKET}/{PREFIX}"


def _client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _upload(endpoint: str, folder: Path, prefix: str) -> int:
    client = _client(endpoint)
    n = 0
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            client.put_object(Bucket=BUCKET, Key=f"{prefix}/{path.relative_to(folder).as_posix()}", Body=path.read_bytes())
            n += 1
    return n


def _local_files(folder: Path) -> dict[str, tuple[int, int]]:
    """relative path -> (inode, mtime_ns) of the mirrored files: a re-download (tmp + rename) changes both."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".pianoray-mirror")
    }


@pytest.fixture
def demo_cache(tmp_path: Path) -> Path:
    return generate_demo(tmp_path / "original", seed=1, scale=0.2)


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every file materialize() downloads, by relative path."""
    seen: list[str] = []
    real = remote._download

    def counting(fs, uri, src, rel, dst):
        seen.append(rel)
        return real(fs, uri, src, rel, dst)

    monkeypatch.setattr(remote, "_download", counting)
    return seen


def test_s3_cache_opens_like_the_local_one_and_mirrors_incrementally(
    moto_s3: str, demo_cache: Path, tmp_path: Path, downloads: list[str]
) -> None:
    n_files = _upload(moto_s3, demo_cache, PREFIX)
    cfg = DataConfig(root=URI, data_cache=tmp_path / "mirror")
    assert cfg.root == URI  # kept as a URI, not turned into a local Path

    corpus = open_corpus(cfg)
    original = open_corpus(DataConfig(root=demo_cache))
    mirror = local_mirror_dir(URI, tmp_path / "mirror")
    assert corpus.root == mirror == (tmp_path / "mirror" / BUCKET / PREFIX).resolve()
    assert len(downloads) == n_files and downloads[-1] == CORPUS_FILE  # corpus.json last
    assert corpus.meta == original.meta and corpus.hash() == original.hash()
    assert corpus.tiers == original.tiers
    for tier in original.tiers:
        pd.testing.assert_frame_equal(corpus.manifest(tier), original.manifest(tier))
        m = original.manifest(tier)
        for row in m[m["n_frames"] > 0].head(5).to_dict("records"):
            got = corpus.frames(tier, row)
            np.testing.assert_array_equal(got, original.frames(tier, row))
            assert isinstance(got.base, np.memmap) or isinstance(got, np.memmap)  # mapped, not read whole
            assert str(corpus.frame_store(tier).shard_path(int(row["shard"]))).startswith(str(mirror))
    assert corpus.labels19.keys() == original.labels19.keys()
    assert corpus.difficulty == original.difficulty and corpus.stop == original.stop

    # A second open downloads nothing and leaves every local file as it was.
    before = _local_files(mirror)
    downloads.clear()
    open_corpus(cfg)
    assert downloads == [] and _local_files(mirror) == before

    # One remote file changes: only that file comes down again; corpus.json is kept (not re-fetched).
    changed = "difficulty.json"
    new_text = '{"piece00": 0.123456789, "piece01": 0.5}\n'
    _client(moto_s3).put_object(Bucket=BUCKET, Key=f"{PREFIX}/{changed}", Body=new_text.encode())
    again = open_corpus(cfg)
    assert downloads == [changed]
    after = _local_files(mirror)
    assert {k for k in before if before[k] != after[k]} == {changed}
    assert (mirror / changed).read_text() == new_text and again.difficulty["piece00"] == pytest.approx(0.123456789)

    # A file deleted remotely disappears from the mirror too.
    midi = next(k for k in before if k.endswith(".mid"))
    _client(moto_s3).delete_object(Bucket=BUCKET, Key=f"{PREFIX}/{midi}")
    downloads.clear()
    materialize(URI, tmp_path / "mirror")
    assert downloads == [] and not (mirror / midi).exists()
    assert (mirror / MIRROR_FILE).is_file() and (mirror / CORPUS_FILE).is_file()


def test_a_lost_local_copy_is_downloaded_again(moto_s3: str, demo_cache: Path, tmp_path: Path,
                                               downloads: list[str]) -> None:
    _upload(moto_s3, demo_cache, "lost")
    uri = f"s3://{BUCKET}/lost"
    mirror = materialize(uri, tmp_path / "m")
    shard = next(mirror.rglob("frames-*.npy"))
    shard.write_bytes(b"truncated")
    downloads.clear()
    materialize(uri, tmp_path / "m")
    assert downloads == [shard.relative_to(mirror).as_posix()]
    assert shard.read_bytes() == (demo_cache / shard.relative_to(mirror)).read_bytes()


def test_an_unfinished_remote_cache_never_opens(moto_s3: str, demo_cache: Path, tmp_path: Path) -> None:
    (demo_cache / CORPUS_FILE).unlink()  # a writer that stopped before corpus.json
    _upload(moto_s3, demo_cache, "unfinished")
    with pytest.raises(RemoteDataError, match=rf"s3://{BUCKET}/unfinished/corpus.json: not found"):
        open_corpus(DataConfig(root=f"s3://{BUCKET}/unfinished", data_cache=tmp_path / "m"))
    assert not (local_mirror_dir(f"s3://{BUCKET}/unfinished", tmp_path / "m") / CORPUS_FILE).exists()


def test_missing_bucket_and_unreachable_endpoint_name_the_uri(
    moto_s3: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(RemoteDataError, match=r"s3://no-such-bucket/cache: cannot list .*bucket does not exist"):
        open_corpus(DataConfig(root="s3://no-such-bucket/cache", data_cache=tmp_path))
    with pytest.raises(RemoteDataError, match=rf"s3://{BUCKET}/nothing-here: no such remote folder"):
        materialize(f"s3://{BUCKET}/nothing-here", tmp_path)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nobody listens there
    with pytest.raises(RemoteDataError, match=rf"s3://{BUCKET}/cache: "):
        materialize(f"s3://{BUCKET}/cache", tmp_path, limits=remote.S3Limits(1.0, 1.0, 1))


def test_uri_parsing_and_config(tmp_path: Path) -> None:
    assert split_uri("s3://b/a/b/") == ("b", "a/b")
    for bad, msg in (("s3:///x", "names no bucket"), ("gs://b/x", "unsupported"), ("s3://b/../x", r"'\.\.'")):
        with pytest.raises(RemoteDataError, match=msg):
            split_uri(bad)
    with pytest.raises(CacheError, match="source: cache"):
        open_corpus(DataConfig(root="s3://b/x", source="percepiano", data_cache=tmp_path))
    y = tmp_path / "exp.yaml"
    y.write_text("data: {root: s3://bucket/cache, data_cache: mirrors}\n")
    cfg = load_config(y, check_models=False)
    assert cfg.data.root == "s3://bucket/cache"  # not resolved against the YAML folder
    assert cfg.data.data_cache == (tmp_path / "mirrors").resolve()
    y.write_text("data: {root: corpus}\n")
    assert load_config(y, check_models=False).data.root == (tmp_path / "corpus").resolve()
    with pytest.raises(Exception, match="s3://bucket/prefix"):
        DataConfig(root="gs://b/x")
