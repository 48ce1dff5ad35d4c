"""The on-disk tier cache: frames in memory-mapped fp16 shards, one parquet manifest per tier, MIDI, labels.

Layout (see docs/data-format.md for the why)::

    ROOT/corpus.json                 format version, width, frame rate, MuQ layer, window length, tiers,
                                     label names, creator, content hashes. Written last: its presence
                                     marks a complete cache.
    ROOT/<T1|T2|T3|T4>/manifest.parquet
    ROOT/<tier>/frames-00000.npy     2-D [rows, width] float16; a segment is rows [offset, offset + n)
    ROOT/midi/...                    performance and score MIDI (manifest paths are relative to ROOT)
    ROOT/labels/percepiano19.json    segment id -> 19 floats in [0, 1]
    ROOT/difficulty.json             piece -> grade 0-10
    ROOT/stop.json                   segment id -> 0/1

Nothing here needs the corpus in RAM: the writer buffers at most one shard per tier, and readers map
shards lazily with ``np.load(mmap_mode="r")``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from pianoray.data.tiers import Tier, parse_tier
from pianoray.errors import PianorayError

FORMAT_VERSION = 1
FRAME_RATE = 25  # MuQ frames per second
MUQ_LAYER = 8  # the cache holds hidden_states[8]: the input of MuQ layer 9 (0-indexed 8)
FRAME_DTYPE = "float16"
DEFAULT_SHARD_BYTES = 256 * 1024**2

CORPUS_FILE = "corpus.json"
MANIFEST_FILE = "manifest.parquet"
LABELS19_FILE = "labels/percepiano19.json"
DIFFICULTY_FILE = "difficulty.json"
STOP_FILE = "stop.json"

# Columns every manifest has, then the columns each tier adds.
COMMON_COLUMNS = (
    "segment_id", "piece", "passage", "performer", "n_frames", "shard", "offset",
    "perf_midi", "perf_midi_sha", "score_midi", "score_midi_sha",
)
TIER_COLUMNS: dict[Tier, tuple[str, ...]] = {
    Tier.T1: ("labels19",),
    Tier.T2: ("placement", "round_id", "placement_score"),
    Tier.T3: ("group",),
    Tier.T4: ("clean_id", "augmentation"),
}


class CacheError(PianorayError, ValueError):
    """A cache that cannot be written or read as it is; the message names the file (and key)."""


def shard_name(index: int) -> str:
    return f"frames-{index:05d}.npy"


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_atomic(path: Path, data: bytes) -> None:
    """Write through a temporary name and ``os.replace`` so a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj: Any) -> str:
    """Write ``obj`` as stable (sorted-key) JSON; returns the sha256 of the bytes written."""
    data = (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode()
    write_atomic(path, data)
    return sha256_bytes(data)


class _ShardWriter:
    """Buffers one tier's frames and writes shards of at most ``shard_bytes`` (memory: one shard)."""

    def __init__(self, tier_dir: Path, width: int, shard_bytes: int) -> None:
        self.tier_dir = tier_dir
        self.width = width
        self.max_rows = max(1, shard_bytes // (2 * width))
        self.index = 0
        self.rows = 0
        self.chunks: list[np.ndarray] = []
        self.hashes: dict[str, str] = {}

    def append(self, frames: np.ndarray) -> tuple[int, int]:
        """Queue ``frames`` [n, width] fp16; returns (shard, offset). A segment never spans two shards."""
        n = frames.shape[0]
        if self.rows and self.rows + n > self.max_rows:
            self.flush()
        where = (self.index, self.rows)
        self.chunks.append(frames)
        self.rows += n
        return where

    def flush(self) -> None:
        if not self.rows:
            return
        self.tier_dir.mkdir(parents=True, exist_ok=True)
        path = self.tier_dir / shard_name(self.index)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        h = hashlib.sha256()
        # Header then rows, chunk by chunk: the shard is never assembled in one array.
        with open(tmp, "wb") as f:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(FRAME_DTYPE)), "fortran_order": False,
                      "shape": (self.rows, self.width)}
            np.lib.format.write_array_header_1_0(f, header)
            for chunk in self.chunks:
                f.write(np.ascontiguousarray(chunk).tobytes())
        with open(tmp, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        os.replace(tmp, path)
        self.hashes[path.name] = h.hexdigest()
        self.index += 1
        self.rows = 0
        self.chunks = []


class CacheWriter:
    """Writes a cache segment by segment.

    >>> w = CacheWriter(root, width=128, window_frames=16)          # doctest: +SKIP
    >>> w.add("T1", {"segment_id": "a", "piece": "p", ...}, frames)  # frames [n, 128], n % 16 == 0
    >>> w.close()                                                    # manifests, labels, corpus.json

    Rows are dicts with the manifest columns (``COMMON_COLUMNS`` + the tier's ``TIER_COLUMNS``);
    n_frames, shard and offset are filled here. A T1 row's ``labels19`` also goes to
    labels/percepiano19.json. ``frames=None`` stores a segment without frames (shard = offset = -1).
    """

    def __init__(
        self,
        root: str | Path,
        width: int,
        window_frames: int,
        *,
        name: str = "pianoray-cache",
        created_by: Mapping[str, Any] | None = None,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        frame_rate: int = FRAME_RATE,
        muq_layer: int = MUQ_LAYER,
        label_names: Iterable[str] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.root = Path(root)
        if (self.root / CORPUS_FILE).exists() and not overwrite:
            raise CacheError(f"{self.root / CORPUS_FILE}: a cache already exists here (overwrite=False)")
        if width < 1 or window_frames < 1:
            raise CacheError(f"{self.root}: width and window_frames must be >= 1")
        if overwrite and (self.root / CORPUS_FILE).exists():
            # Remove the old completion marker first: a crash mid-rewrite must not look complete.
            (self.root / CORPUS_FILE).unlink()
            for tier in Tier:
                shutil.rmtree(self.root / tier.name, ignore_errors=True)
        self.root.mkdir(parents=True, exist_ok=True)
        self.width = int(width)
        self.window_frames = int(window_frames)
        self.name = name
        self.created_by = dict(created_by or {"tool": "pianoray"})
        self.shard_bytes = int(shard_bytes)
        self.frame_rate = frame_rate
        self.muq_layer = muq_layer
        self.label_names = list(label_names) if label_names is not None else None
        self._rows: dict[Tier, list[dict[str, Any]]] = {}
        self._shards: dict[Tier, _ShardWriter] = {}
        self._ids: dict[Tier, set[str]] = {}
        self.labels19: dict[str, list[float]] = {}
        self.difficulty: dict[str, float] = {}
        self.stop: dict[str, int] = {}
        self._closed = False

    # ------------------------------------------------------------------ segments
    def add(self, tier: str | Tier, row: Mapping[str, Any], frames: np.ndarray | None) -> None:
        """Append one segment. Raises CacheError naming the segment for NaN/Inf, wrong width or length."""
        if self._closed:
            raise CacheError(f"{self.root}: writer already closed")
        tier = parse_tier(tier)
        row = dict(row)
        sid = row.get("segment_id")
        if not isinstance(sid, str) or not sid:
            raise CacheError(f"{self.root}/{tier.name}: row without a segment_id: {row!r:.200}")
        where = f"{self.root}/{tier.name}: segment {sid!r}"
        ids = self._ids.setdefault(tier, set())
        if sid in ids:
            raise CacheError(f"{where}: duplicate segment_id")
        allowed = set(COMMON_COLUMNS) | set(TIER_COLUMNS[tier])
        unknown = set(row) - allowed
        if unknown:
            raise CacheError(f"{where}: unknown columns {sorted(unknown)} for {tier.name}")
        if frames is None:
            row.update(n_frames=0, shard=-1, offset=-1)
        else:
            frames = np.asarray(frames)
            if frames.ndim != 2 or frames.shape[1] != self.width:
                raise CacheError(f"{where}: frames shape {frames.shape}, expected [n, {self.width}]")
            n = frames.shape[0]
            if n == 0 or n % self.window_frames:
                raise CacheError(f"{where}: {n} frames is not a positive multiple of window_frames={self.window_frames}")
            # Check before the cast: fp16 would turn large finite values into inf silently.
            if not np.isfinite(frames).all() or np.abs(frames).max() > np.finfo(np.float16).max:
                raise CacheError(f"{where}: frames contain NaN/Inf or values beyond float16 range")
            frames = frames.astype(FRAME_DTYPE, copy=False)
            if tier not in self._shards:
                self._shards[tier] = _ShardWriter(self.root / tier.name, self.width, self.shard_bytes)
            shard, offset = self._shards[tier].append(frames)
            row.update(n_frames=n, shard=shard, offset=offset)
        if tier is Tier.T1 and row.get("labels19") is not None:
            values = np.asarray(row["labels19"], dtype=np.float64)
            if values.shape != (19,) or not np.isfinite(values).all() or values.min() < 0 or values.max() > 1:
                raise CacheError(f"{where}: labels19 must be 19 finite values in [0, 1]")
            self.labels19[sid] = [float(v) for v in values]
            row["labels19"] = self.labels19[sid]
        ids.add(sid)
        self._rows.setdefault(tier, []).append(row)

    def write_midi(self, notes: Any, relpath: str) -> tuple[str, str]:
        """Write a NoteTable to ROOT/relpath; returns (relpath, sha256) for the manifest."""
        from pianoray.data.midi import file_sha256, write_midi

        path = self.root / relpath
        write_midi(notes, path)
        return relpath, file_sha256(path)

    # ------------------------------------------------------------------ finish
    def close(self) -> Path:
        """Flush shards, write manifests, labels, difficulty, STOP, then corpus.json (last). Returns ROOT."""
        import pandas as pd

        if self._closed:
            return self.root
        tiers_meta: dict[str, Any] = {}
        hashes: dict[str, str] = {}
        for tier in sorted(self._rows):
            rows = self._rows[tier]
            columns = list(COMMON_COLUMNS) + list(TIER_COLUMNS[tier])
            df = pd.DataFrame([{c: r.get(c) for c in columns} for r in rows], columns=columns)
            for col in ("n_frames", "shard", "offset"):
                df[col] = df[col].astype("int64")
            if tier in self._shards:
                self._shards[tier].flush()
                for fname, sha in self._shards[tier].hashes.items():
                    hashes[f"{tier.name}/{fname}"] = sha
            path = self.root / tier.name / MANIFEST_FILE
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
            df.to_parquet(tmp, index=False)
            os.replace(tmp, path)
            hashes[f"{tier.name}/{MANIFEST_FILE}"] = _file_sha(path)
            tiers_meta[tier.name] = {
                "segments": len(df),
                "frames": int(df["n_frames"].sum()),
                "shards": self._shards[tier].index if tier in self._shards else 0,
            }
        if self.labels19:
            hashes[LABELS19_FILE] = write_json_atomic(self.root / LABELS19_FILE, self.labels19)
        if self.difficulty:
            hashes[DIFFICULTY_FILE] = write_json_atomic(self.root / DIFFICULTY_FILE, self.difficulty)
        if self.stop:
            hashes[STOP_FILE] = write_json_atomic(self.root / STOP_FILE, self.stop)
        meta = {
            "format_version": FORMAT_VERSION,
            "name": self.name,
            "width": self.width,
            "frame_rate": self.frame_rate,
            "muq_layer": self.muq_layer,
            "window_frames": self.window_frames,
            "dtype": FRAME_DTYPE,
            "tiers": tiers_meta,
            "label_names": self.label_names,
            "created_by": self.created_by,
            "hashes": dict(sorted(hashes.items())),
        }
        write_json_atomic(self.root / CORPUS_FILE, meta)
        self._closed = True
        return self.root


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class FrameStore:
    """Read access to one tier's shards. Shards are memory-mapped on first use, never read whole.

    ``get(shard, offset, n)`` -> [n, width] float16, a read-only view into the mapped file.
    Pickles without its open maps, so DataLoader workers (fork or spawn) re-open them lazily.
    """

    def __init__(self, tier_dir: str | Path, width: int | None = None) -> None:
        self.tier_dir = Path(tier_dir)
        self.width = width
        self._maps: dict[int, np.ndarray] = {}

    def shard_path(self, shard: int) -> Path:
        return self.tier_dir / shard_name(shard)

    def open(self, shard: int) -> np.ndarray:
        arr = self._maps.get(shard)
        if arr is None:
            path = self.shard_path(shard)
            if not path.is_file():
                raise CacheError(f"{path}: frame shard not found")
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as e:
                raise CacheError(f"{path}: not a readable .npy shard ({e})") from None
            if arr.ndim != 2 or arr.dtype != np.float16 or (self.width is not None and arr.shape[1] != self.width):
                raise CacheError(
                    f"{path}: shard is {arr.dtype} {arr.shape}, expected float16 [rows, {self.width}]"
                )
            self._maps[shard] = arr
        return arr

    def get(self, shard: int, offset: int, n: int) -> np.ndarray:
        arr = self.open(int(shard))
        if offset < 0 or n < 0 or offset + n > arr.shape[0]:
            raise CacheError(
                f"{self.shard_path(int(shard))}: rows [{offset}, {offset + n}) outside the shard's {arr.shape[0]} rows"
            )
        return arr[offset : offset + n]

    def shards(self) -> list[Path]:
        return sorted(self.tier_dir.glob("frames-*.npy"))

    def __getstate__(self) -> dict[str, Any]:
        return {"tier_dir": self.tier_dir, "width": self.width, "_maps": {}}
