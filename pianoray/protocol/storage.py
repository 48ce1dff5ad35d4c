"""A run's storage: ``<storage>/<run name>/`` on a local disk, an NFS mount or ``s3://bucket/prefix``.

Every path given to :class:`RunStorage` is relative to the run folder and uses ``/``. Writes are atomic:
locally a temporary file in the same folder is renamed onto the final name (``os.replace`` / ``os.link``,
both atomic on POSIX and NFS); on S3 a single PUT is atomic, so the object appears only once complete.
Temporary files start with ``.tmp-`` and :meth:`RunStorage.list` never returns them, so a reader cannot see
a half-written file.

S3 goes through pyarrow's ``S3FileSystem`` (no hand-written client). ``AWS_ENDPOINT_URL_S3`` or
``AWS_ENDPOINT_URL`` (e.g. ``http://127.0.0.1:5000`` for a local moto server) overrides the endpoint;
credentials come from the usual AWS environment/config chain.

Transient errors (any ``OSError`` other than "not found"/"exists") are retried with exponential backoff;
after the last attempt a :class:`StorageError` names the URI, the operation and the path. How long one
S3 request may hang (an endpoint that accepts connections but never answers) is bounded by
:class:`S3Limits`; the defaults suit a cluster, tests pass sub-second timeouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar
from urllib.parse import urlparse

import pyarrow.fs as pafs

from pianoray.data.remote import S3Limits, s3_filesystem  # one S3 client setup for data and runs
from pianoray.errors import InputError, MissingInputError, PianorayError

T = TypeVar("T")

TMP_PREFIX = ".tmp-"
DRIVER_CACHE = Path("~/.cache/pianoray/runs")  # RunStorage.driver_dir of runs in object storage


class StorageError(PianorayError, OSError):
    """A storage operation failed for good (after retries); the message names the URI and path."""


def _clean_rel(rel: str) -> str:
    parts = [p for p in str(rel).replace("\\", "/").split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        raise InputError(f"storage path {rel!r} must stay inside the run folder (no '..')")
    return "/".join(parts)


class RunStorage:
    """One run's folder in local, NFS or S3 storage.

    Args:
        uri: the storage root: a local/NFS path (relative paths are made absolute), ``file://...`` or
            ``s3://bucket/prefix``.
        name: the run name; the run lives at ``<uri>/<name>/``.
        attempts: tries per operation before giving up on transient errors (>= 1).
        backoff_s: first retry delay; doubles each retry, capped at ``max_backoff_s``.
        filesystem: an explicit pyarrow filesystem (tests); its root is then ``uri`` as a path.
        s3: timeouts and SDK retries of the S3 client (``s3://`` URIs only); see :class:`S3Limits`.
        fsync: locally, flush each file to disk before renaming it into place, so a crash never leaves
            an empty "complete" file (~5 ms per write; tests that write thousands of files turn it off).
    """

    def __init__(
        self,
        uri: str | Path,
        name: str,
        *,
        attempts: int = 5,
        backoff_s: float = 0.1,
        max_backoff_s: float = 5.0,
        filesystem: pafs.FileSystem | None = None,
        fsync: bool = True,
        s3: S3Limits | None = None,
    ) -> None:
        if attempts < 1:
            raise ValueError(f"RunStorage: attempts must be >= 1, got {attempts}")
        name = _clean_rel(name)
        if not name:
            raise InputError(f"RunStorage: run name {name!r} is empty")
        self.name = name
        self.attempts = attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.fsync = fsync
        root_uri = str(uri)
        scheme = urlparse(root_uri).scheme if "://" in root_uri else ""
        if filesystem is not None:
            self._fs, root = filesystem, root_uri.rstrip("/")
        elif scheme == "s3":
            self._fs = s3_filesystem(s3)
            root = root_uri[len("s3://") :].strip("/")
            if not root:
                raise InputError(f"storage URI {root_uri!r} names no bucket")
        elif scheme in ("", "file"):
            local = Path(root_uri[len("file://") :] if scheme == "file" else root_uri).expanduser().resolve()
            self._fs, root = pafs.LocalFileSystem(), str(local)
        else:
            self._fs, root = pafs.FileSystem.from_uri(root_uri)
            root = root.rstrip("/")
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self._root = f"{root}/{name}"
        self.uri = (
            self._root
            if self._local
            else f"s3://{self._root}" if isinstance(self._fs, pafs.S3FileSystem) else f"{scheme}://{self._root}"
        )
        # Ray's storage_path is the parent of the run folder; Ray appends the run name itself.
        self.storage_uri = self.uri[: -len(name) - 1]

    def __repr__(self) -> str:
        return f"RunStorage({self.uri!r})"

    # -- paths -------------------------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """Full path/URI of ``parts`` inside the run (local absolute path or ``s3://...``)."""
        rel = _clean_rel("/".join(parts))
        return f"{self.uri}/{rel}" if rel else self.uri

    def local_dir(self) -> Path | None:
        """The run folder on the local/NFS filesystem, or None for object storage."""
        return Path(self._root) if self._local else None

    def driver_dir(self, name: str, cache: Path = DRIVER_CACHE) -> Path:
        """A folder of this run on this machine's disk: ``<run>/<name>`` for a run on a filesystem; for one in
        object storage, ``<cache>/<hash of the run's URI>/<name>`` (what the driver keeps beside the run:
        Optuna journals, Round 3's starting states)."""
        local = self.local_dir()
        if local is not None:
            return local / name
        return Path(cache).expanduser() / hashlib.sha256(self.uri.encode()).hexdigest()[:16] / name

    def _abs(self, rel: str) -> str:
        rel = _clean_rel(rel)
        return f"{self._root}/{rel}" if rel else self._root

    # -- retry -------------------------------------------------------------------------------------
    def _retry(self, op: str, rel: str, fn: Callable[[], T]) -> T:
        delay = self.backoff_s
        started = time.monotonic()
        for attempt in range(1, self.attempts + 1):
            try:
                return fn()
            except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError):
                raise  # not transient: the caller decides
            except OSError as e:
                if attempt == self.attempts:
                    raise StorageError(
                        f"{self.path(rel)}: {op} failed after {self.attempts} attempt(s) over "
                        f"{time.monotonic() - started:.1f} s: {e}"
                    ) from e
                time.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
        raise AssertionError("unreachable")

    # -- bytes -------------------------------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes, *, overwrite: bool = True) -> bool:
        """Atomically write ``data`` at ``rel``; readers see the old object, no object, or all of ``data``.

        With ``overwrite=False`` an existing object is left alone and False is returned (create-if-absent;
        locally exact via ``os.link``, on S3 check-then-PUT, where a lost race rewrites the same key).
        Returns True when this call wrote the object.
        """
        rel = _clean_rel(rel)
        if not rel:
            raise ValueError(f"{self.uri}: write_bytes needs a file path, got {rel!r}")
        if self._local:
            return self._retry("write", rel, lambda: self._write_local(rel, data, overwrite))
        return self._retry("write", rel, lambda: self._write_remote(rel, data, overwrite))

    def _write_local(self, rel: str, data: bytes, overwrite: bool) -> bool:
        final = Path(self._abs(rel))
        final.parent.mkdir(parents=True, exist_ok=True)
        if not overwrite and final.exists():
            return False
        tmp = final.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{final.name}")
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
            if overwrite:
                os.replace(tmp, final)
                return True
            try:
                os.link(tmp, final)  # atomic create-if-absent, also on NFS
            except FileExistsError:
                return False
            except OSError:
                # Filesystems without hard links: best effort (a racing writer of the same name wins).
                if final.exists():
                    return False
                os.replace(tmp, final)
            return True
        finally:
            if tmp.exists():
                tmp.unlink()

    def _write_remote(self, rel: str, data: bytes, overwrite: bool) -> bool:
        path = self._abs(rel)
        if not overwrite and self._fs.get_file_info(path).type != pafs.FileType.NotFound:
            return False
        if not isinstance(self._fs, pafs.S3FileSystem):
            self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        # One PUT: S3 makes the object visible only when the stream closes complete.
        with self._fs.open_output_stream(path) as out:
            out.write(data)
        return True

    def read_bytes(self, rel: str) -> bytes:
        """Contents of ``rel``; FileNotFoundError (naming the URI) when it is absent."""
        rel = _clean_rel(rel)
        path = self._abs(rel)

        def read() -> bytes:
            if self._local:
                with open(path, "rb") as f:
                    return f.read()
            with self._fs.open_input_stream(path) as f:
                return f.read()

        try:
            return self._retry("read", rel, read)
        except FileNotFoundError:
            raise MissingInputError(f"{self.path(rel)}: no such file in run storage") from None

    def read_many(self, rels: Iterable[str], *, threads: int = 16) -> dict[str, bytes]:
        """Read several files; in parallel for object storage, where each read is a round trip."""
        rels = list(rels)
        if self._local or len(rels) <= 1:
            return {r: self.read_bytes(r) for r in rels}
        with ThreadPoolExecutor(max_workers=min(threads, len(rels))) as pool:
            return dict(zip(rels, pool.map(self.read_bytes, rels)))

    def exists(self, rel: str) -> bool:
        rel = _clean_rel(rel)
        path = self._abs(rel)
        if self._local:
            return os.path.exists(path)
        return self._retry("exists", rel, lambda: self._fs.get_file_info(path).type != pafs.FileType.NotFound)

    def list(self, prefix: str = "") -> list[str]:
        """Files under folder ``prefix`` (recursive), as sorted run-relative paths; tmp files left out.

        One listing call whatever the number of files (one recursive LIST on S3, paginated by pyarrow).
        A missing prefix lists as empty.
        """
        prefix = _clean_rel(prefix)
        base = self._abs(prefix)
        root_len = len(self._root) + 1
        if self._local:
            out = []
            for dirpath, _dirs, files in os.walk(base):
                for fname in files:
                    if not fname.startswith(TMP_PREFIX):
                        out.append(os.path.join(dirpath, fname)[root_len:].replace(os.sep, "/"))
            return sorted(out)
        selector = pafs.FileSelector(base, recursive=True, allow_not_found=True)
        infos = self._retry("list", prefix, lambda: self._fs.get_file_info(selector))
        return sorted(
            i.path[root_len:]
            for i in infos
            if i.type == pafs.FileType.File and not i.base_name.startswith(TMP_PREFIX)
        )

    def delete(self, rel: str) -> None:
        """Remove one file (absent is fine)."""
        rel = _clean_rel(rel)
        try:
            self._retry("delete", rel, lambda: self._fs.delete_file(self._abs(rel)))
        except FileNotFoundError:
            pass

    # -- JSON --------------------------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any, *, overwrite: bool = True) -> bool:
        return self.write_bytes(rel, json.dumps(obj, sort_keys=True, indent=1).encode(), overwrite=overwrite)

    def read_json(self, rel: str) -> Any:
        data = self.read_bytes(rel)
        try:
            return json.loads(data)
        except json.JSONDecodeError as e:
            raise InputError(f"{self.path(rel)}: not valid JSON: {e}") from None
