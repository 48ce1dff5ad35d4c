"""Piano-competition metadata (T2): 30 s segments of recordings with the performer's placement and round.

Files (``../shared/data/competition``): ``metadata.jsonl``, one line per segment (segment_id, recording_id,
competition, edition, round, placement, performer, piece, segment_start, segment_end, ...), and
``*_recordings.jsonl``, one line per recording (no segments yet for most competitions).

T2 is ordinal: within one round of one competition a better placement should rank higher. Rounds are
never compared with each other (different repertoire and a different field of players).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pianoray.errors import PianorayError

SEGMENTS_FILE = "metadata.jsonl"
SEGMENT_FIELDS = ("segment_id", "recording_id", "competition", "edition", "round", "placement", "performer",
                  "piece", "segment_start", "segment_end")
RECORDING_FIELDS = ("recording_id", "competition", "edition", "round", "placement", "performer", "piece")
SEGMENT_COLUMNS = ["segment_id", "recording_id", "competition", "edition", "round", "round_id", "placement",
                   "performer", "piece", "start", "end"]


class CompetitionError(PianorayError, ValueError):
    """Unusable competition metadata; the message names the file (and line)."""


def read_jsonl(path: str | Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """Lines of a JSON-lines file as dicts; raises CompetitionError naming the file and line number."""
    path = Path(path)
    if not path.is_file():
        raise CompetitionError(f"{path}: file not found")
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise CompetitionError(f"{path}:{lineno}: malformed JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise CompetitionError(f"{path}:{lineno}: expected a JSON object")
            if missing := [k for k in required if row.get(k) is None]:
                raise CompetitionError(f"{path}:{lineno}: missing key(s) {missing}")
            rows.append(row)
    return rows


def round_id(competition: str, edition: int, round_name: str) -> str:
    """``('chopin', 2021, 'final') -> 'chopin2021_final'``: the ranking group of T2."""
    return f"{competition}{edition}_{round_name}"


def load_competition_segments(root: str | Path) -> pd.DataFrame:
    """``metadata.jsonl`` -> one row per segment, columns SEGMENT_COLUMNS, in file order.

    placement is an int (1 = winner); start/end are seconds within the recording. Raises
    CompetitionError for a missing file, a malformed line, a missing key, a duplicate segment id,
    a non-positive placement or end <= start (each naming the file and line).
    """
    path = Path(root) / SEGMENTS_FILE
    rows = read_jsonl(path, SEGMENT_FIELDS)
    seen: dict[str, int] = {}
    out = []
    for lineno, r in enumerate(rows, start=1):
        where = f"{path}: segment {r['segment_id']!r}"
        if r["segment_id"] in seen:
            raise CompetitionError(f"{where}: duplicate segment id")
        seen[r["segment_id"]] = lineno
        try:
            placement, edition = int(r["placement"]), int(r["edition"])
            start, end = float(r["segment_start"]), float(r["segment_end"])
        except (TypeError, ValueError):
            raise CompetitionError(f"{where}: placement/edition/segment_start/segment_end must be numbers") from None
        if placement < 1:
            raise CompetitionError(f"{where}: placement {placement} must be >= 1")
        if end <= start:
            raise CompetitionError(f"{where}: segment_end {end} <= segment_start {start}")
        out.append({
            "segment_id": str(r["segment_id"]),
            "recording_id": str(r["recording_id"]),
            "competition": str(r["competition"]),
            "edition": edition,
            "round": str(r["round"]),
            "round_id": round_id(str(r["competition"]), edition, str(r["round"])),
            "placement": placement,
            "performer": str(r["performer"]),
            "piece": str(r["piece"]),
            "start": start,
            "end": end,
        })
    return pd.DataFrame(out, columns=SEGMENT_COLUMNS)


def load_competition_recordings(root: str | Path) -> pd.DataFrame:
    """Every ``*recordings.jsonl`` in ``root`` -> one row per recording (duplicates across files dropped).

    Columns: recording_id, competition, edition, round, round_id, placement, performer, piece, source_file.
    """
    root = Path(root)
    files = sorted(root.glob("*recordings.jsonl"))
    if not files:
        raise CompetitionError(f"{root}: no *recordings.jsonl files")
    out: dict[str, dict[str, Any]] = {}
    for path in files:
        for r in read_jsonl(path, RECORDING_FIELDS):
            rid = str(r["recording_id"])
            if rid in out:
                continue  # recordings.jsonl repeats entries of the per-competition files
            out[rid] = {
                "recording_id": rid,
                "competition": str(r["competition"]),
                "edition": int(r["edition"]),
                "round": str(r["round"]),
                "round_id": round_id(str(r["competition"]), int(r["edition"]), str(r["round"])),
                "placement": int(r["placement"]),
                "performer": str(r["performer"]),
                "piece": str(r["piece"]),
                "source_file": path.name,
            }
    return pd.DataFrame(list(out.values()))


def placement_scores(placement: np.ndarray) -> np.ndarray:
    """Placements of one round [M] -> scores [M] in [0, 1]: 1 = best (lowest) placement, 0 = worst.

    Scored by dense rank over the distinct placements present, so tied placements (e.g. every
    non-laureate finalist placed 7) share a score and the gaps between prizes are evenly spaced.
    A round with a single distinct placement scores 0.5 (no ordering information).
    """
    placement = np.asarray(placement)
    levels = np.unique(placement)
    if len(levels) == 1:
        return np.full(len(placement), 0.5, dtype=np.float64)
    rank = np.searchsorted(levels, placement)  # 0 = best
    return 1.0 - rank / (len(levels) - 1)


def t2_manifest(
    segments: pd.DataFrame, embeddings: Mapping[str, tuple[Any, int, int]] | None = None
) -> pd.DataFrame:
    """T2 training rows: ``segments`` plus placement_score in [0, 1] within each round and the group key.

    embeddings: segment_id -> (shard, offset, n_frames) from the frame cache, or None (keep every
    segment, e.g. for symbolic-only use). Segments without embeddings are dropped before scoring, and
    counted in ``df.attrs["dropped_without_embeddings"]``. Added columns: placement_score, group
    (= round_id), and shard/offset/n_frames when embeddings are given.
    """
    df = segments.copy()
    dropped = 0
    if embeddings is not None:
        has = df["segment_id"].map(lambda s: s in embeddings)
        dropped = int((~has).sum())
        df = df[has].reset_index(drop=True)
        locs = [embeddings[s] for s in df["segment_id"]]
        df["shard"] = [loc[0] for loc in locs]
        df["offset"] = [int(loc[1]) for loc in locs]
        df["n_frames"] = [int(loc[2]) for loc in locs]
    df["placement_score"] = np.zeros(len(df), dtype=np.float64)
    for _, idx in df.groupby("round_id", sort=True).indices.items():
        df.loc[df.index[idx], "placement_score"] = placement_scores(df["placement"].to_numpy()[idx])
    df["group"] = df["round_id"]
    df.attrs["dropped_without_embeddings"] = dropped
    return df


def ordinal_pairs(df: pd.DataFrame) -> np.ndarray:
    """All (better, worse) pairs of positional row indices within one round: int64 [P, 2].

    Rows of the same round with different placements form a pair (better = lower placement); equal
    placements and different rounds never pair.
    """
    if len(df) == 0:
        return np.zeros((0, 2), dtype=np.int64)
    placement = df["placement"].to_numpy()
    pairs = []
    for _, idx in sorted(df.groupby("round_id").indices.items()):
        idx = np.asarray(idx, dtype=np.int64)
        p = placement[idx]
        a, b = np.meshgrid(np.arange(len(idx)), np.arange(len(idx)), indexing="ij")
        better = p[a] < p[b]
        pairs.append(np.stack([idx[a[better]], idx[b[better]]], axis=1))
    return np.concatenate(pairs).astype(np.int64) if pairs else np.zeros((0, 2), dtype=np.int64)
