"""The symbolic feature cache: MIDI files -> REMI ids, graphs, hetero graphs and curves, on disk.

Layout under ``out_dir``::

    cache.json                 format version + the SymbolicFeatureConfig the features were built with
    tokenizer.json             the REMI tokenizer (config + vocabulary), ``RemiTokenizer.load``-able
    entries/<sha[:2]>/<sha>/   one folder per MIDI content hash (``pianoray.data.midi.file_sha256``):
        remi.npy               [L] int64 token ids
        graph.npz              homogeneous graph arrays (``graphs.graph_arrays``)
        hetero_graph.npz       heterogeneous graph arrays (``graphs.hetero_graph_arrays``)
        curves.npy             [T, C] float32
        meta.json              n_notes, the source path it was first built from, each file's size

Keyed by content, so renamed or touched files are not redone and identical files are built once.
An entry folder is written under a temporary name and renamed into place, so a reader (or a build that
was killed) never sees half an entry: an entry exists completely or not at all. A build still checks each
entry it reuses against the sizes in its meta.json (:func:`entry_state`) and computes a damaged one again. Plain .npy/.npz keep
reads fast (no pickle, memory-light) and let a view read only the kind it needs.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shutil
import time
import uuid
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pianoray.data.midi import MidiError, NoteTable, file_sha256, load_notes
from pianoray.data.symbolic.curves import CurveConfig, compute_curves
from pianoray.data.symbolic.graphs import (
    GraphConfig,
    graph_arrays,
    graph_from_arrays,
    hetero_graph_arrays,
    hetero_graph_from_arrays,
)
from pianoray.data.symbolic.remi import RemiConfig, RemiTokenizer
from pianoray.errors import InputError, MissingInputError, UnknownNameError
from pianoray.feedback import Feedback, or_default
from pianoray.files import atomic_write, read_json

logger = logging.getLogger(__name__)

FEATURE_KINDS = ("remi", "graph", "hetero_graph", "curves")
CACHE_FORMAT_VERSION = 1
_FILE_OF_KIND = {"remi": "remi.npy", "graph": "graph.npz", "hetero_graph": "hetero_graph.npz", "curves": "curves.npy"}


class SymbolicFeatureConfig(BaseModel):
    """Everything that decides the cached features' content."""

    model_config = ConfigDict(extra="forbid")
    remi: RemiConfig = Field(default_factory=RemiConfig)
    graph: GraphConfig = Field(default_factory=GraphConfig)
    curves: CurveConfig = Field(default_factory=CurveConfig)


def compute_feature(notes: NoteTable, kind: str, config: SymbolicFeatureConfig, tokenizer: RemiTokenizer):
    """One kind's arrays: remi -> ids [L]; curves -> [T, C]; graph/hetero_graph -> dict of arrays."""
    if kind == "remi":
        return tokenizer.encode(notes)
    if kind == "graph":
        return graph_arrays(notes, config.graph)
    if kind == "hetero_graph":
        return hetero_graph_arrays(notes, config.graph)
    if kind == "curves":
        return compute_curves(notes, config.curves)
    raise UnknownNameError(f"unknown symbolic feature kind {kind!r}; known: {', '.join(FEATURE_KINDS)}")


@dataclass
class SymbolicCacheReport:
    """What one ``build_symbolic_cache`` call did.

    seconds_by_kind: summed worker seconds per stage ("load" = MIDI parsing, then FEATURE_KINDS) over
    the files computed in this call; notes_computed: notes in those files.
    """

    out_dir: Path
    n_files: int
    computed: int
    reused: int
    failed: list[tuple[str, str]]  # (path, reason naming the file)
    notes_computed: int
    seconds: float
    seconds_by_kind: dict[str, float]
    sha_by_path: dict[str, str] = field(default_factory=dict)
    damaged: int = 0  # entries found damaged (``entry_state``) and computed again

    def notes_per_second(self, kind: str) -> float:
        """Single-core throughput of one stage (notes / worker-second); 0 when nothing was computed."""
        s = self.seconds_by_kind.get(kind, 0.0)
        return self.notes_computed / s if s > 0 else 0.0


