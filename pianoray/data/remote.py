"""Remote data caches: a pianoray cache under ``s3://bucket/prefix`` mirrored to a local folder.

Training memory-maps frame shards, which needs local files, so a remote cache is copied once to
``<local_cache>/<bucket>/<prefix>/`` and opened from there. :func:`materialize` is incremental: a small
record (:data:`MIRROR_FILE`, in the local folder) keeps each mirrored file's remote size and mtime, and a
later call downloads only the files whose size or mtime changed (or whose local copy is missing or the
wrong size). Each file is written to a temporary name and renamed into place, so a process that maps an
old shard keeps its old copy and nobody reads half a file. ``corpus.json`` is removed before any other
file changes and downloaded last: a half-mirrored cache has no corpus.json, so it never opens.

S3 goes through pyarrow's ``S3FileSystem``; ``AWS_ENDPOINT_URL_S3`` or ``AWS_ENDPOINT_URL`` selects an
S3-compatible server (moto, MinIO), as for run storage (``pianoray.protocol.storage``; the data layer does
not import the protocol layer, so the few lines are repeated here). Credentials come from the standard
AWS chain.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pianoray.data.cache import CORPUS_FILE, CacheError

MIRROR_FILE = ".pianoray-mirror.json"  # {relative path: {"size": int, "mtime_ns": int}} of the mirrored files
LOCK_FILE = ".pianoray-mirror.lock"  # serialises mirrors of one folder (several workers on a node)
TMP_PREFIX = ".tmp-"
REMOTE_SCHEMES = ("s3",)
DOWNLOAD_THREADS = 8
CHUNK_BYTES = 8 << 20


class RemoteDataError(CacheError):
    """A remote cache that cannot be listed or mirrored; the message names the URI (and file)."""


@dataclass(frozen=True)
class S3Limits:
    """Per-request limits of pyarrow's S3 client: one failed request lasts about
    ``sdk_attempts x (connect_timeout_s + request_timeout_s)``."""

    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0
    sdk_attempts: int = 3
    region: str | None = None


def is_remote_uri(root: Any) -> bool:
    """True for ``scheme://...`` strings (``s3://bucket/prefix``); False for local paths."""
    return isinstance(root, str) and "://" in root


def s3_filesystem(limits: S3Limits | None = None) -> pafs.S3FileSystem:
    """pyarrow S3 filesystem honouring AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL (path-style for local servers)."""
    limits = limits or S3Limits()
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = limits.region or os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    kwargs: dict[str, Any] = {
        "region": region,
        "connect_timeout": limits.connect_timeout_s,
        "request_timeout": limits.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=limits.sdk_attempts),
    }
    if endpoint:
        parsed = urlparse(endpoint if "://" in endpoint else f"http://{endpoint}")
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme or "http"
        kwargs["force_virtual_addressing"] = False  # local servers do not serve virtual-host bucket names
    return pafs.S3FileSystem(**kwargs)


