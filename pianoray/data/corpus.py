"""An open corpus: metadata, per-tier manifests, frame stores, labels, difficulty grades, STOP labels.

``open_corpus(DataConfig)`` opens either a pianoray cache (``source: cache``, the format of
``pianoray.data.cache``) or the real PercePiano folder (``source: percepiano``: T1 only, MIDI and labels,
no frames). Everything above the data layer sees the same :class:`Corpus` either way.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pianoray.data.cache import (
    COMMON_COLUMNS,
    CORPUS_FILE,
    DIFFICULTY_FILE,
    FORMAT_VERSION,
    LABELS19_FILE,
    MANIFEST_FILE,
    STOP_FILE,
    TIER_COLUMNS,
    CacheError,
    FrameStore,
)
from pianoray.data.tiers import Tier, parse_tier
from pianoray.errors import UnknownNameError

# Frames scanned per read in check(): bounds memory whatever the shard size.
CHECK_CHUNK_ROWS = 65_536


class TierInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")
    segments: int = Field(ge=0)
    frames: int = Field(ge=0)
    shards: int = Field(ge=0)


class CorpusMeta(BaseModel):
    """corpus.json. ``width`` is None for a corpus without frames (PercePiano MIDI only)."""

    model_config = ConfigDict(extra="forbid")
    format_version: int
    name: str
    width: int | None = Field(None, ge=1)
    frame_rate: int = 25
    muq_layer: int = 8
    window_frames: int = Field(1, ge=1)
    dtype: str = "float16"
    tiers: dict[str, TierInfo] = Field(default_factory=dict)
    label_names: list[str] | None = None
    created_by: dict[str, Any] = Field(default_factory=dict)
    hashes: dict[str, str] = Field(default_factory=dict)


class Corpus:
    """Read-only access to one corpus. Relative paths in manifests are relative to ``root``."""

    def __init__(
        self,
        root: Path,
        meta: CorpusMeta,
        manifests: dict[Tier, pd.DataFrame],
        labels19: dict[str, np.ndarray],
        difficulty: dict[str, float] | None = None,
        stop: dict[str, int] | None = None,
        source: str = "cache",
    ) -> None:
        self.root = Path(root)
        self.meta = meta
        self.source = source
        self._manifests = manifests
        self.labels19 = labels19
        self.difficulty = difficulty or {}
        self.stop = stop or {}
        self._stores: dict[Tier, FrameStore] = {}
        # A pianoray.data.symbolic.SymbolicCache when one is built for this corpus (open_corpus attaches
        # it); the symbolic views read features from it and compute them otherwise.
        self.symbolic_cache: Any = None
        self._index: dict[str, tuple[Tier, int]] | None = None

    # ------------------------------------------------------------------ lookups
    @property
    def tiers(self) -> list[Tier]:
        return sorted(self._manifests)

    def manifest(self, tier: str | Tier) -> pd.DataFrame:
        tier = parse_tier(tier)
        if tier not in self._manifests:
            raise UnknownNameError(f"{self.root}: tier {tier.name} is not in this corpus (has {[t.name for t in self.tiers]})")
        return self._manifests[tier]

    def has_frames(self) -> bool:
        return self.meta.width is not None and any(
            len(m) and int(m["n_frames"].max()) > 0 for m in self._manifests.values()
        )

    def frame_store(self, tier: str | Tier) -> FrameStore:
        tier = parse_tier(tier)
        if tier not in self._stores:
            self._stores[tier] = FrameStore(self.root / tier.name, self.meta.width)
        return self._stores[tier]

    def frames(self, tier: str | Tier, row: dict[str, Any]) -> np.ndarray:
        """A segment's frames: [n_frames, width] float16 view into the mapped shard."""
        if int(row["n_frames"]) <= 0:
            raise CacheError(f"{self.root}: segment {row['segment_id']!r} has no frames")
        return self.frame_store(tier).get(int(row["shard"]), int(row["offset"]), int(row["n_frames"]))

    def path(self, rel: str | None) -> Path | None:
        """A manifest path (relative to ROOT, or absolute) as an absolute path."""
        if rel is None or (isinstance(rel, float) and np.isnan(rel)):
            return None
        p = Path(rel)
        return p if p.is_absolute() else self.root / p

    def locate(self, segment_id: str) -> tuple[Tier, dict[str, Any]]:
        """(tier, manifest row) of a segment id; the first tier that holds it (T1 before T4)."""
        if self._index is None:
            self._index = {}
            for tier in reversed(self.tiers):  # lower tiers win
                for i, sid in enumerate(self._manifests[tier]["segment_id"]):
                    self._index[sid] = (tier, i)
        if segment_id not in self._index:
            raise UnknownNameError(f"{self.root}: no segment {segment_id!r} in any tier")
        tier, i = self._index[segment_id]
        return tier, self._manifests[tier].iloc[i].to_dict()

    def labels(self, kind: str, taxonomy: Any = None) -> tuple[list[str], dict[str, np.ndarray]]:
        """(dimension names, {segment_id: float32 [N]}) for the T1 segments that have labels."""
        from pianoray.data.labels import LabelError, label_set

        t1 = set(self.manifest(Tier.T1)["segment_id"]) if Tier.T1 in self._manifests else set()
        try:
            return label_set(kind, {k: v for k, v in self.labels19.items() if k in t1}, taxonomy)
        except LabelError as e:
            raise LabelError(f"{self.labels_file}: {e}") from None

    @property
    def labels_file(self) -> Path:
        """Where this corpus's ratings come from (a cache's labels file, or a PercePiano folder)."""
        return self.root / LABELS19_FILE if self.source == "cache" else self.root

    def hash(self) -> str:
        """Stable content hash: corpus.json's fields (which carry every file's hash) + manifest contents."""
        h = hashlib.sha256()
        meta = self.meta.model_dump()
        h.update(json.dumps(meta, sort_keys=True, default=str).encode())
        for tier in self.tiers:
            m = self._manifests[tier]
            h.update(tier.name.encode())
            h.update(pd.util.hash_pandas_object(m.drop(columns=[c for c in m.columns if m[c].map(_unhashable).any()]),
                                                index=False).values.tobytes())
            if "labels19" in m.columns:
                for v in m["labels19"]:
                    if v is not None:
                        h.update(np.asarray(v, dtype=np.float64).tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ validation
    def check(self) -> list[str]:
        """Every problem found, one line each, naming the file and key. Memory stays flat (chunked scans)."""
        from pianoray.data.midi import MidiError, load_notes

        problems: list[str] = []
        if not self.tiers:
            problems.append(f"{self.root}: no tiers")
        for tier in self.tiers:
            m = self._manifests[tier]
            mpath = self.root / tier.name / MANIFEST_FILE
            if len(m) == 0:
                problems.append(f"{mpath}: tier {tier.name} is empty")
                continue
            dup = m["segment_id"][m["segment_id"].duplicated()].tolist()
            problems += [f"{mpath}: duplicate segment_id {s!r}" for s in dup[:10]]
            if self.source == "cache" and self.meta.width is not None:
                problems += self._check_frames(tier, m)
        if Tier.T1 in self._manifests:
            t1 = set(self._manifests[Tier.T1]["segment_id"])
            lpath = self.labels_file
            problems += [f"{lpath}: label key without data: {k}" for k in sorted(set(self.labels19) - t1)]
            problems += [f"{lpath}: data without labels: {k}" for k in sorted(t1 - set(self.labels19))]
        mismatches = getattr(self, "mismatches", None)  # PercePiano: dropped when opened, reported here
        if mismatches:
            problems += [f"{self.root}: {line}" for line in mismatches.describe()]
        if Tier.T4 in self._manifests:
            known = {s for t in self.tiers for s in self._manifests[t]["segment_id"]}
            m4 = self._manifests[Tier.T4]
            bad = sorted(set(m4["clean_id"].dropna()) - known)
            problems += [f"{self.root / 'T4' / MANIFEST_FILE}: clean_id {k!r} is no segment of this corpus" for k in bad]
        stop_bad = sorted(set(self.stop) - {s for t in self.tiers for s in self._manifests[t]["segment_id"]})
        problems += [f"{self.root / STOP_FILE}: key {k!r} is no segment of this corpus" for k in stop_bad]
        # MIDI: each distinct file parsed once.
        seen: set[str] = set()
        for tier in self.tiers:
            m = self._manifests[tier]
            for col in ("perf_midi", "score_midi"):
                for sid, rel in zip(m["segment_id"], m[col]):
                    p = self.path(rel)
                    if p is None or str(p) in seen:
                        continue
                    seen.add(str(p))
                    try:
                        load_notes(p)
                    except MidiError as e:
                        problems.append(f"{self.root / tier.name / MANIFEST_FILE}: {sid}: {col}: {e}")
        return problems

    def _check_frames(self, tier: Tier, m: pd.DataFrame) -> list[str]:
        problems: list[str] = []
        store = self.frame_store(tier)
        width = self.meta.width
        has = m[m["n_frames"] > 0]
        for shard in sorted(set(has["shard"].astype(int))):
            path = store.shard_path(shard)
            try:
                arr = np.load(path, mmap_mode="r")
            except FileNotFoundError:
                problems.append(f"{path}: frame shard not found")
                continue
            except (OSError, ValueError) as e:
                problems.append(f"{path}: not a readable .npy shard ({e})")
                continue
            if arr.ndim != 2 or arr.shape[1] != width:
                problems.append(f"{path}: shape {arr.shape}, expected [rows, {width}] (corpus.json width)")
                continue
            if arr.dtype != np.float16:
                problems.append(f"{path}: dtype {arr.dtype}, expected float16")
            rows = has[has["shard"] == shard]
            end = (rows["offset"] + rows["n_frames"]).max()
            if end > arr.shape[0]:
                problems.append(f"{path}: manifest rows reach {end} but the shard has {arr.shape[0]}")
            # Chunked scan: one chunk in memory at a time, whatever the shard size.
            bad_rows: list[int] = []
            for start in range(0, arr.shape[0], CHECK_CHUNK_ROWS):
                chunk = np.asarray(arr[start : start + CHECK_CHUNK_ROWS])
                ok = np.isfinite(chunk).all(axis=1)
                if not ok.all():
                    bad_rows += (np.flatnonzero(~ok) + start).tolist()
            if bad_rows:
                bad = np.asarray(bad_rows)
                offs, ns = rows["offset"].to_numpy(), rows["n_frames"].to_numpy()
                hit = [sid for sid, o, n in zip(rows["segment_id"], offs, ns) if ((bad >= o) & (bad < o + n)).any()]
                problems.append(f"{path}: NaN/Inf in {len(bad)} frame rows (segments {', '.join(hit[:5])})")
            del arr
        return problems


def _unhashable(v: Any) -> bool:
    return isinstance(v, (list, np.ndarray, dict))


# ---------------------------------------------------------------------------------- opening


PERCEPIANO_SYMBOLIC_CACHE = Path("~/.cache/pianoray/symbolic")


def symbolic_cache_dir(data_cfg: Any, local_root: Path | None = None) -> Path:
    """The symbolic feature cache folder of a DataConfig: ``data.symbolic_cache``, else the default.

    Defaults: ``<root>/symbolic`` for a pianoray cache (it travels with the corpus; for a remote root,
    pass ``local_root``, the opened corpus's local mirror, i.e. ``corpus.root``); ``~/.cache/pianoray/
    symbolic`` for the PercePiano folder, which is a dataset we do not write into.
    """
    chosen = getattr(data_cfg, "symbolic_cache", None)
    if chosen is not None:
        return Path(chosen).expanduser()
    if data_cfg.source == "percepiano":
        return PERCEPIANO_SYMBOLIC_CACHE.expanduser()
    return Path(local_root if local_root is not None else data_cfg.root) / "symbolic"


def open_corpus(data_cfg: Any) -> Corpus:
    """Open the corpus a :class:`pianoray.config.DataConfig` names. Errors name the file at fault.

    When its symbolic feature cache (``symbolic_cache_dir``) has been built, it is attached as
    ``corpus.symbolic_cache``.
    """
    from pianoray.data.remote import is_remote_uri, materialize

    if is_remote_uri(data_cfg.root):
        # s3://bucket/prefix: mirrored into data_cache (changed files only), then opened and mapped locally.
        if data_cfg.source != "cache":
            raise CacheError(f"{data_cfg.root}: a remote data root must hold a pianoray cache (source: cache)")
        root = materialize(data_cfg.root, data_cfg.data_cache)
    else:
        root = Path(data_cfg.root)
    corpus = open_percepiano(root) if data_cfg.source == "percepiano" else open_cache(root)
    return attach_symbolic_cache(corpus, data_cfg)


def attach_symbolic_cache(corpus: Corpus, data_cfg: Any) -> Corpus:
    """``corpus`` with its symbolic feature cache (``symbolic_cache_dir``) attached when one has been built."""
    folder = symbolic_cache_dir(data_cfg, corpus.root)
    if (folder / "cache.json").is_file():
        # Lazy: a corpus without a symbolic cache (frame-only use) never loads the symbolic package.
        from pianoray.data.symbolic.cache import SymbolicCache

        corpus.symbolic_cache = SymbolicCache(folder)
    return corpus


def _read_json(path: Path, what: str) -> Any:
    if not path.is_file():
        raise CacheError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CacheError(f"{path}: not valid JSON ({e})") from None


def open_cache(root: str | Path) -> Corpus:
    root = Path(root)
    if not root.is_dir():
        raise CacheError(f"{root}: corpus folder not found")
    meta_path = root / CORPUS_FILE
    raw = _read_json(meta_path, "corpus.json (not a pianoray cache, or an unfinished one)")
    if not isinstance(raw, dict):
        raise CacheError(f"{meta_path}: expected a JSON object")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CacheError(
            f"{meta_path}: format_version {raw.get('format_version')!r} is not supported (this pianoray reads {FORMAT_VERSION})"
        )
    try:
        meta = CorpusMeta.model_validate(raw)
    except ValidationError as err:
        lines = [f"{meta_path}: {'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors()]
        raise CacheError("\n".join(lines)) from None
    manifests: dict[Tier, pd.DataFrame] = {}
    for name in meta.tiers:
        tier = parse_tier(name)
        path = root / tier.name / MANIFEST_FILE
        if not path.is_file():
            raise CacheError(f"{path}: manifest not found (corpus.json lists tier {tier.name})")
        try:
            df = pd.read_parquet(path)
        except Exception as e:  # pyarrow raises several types for a corrupt file
            raise CacheError(f"{path}: not a readable parquet manifest ({e})") from None
        missing = [c for c in COMMON_COLUMNS + TIER_COLUMNS[tier] if c not in df.columns]
        if missing:
            raise CacheError(f"{path}: missing columns {missing}")
        manifests[tier] = df
    labels19: dict[str, np.ndarray] = {}
    if (root / LABELS19_FILE).exists():
        raw_labels = _read_json(root / LABELS19_FILE, "labels")
        for sid, values in raw_labels.items():
            arr = np.asarray(values, dtype=np.float32)
            if arr.shape != (19,):
                raise CacheError(f"{root / LABELS19_FILE}: key {sid!r}: expected 19 values, got {arr.shape}")
            labels19[sid] = arr
    difficulty = _read_json(root / DIFFICULTY_FILE, "difficulty") if (root / DIFFICULTY_FILE).exists() else {}
    stop = _read_json(root / STOP_FILE, "STOP labels") if (root / STOP_FILE).exists() else {}
    return Corpus(root, meta, manifests, labels19, difficulty, {k: int(v) for k, v in stop.items()}, source="cache")


def open_percepiano(root: str | Path) -> Corpus:
    """The real PercePiano folder as a T1-only corpus: MIDI and labels, no frames."""
    from pianoray.data.percepiano import PERCEPIANO_DIMS, load_percepiano

    root = Path(root)
    df = load_percepiano(root, on_mismatch="drop")
    manifest = pd.DataFrame(
        {
            "segment_id": df["segment_id"],
            "piece": df["piece"],
            "passage": df["passage"],
            "performer": df["performer"].astype(str),
            "n_frames": np.zeros(len(df), dtype=np.int64),
            "shard": np.full(len(df), -1, dtype=np.int64),
            "offset": np.full(len(df), -1, dtype=np.int64),
            "perf_midi": df["perf_midi"],
            "perf_midi_sha": df["perf_midi_sha"],
            "score_midi": df["score_midi"],
            "score_midi_sha": df["score_midi_sha"],
            "labels19": [list(map(float, v)) for v in df["labels19"]],
        }
    )
    labels19 = {sid: np.asarray(v, dtype=np.float32) for sid, v in zip(df["segment_id"], df["labels19"])}
    meta = CorpusMeta(
        format_version=FORMAT_VERSION,
        name=f"percepiano:{root.name}",
        width=None,
        tiers={"T1": TierInfo(segments=len(manifest), frames=0, shards=0)},
        label_names=list(PERCEPIANO_DIMS),
        created_by={"tool": "pianoray.percepiano"},
    )
    corpus = Corpus(root, meta, {Tier.T1: manifest}, labels19, source="percepiano")
    mismatches = df.attrs.get("mismatches")
    corpus.mismatches = mismatches  # type: ignore[attr-defined]  # reported by check()
    return corpus


def open_midi_files(paths: list[Path]) -> Corpus:
    """Loose MIDI files (``pianoray predict``'s inputs) as a T1-only corpus without labels or frames: one
    segment per file, its id the file's stem (made unique with ``#2``, ``#3``), no passage. Each file is read
    once here, so a corrupt or note-less one is one error naming it before anything is scored."""
    from pianoray.data.midi import file_sha256, load_notes

    ids: list[str] = []
    for p in paths:
        load_notes(p)  # MidiError names the file
        stem, n = Path(p).stem, 1
        while (f"{stem}#{n}" if n > 1 else stem) in ids:
            n += 1
        ids.append(f"{stem}#{n}" if n > 1 else stem)
    k = len(paths)
    manifest = pd.DataFrame({
        "segment_id": ids, "piece": [None] * k, "passage": [None] * k, "performer": [None] * k,
        "n_frames": np.zeros(k, dtype=np.int64), "shard": np.full(k, -1, dtype=np.int64),
        "offset": np.full(k, -1, dtype=np.int64), "perf_midi": [str(Path(p).resolve()) for p in paths],
        "perf_midi_sha": [file_sha256(p) for p in paths], "score_midi": [None] * k, "score_midi_sha": [None] * k})
    meta = CorpusMeta(format_version=FORMAT_VERSION, name="midi-files", width=None,
                      tiers={"T1": TierInfo(segments=k, frames=0, shards=0)}, created_by={"tool": "pianoray.predict"})
    root = Path(paths[0]).resolve().parent if paths else Path.cwd()
    return Corpus(root, meta, {Tier.T1: manifest}, {}, source="midi")