class SymbolicCache:
    """Read access to a cache written by ``build_symbolic_cache``."""

    def __init__(self, out_dir: str | Path) -> None:
        self.out_dir = Path(out_dir)
        meta_path = self.out_dir / "cache.json"
        if not meta_path.exists():
            raise MissingInputError(f"{meta_path}: no symbolic cache here (run build_symbolic_cache)")
        meta = read_json(meta_path, "symbolic cache record")
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: not a symbolic cache record (expected an object)")
        if meta.get("format_version") != CACHE_FORMAT_VERSION:
            raise InputError(f"{meta_path}: format_version {meta.get('format_version')} != {CACHE_FORMAT_VERSION}")
        self.config = SymbolicFeatureConfig.model_validate(meta["config"])
        self._tokenizer: RemiTokenizer | None = None

    @property
    def tokenizer(self) -> RemiTokenizer:
        if self._tokenizer is None:
            self._tokenizer = RemiTokenizer.load(self.out_dir / "tokenizer.json")
        return self._tokenizer

    def entry_dir(self, sha: str) -> Path:
        return entry_dir(self.out_dir, sha)

    def has(self, sha: str) -> bool:
        return self.entry_dir(sha).is_dir()

    def n_notes(self, sha: str) -> int:
        return int(json.loads((self.entry_dir(sha) / "meta.json").read_text())["n_notes"])

    def get_arrays(self, sha: str, kind: str):
        """The stored arrays: ndarray for remi/curves, dict of ndarrays for graph/hetero_graph."""
        if kind not in _FILE_OF_KIND:
            raise UnknownNameError(f"unknown symbolic feature kind {kind!r}; known: {', '.join(FEATURE_KINDS)}")
        path = self.entry_dir(sha) / _FILE_OF_KIND[kind]
        if not path.is_file():
            raise UnknownNameError(f"{path}: no cached {kind} for sha {sha}")
        if path.suffix == ".npy":
            return np.load(path)
        with np.load(path) as z:
            return {k: z[k] for k in z.files}

    def get(self, sha: str, kind: str):
        """remi -> ids [L] int64; curves -> [T, C] float32; graph -> PyG Data; hetero_graph -> HeteroData."""
        arrays = self.get_arrays(sha, kind)
        if kind == "graph":
            return graph_from_arrays(arrays)
        if kind == "hetero_graph":
            return hetero_graph_from_arrays(arrays)
        return arrays


def entry_dir(out_dir: Path, sha: str) -> Path:
    return Path(out_dir) / "entries" / sha[:2] / sha


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, text)


def entry_state(entry: Path) -> str:
    """"intact": the entry holds every file its ``meta.json`` lists, at the size it was written with;
    "absent"; or "damaged" (a truncated or missing file, a meta.json without sizes or not JSON)."""
    if not entry.is_dir():
        return "absent"
    try:
        files = json.loads((entry / "meta.json").read_text())["files"]
        if files and all((entry / name).stat().st_size == size for name, size in files.items()):
            return "intact"
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return "damaged"