def split_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b/`` -> ("bucket", "a/b"). Raises RemoteDataError for other schemes, no bucket or '..'."""
    parsed = urlparse(uri)
    if parsed.scheme not in REMOTE_SCHEMES:
        raise RemoteDataError(f"{uri}: unsupported data URI scheme {parsed.scheme!r} (use s3://bucket/prefix)")
    bucket = parsed.netloc
    parts = [p for p in parsed.path.split("/") if p not in ("", ".")]
    if not bucket:
        raise RemoteDataError(f"{uri}: the data URI names no bucket (use s3://bucket/prefix)")
    if ".." in parts:
        raise RemoteDataError(f"{uri}: the data URI must not contain '..'")
    return bucket, "/".join(parts)


def local_mirror_dir(uri: str, local_cache: str | Path) -> Path:
    """Where :func:`materialize` puts ``uri``: ``<local_cache>/<bucket>/<prefix>``."""
    bucket, prefix = split_uri(uri)
    return Path(local_cache).expanduser().resolve() / bucket / prefix


def materialize(
    uri: str,
    local_cache: str | Path,
    *,
    filesystem: pafs.FileSystem | None = None,
    limits: S3Limits | None = None,
) -> Path:
    """Mirror the remote cache folder ``uri`` into ``local_cache/<bucket>/<prefix>`` and return that folder.

    Only files whose remote size or mtime changed since the last mirror are downloaded; files that
    vanished remotely are removed locally (only files this mirror wrote). Raises RemoteDataError naming
    the URI when the listing or a download fails, or when the remote folder holds no corpus.json
    (not a pianoray cache, or an unfinished one).

    Args:
        uri: ``s3://bucket/prefix`` of a folder holding a pianoray cache (``docs/data-format.md``).
        local_cache: root of the local mirrors (``data.data_cache``); ``~`` is expanded.
        filesystem: an explicit pyarrow filesystem whose paths are ``bucket/prefix/...`` (tests);
            default: :func:`s3_filesystem`.
        limits: timeouts and SDK retries of the default S3 client.
    """
    bucket, prefix = split_uri(uri)
    base = f"{bucket}/{prefix}".rstrip("/")
    local = local_mirror_dir(uri, local_cache)
    try:
        local.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RemoteDataError(f"{uri}: cannot create the local mirror folder {local} ({e})") from None
    fs = filesystem if filesystem is not None else s3_filesystem(limits)
    with _locked(local / LOCK_FILE):
        for leftover in local.rglob(f"{TMP_PREFIX}*"):  # from a mirror that was killed midway
            leftover.unlink(missing_ok=True)
        remote = _list_remote(fs, uri, base)
        if CORPUS_FILE not in remote:
            raise RemoteDataError(
                f"{uri}/{CORPUS_FILE}: not found (not a pianoray cache, or an unfinished one; "
                f"{len(remote)} other file(s) under {uri})"
            )
        record = _read_record(local / MIRROR_FILE)
        stale = sorted(rel for rel, stat in remote.items() if not _up_to_date(local / rel, record.get(rel), stat))
        gone = sorted(set(record) - set(remote))
        if not stale and not gone:
            return local
        # corpus.json leaves first and comes back last: in between, the folder is not an openable cache.
        # An unchanged one is only moved aside (a crash leaves it unrecorded: downloaded next time).
        held = local / f"{TMP_PREFIX}held-{CORPUS_FILE}"
        keep_meta = CORPUS_FILE not in stale
        if keep_meta:
            os.replace(local / CORPUS_FILE, held)
        _drop(local, CORPUS_FILE, record)
        for rel in gone:
            _drop(local, rel, record)
        _write_record(local / MIRROR_FILE, record)
        guard = threading.Lock()

        def fetch(rel: str) -> None:
            _download(fs, uri, f"{base}/{rel}", rel, local / rel)
            with guard:
                record[rel] = remote[rel]
                _write_record(local / MIRROR_FILE, record)

        body = [rel for rel in stale if rel != CORPUS_FILE]
        with ThreadPoolExecutor(max_workers=DOWNLOAD_THREADS) as pool:
            list(pool.map(fetch, body))  # list(): re-raises the first download error
        if keep_meta:
            os.replace(held, local / CORPUS_FILE)
            record[CORPUS_FILE] = remote[CORPUS_FILE]
            _write_record(local / MIRROR_FILE, record)
        else:
            fetch(CORPUS_FILE)
    return local


# ---------------------------------------------------------------------------------- internals


def _list_remote(fs: pafs.FileSystem, uri: str, base: str) -> dict[str, dict[str, int]]:
    """{relative path: {"size", "mtime_ns"}} of every file under ``base`` (temporary files skipped)."""
    try:
        infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=False))
    except FileNotFoundError:
        raise RemoteDataError(f"{uri}: no such remote folder (bucket or prefix not found)") from None
    except OSError as e:
        raise RemoteDataError(f"{uri}: cannot list the remote cache ({e})") from None
    out: dict[str, dict[str, int]] = {}
    for info in infos:
        if info.type != pafs.FileType.File:
            continue
        rel = info.path[len(base) + 1 :] if base else info.path
        if not rel or any(p.startswith(TMP_PREFIX) or p in ("..", ".") for p in rel.split("/")):
            continue
        if rel in (MIRROR_FILE, LOCK_FILE):
            continue
        out[rel] = {"size": int(info.size), "mtime_ns": int(info.mtime_ns or 0)}
    return out


def _up_to_date(path: Path, recorded: dict[str, int] | None, remote: dict[str, int]) -> bool:
    if recorded != remote:
        return False
    try:
        return path.stat().st_size == remote["size"]  # a local copy deleted or truncated by hand
    except FileNotFoundError:
        return False


def _download(fs: pafs.FileSystem, uri: str, src: str, rel: str, dst: Path) -> None:
    """Stream ``src`` (``uri``/``rel``) to a temporary file beside ``dst``, then rename it into place."""
    tmp = dst.with_name(f"{TMP_PREFIX}{dst.name}.{uuid.uuid4().hex[:8]}")
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with fs.open_input_stream(src) as stream, open(tmp, "wb") as out:
            while chunk := stream.read(CHUNK_BYTES):
                out.write(chunk)
        os.replace(tmp, dst)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise RemoteDataError(f"{uri.rstrip('/')}/{rel}: download to {dst} failed ({e})") from None


def _drop(local: Path, rel: str, record: dict[str, Any]) -> None:
    (local / rel).unlink(missing_ok=True)
    record.pop(rel, None)


def _read_record(path: Path) -> dict[str, dict[str, int]]:
    """The mirror record; an unreadable one counts as empty (everything is downloaded again)."""
    try:
        raw = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return {}
    files = raw.get("files") if isinstance(raw, dict) else None
    return {k: v for k, v in files.items() if isinstance(v, dict)} if isinstance(files, dict) else {}


def _write_record(path: Path, record: dict[str, dict[str, int]]) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps({"files": record}, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)


class _locked:
    """An exclusive ``flock`` on ``path`` for the duration of a ``with`` block."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> None:
        self._fh = open(self.path, "a+")
        fcntl.flock(self._fh, fcntl.LOCK_EX)

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self._fh, fcntl.LOCK_UN)
        self._fh.close()