def _prepare_out_dir(out_dir: Path, config: SymbolicFeatureConfig) -> None:
    """Create the cache (or check an existing one was built with the same config)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    meta_path = out_dir / "cache.json"
    wanted = {"format_version": CACHE_FORMAT_VERSION, "config": config.model_dump(mode="json")}
    if meta_path.is_file():
        have = read_json(meta_path, "symbolic cache record")
        if have != wanted:
            raise ValueError(
                f"{meta_path}: cache was built with another feature config or format "
                f"({have}); use a new out_dir or delete this one"
            )
    else:
        _write_text_atomic(meta_path, json.dumps(wanted, indent=1, sort_keys=True))
    RemiTokenizer(config.remi).save(out_dir / "tokenizer.json")


# Per worker process: built once by the pool initializer (miditok's REMI takes ~50 ms to build).
_WORKER: dict[str, object] = {}


def _init_worker(config_json: str) -> None:
    config = SymbolicFeatureConfig.model_validate_json(config_json)
    _WORKER["config"] = config
    _WORKER["tokenizer"] = RemiTokenizer(config.remi)


def _build_entry(path: str, sha: str, out_dir: Path) -> tuple[int, dict[str, float]]:
    """Compute all kinds for one file and move them into place; returns (n_notes, seconds by stage)."""
    config: SymbolicFeatureConfig = _WORKER["config"]  # type: ignore[assignment]
    tokenizer: RemiTokenizer = _WORKER["tokenizer"]  # type: ignore[assignment]
    times: dict[str, float] = {}
    t = time.perf_counter()
    notes = load_notes(path)
    times["load"] = time.perf_counter() - t
    final = entry_dir(out_dir, sha)
    tmp = final.parent / f".{sha}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir(parents=True)
    try:
        for kind in FEATURE_KINDS:
            t = time.perf_counter()
            value = compute_feature(notes, kind, config, tokenizer)
            times[kind] = time.perf_counter() - t
            target = tmp / _FILE_OF_KIND[kind]
            if isinstance(value, dict):
                np.savez(target, **value)
            else:
                np.save(target, value)
        sizes = {f.name: f.stat().st_size for f in sorted(tmp.iterdir())}
        (tmp / "meta.json").write_text(json.dumps({"n_notes": len(notes), "source": str(path), "files": sizes}))
        try:
            tmp.rename(final)
        except OSError:
            if not final.is_dir():  # not a lost race with an identical file: a real error
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return len(notes), times


def _build_chunk(items: list[tuple[str, str]], out_dir: str) -> list[tuple[str, int, dict[str, float], str | None]]:
    """Worker entry: (path, n_notes, seconds by stage, error or None) per (path, sha)."""
    results = []
    for path, sha in items:
        try:
            n, times = _build_entry(path, sha, Path(out_dir))
            results.append((path, n, times, None))
        except MidiError as e:
            results.append((path, 0, {}, str(e)))
        except Exception as e:  # a feature bug on one odd file must not lose the whole build
            results.append((path, 0, {}, f"{path}: feature extraction failed ({type(e).__name__}: {e})"))
    return results


def build_symbolic_cache(
    midi_paths: list[Path],
    out_dir: str | Path,
    *,
    workers: int | None = os.cpu_count(),
    feedback: Feedback | None = None,
    config: SymbolicFeatureConfig | None = None,
    chunksize: int = 8,
) -> SymbolicCacheReport:
    """Build (incrementally) the symbolic features of every MIDI file into ``out_dir``.

    Files whose content hash already has an entry are reused, not redone. Files are processed in chunks
    of ``chunksize`` across ``workers`` processes (1 = in this process). A file that cannot be read
    (MidiError) is skipped and listed in ``report.failed`` with the reason naming it. ``feedback`` shows
    the build's progress (None: logged). An existing entry that :func:`entry_state` finds damaged is computed again
    (counted in ``report.damaged``).
    """
    config = config or SymbolicFeatureConfig()
    out_dir = Path(out_dir)
    t_start = time.perf_counter()
    _prepare_out_dir(out_dir, config)

    failed: list[tuple[str, str]] = []
    sha_by_path: dict[str, str] = {}
    todo: dict[str, list[str]] = {}  # sha -> every path with that content (the first is built)
    reused = damaged = 0
    for p in midi_paths:
        p = str(p)
        try:
            sha = file_sha256(p)
        except OSError as e:
            failed.append((p, str(MidiError(p, f"cannot read ({e.strerror or e})"))))
            continue
        sha_by_path[p] = sha
        state = "queued" if sha in todo else entry_state(entry_dir(out_dir, sha))
        if state == "intact":
            reused += 1
            continue
        if state == "damaged":  # its key is its input's hash: trusted as it is, it would be served as it is
            shutil.rmtree(entry_dir(out_dir, sha), ignore_errors=True)
            damaged += 1
        todo.setdefault(sha, []).append(p)

    items = [(paths[0], sha) for sha, paths in todo.items()]
    chunks = [items[i : i + chunksize] for i in range(0, len(items), chunksize)]
    seconds_by_kind = {k: 0.0 for k in ("load", *FEATURE_KINDS)}
    notes = 0
    computed = 0

    def absorb(results) -> None:
        nonlocal notes, computed, reused
        for path, n, times, err in results:
            same_content = todo[sha_by_path[path]]
            if err is not None:
                for p in same_content:  # identical files fail the same way
                    failed.append((p, err if p == path else f"{p}: same content as {err}"))
                    sha_by_path.pop(p, None)
                continue
            computed += 1
            reused += len(same_content) - 1
            notes += n
            for k, sec in times.items():
                seconds_by_kind[k] += sec

    with or_default(feedback).progress("symbolic features", len(items)) as advance:
        n_workers = max(1, min(workers or 1, len(chunks)))
        if n_workers == 1:
            _init_worker(config.model_dump_json())
            for chunk in chunks:
                absorb(_build_chunk(chunk, str(out_dir)))
                advance(len(chunk))
        else:
            # forkserver: workers never inherit a parent's torch/OpenMP threads (fork-unsafe).
            with ProcessPoolExecutor(
                max_workers=n_workers,
                mp_context=multiprocessing.get_context("forkserver"),
                initializer=_init_worker,
                initargs=(config.model_dump_json(),),
            ) as pool:
                futures = {pool.submit(_build_chunk, chunk, str(out_dir)): len(chunk) for chunk in chunks}
                for fut in as_completed(futures):
                    absorb(fut.result())
                    advance(futures[fut])

    if damaged:
        logger.warning("symbolic cache %s: %d damaged entries (or entries from before sizes were recorded) "
                       "computed again", out_dir, damaged)
    return SymbolicCacheReport(
        damaged=damaged,
        out_dir=out_dir,
        n_files=len(midi_paths),
        computed=computed,
        reused=reused,
        failed=sorted(failed),
        notes_computed=notes,
        seconds=time.perf_counter() - t_start,
        seconds_by_kind=seconds_by_kind,
        sha_by_path=sha_by_path,
    )
