"""PercePiano loader: one row per labelled performance segment, with its score rendering and 19 ratings.

Folder layout (the upstream release, or its subset in ``../shared/data/percepiano``)::

    all_2rounds/<piece>_<N>bars_<player>_<segment>.mid     performance segments (players 0..26, Score, Score2)
    score_midi/<piece>_<N>bars_Score[2]_<segment>.mid      deadpan score renderings of each passage
    label_2round_mean_reg_19_with0_rm_highstd0.json         key -> 19 ratings in [0, 1] + the pianist index

A *passage* is ``<piece>_<N>bars_<segment>``: every player of one passage plays the same music, so
folds group by it and pairwise accuracy compares within it. The piece name itself contains underscores
(``Beethoven_WoO80_thema``, ``Schubert_D935_no.3``), so names are parsed from the right.

Quirks handled, not fixed: one file name begins with a space while its label key does not (names are
stripped before matching); label keys without a file and files without a label are reported
(:func:`find_mismatches`) and either raise or are dropped (``on_mismatch``).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd

from pianoray.data.midi import file_sha256
from pianoray.errors import PianorayError

# The 19 perceptual dimensions in label order (names from the upstream README's table). Each is a
# bipolar scale: 0 = the first-named pole, 1 = the second (e.g. Timing_Stable_Unstable: 1 = unstable).
PERCEPIANO_DIMS: tuple[str, ...] = (
    "Timing_Stable_Unstable",
    "Articulation_Short_Long",
    "Articulation_Soft_cushioned_Hard_solid",
    "Pedal_Sparse/dry_Saturated/wet",
    "Pedal_Clean_Blurred",
    "Timbre_Even_Colorful",
    "Timbre_Shallow_Rich",
    "Timbre_Bright_Dark",
    "Timbre_Soft_Loud",
    "Dynamic_Sophisticated/mellow_Raw/crude",
    "Dynamic_Little_dynamic_range_Large_dynamic_range",
    "Music_Making_Fast_paced_Slow_paced",
    "Music_Making_Flat_Spacious",
    "Music_Making_Disproportioned_Balanced",
    "Music_Making_Pure_Dramatic/expressive",
    "Emotion_&_Mood_Optimistic/pleasant_Dark",
    "Emotion_&_Mood_Low_Energy_High_Energy",
    "Emotion_&_Mood_Honest_Imaginative",
    "Interpretation_Unsatisfactory/doubtful_Convincing",
)
N_DIMS = len(PERCEPIANO_DIMS)

LABEL_FILE = "label_2round_mean_reg_19_with0_rm_highstd0.json"
PERFORMANCE_DIR = "all_2rounds"
SCORE_DIR = "score_midi"
# Score renderings to look for, in order of preference: "Score" exists for every passage, "Score2"
# (a second deadpan rendering) for some.
SCORE_PLAYERS = ("Score", "Score2")

COLUMNS = [
    "segment_id", "piece", "n_bars", "performer", "segment", "passage", "perf_midi", "perf_midi_sha",
    "score_midi", "score_midi_sha", "labels19", "pianist",
]

# <piece>_<N>bars_<player>_<segment>; the greedy piece group keeps every underscore left of "_<N>bars_".
_NAME = re.compile(r"^(?P<piece>.+)_(?P<bars>\d+)bars_(?P<player>[^_]+)_(?P<segment>\d+)$")


class PercePianoError(PianorayError, ValueError):
    """A PercePiano folder that cannot be used as it is; the message names the file (and key)."""


@dataclass(frozen=True)
class SegmentName:
    """The parts of one segment name (a file stem or a label key).

    ``segment_label`` keeps the name's own spelling: segments are zero-padded in some pieces
    ("Schubert_D960_mv2_16bars_0_01") and not in others, and ids and score files use that spelling.
    """

    piece: str
    n_bars: int
    performer: str
    segment_label: str

    @property
    def segment(self) -> int:
        return int(self.segment_label)

    @property
    def passage(self) -> str:
        return passage_id(self.piece, self.n_bars, self.segment_label)

    @property
    def segment_id(self) -> str:
        return f"{self.piece}_{self.n_bars}bars_{self.performer}_{self.segment_label}"


def passage_id(piece: str, n_bars: int, segment: str | int) -> str:
    """The passage key shared by every player of the same music (``segment`` as spelled in the name)."""
    return f"{piece}_{n_bars}bars_{segment}"


def parse_segment_name(name: str) -> SegmentName:
    """``'Schubert_D935_no.3_4bars_2_1'`` (or a ``.mid`` file name, spaces stripped) -> its parts."""
    stem = name.strip()
    if stem.endswith(".mid"):
        stem = stem[: -len(".mid")]
    m = _NAME.match(stem)
    if m is None:
        raise PercePianoError(
            f"{name!r}: not a PercePiano segment name (expected <piece>_<N>bars_<player>_<segment>)"
        )
    return SegmentName(m["piece"], int(m["bars"]), m["player"], m["segment"])


@dataclass
class Mismatches:
    """Label keys without a performance file, and performance files without a label key."""

    labels_without_files: list[str] = field(default_factory=list)
    files_without_labels: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.labels_without_files or self.files_without_labels)

    def describe(self) -> list[str]:
        """One line per problem, for ``pianoray validate``."""
        return [f"label key without data: {k}" for k in self.labels_without_files] + [
            f"data without labels: {f}" for f in self.files_without_labels
        ]


def read_labels(path: str | Path) -> dict[str, tuple[np.ndarray, int]]:
    """The label JSON -> {segment_id: (labels19 float32 [19], pianist index)}.

    Raises PercePianoError naming the file and key for a missing/unreadable file, a value that is not
    20 numbers, a rating outside [0, 1] or a non-integer pianist index.
    """
    path = Path(path)
    if not path.is_file():
        raise PercePianoError(f"{path}: label file not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise PercePianoError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise PercePianoError(f"{path}: expected an object of key -> [19 ratings, pianist]")
    out: dict[str, tuple[np.ndarray, int]] = {}
    for key, value in raw.items():
        where = f"{path}: key {key!r}"
        if not isinstance(value, list) or len(value) != N_DIMS + 1:
            raise PercePianoError(f"{where}: expected a list of {N_DIMS + 1} numbers (19 ratings, pianist)")
        try:
            ratings = np.asarray(value[:N_DIMS], dtype=np.float32)
        except (TypeError, ValueError):
            raise PercePianoError(f"{where}: ratings are not numbers") from None
        if not np.all(np.isfinite(ratings)) or ratings.min() < 0.0 or ratings.max() > 1.0:
            raise PercePianoError(f"{where}: ratings must lie in [0, 1], got {ratings.min()}..{ratings.max()}")
        pianist = value[N_DIMS]
        if not isinstance(pianist, (int, float)) or not float(pianist).is_integer():
            raise PercePianoError(f"{where}: 20th number (pianist index) must be an integer, got {pianist!r}")
        try:  # a malformed key is an error here, not a silent non-match later
            parse_segment_name(key)
        except PercePianoError as e:
            raise PercePianoError(f"{path}: {e}") from None
        out[key.strip()] = (ratings, int(pianist))
    return out


def _performance_files(root: Path) -> dict[str, Path]:
    """{segment_id: path} for every .mid in all_2rounds (names stripped: one has a leading space)."""
    perf_dir = root / PERFORMANCE_DIR
    if not perf_dir.is_dir():
        raise PercePianoError(f"{perf_dir}: performance folder not found")
    files: dict[str, Path] = {}
    for entry in sorted(os.scandir(perf_dir), key=lambda e: e.name):
        if not entry.is_file() or not entry.name.endswith(".mid"):
            continue
        try:  # a stray file with another naming scheme is an error, not a silently skipped row
            parse_segment_name(entry.name)
        except PercePianoError as e:
            raise PercePianoError(f"{perf_dir}: {e}") from None
        sid = entry.name.strip()[: -len(".mid")]
        if sid in files:
            raise PercePianoError(f"{entry.path}: same segment as {files[sid]} once spaces are stripped")
        files[sid] = Path(entry.path).resolve()
    return files


def find_mismatches(root: str | Path) -> Mismatches:
    """Compare label keys with performance files without loading anything else."""
    root = Path(root)
    labels = read_labels(root / LABEL_FILE)
    files = _performance_files(root)
    return Mismatches(sorted(set(labels) - set(files)), sorted(str(files[k]) for k in set(files) - set(labels)))


# (path, size, mtime_ns) -> sha256: a process-wide memo so that repeated loads (validate, then run) hash
# each of the ~1000 files once. A changed file changes size or mtime, which misses the memo.
_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def cached_sha256(path: str | Path) -> str:
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns)
    sha = _SHA_MEMO.get(key)
    if sha is None:
        sha = _SHA_MEMO[key] = file_sha256(path)
    return sha


def find_score_midi(root: Path, name: SegmentName) -> Path | None:
    """The score rendering of ``name``'s passage in score_midi/ (``Score`` preferred over ``Score2``)."""
    for player in SCORE_PLAYERS:
        path = root / SCORE_DIR / f"{name.piece}_{name.n_bars}bars_{player}_{name.segment_label}.mid"
        if path.is_file():
            return path.resolve()
    return None


def load_percepiano(
    root: str | Path,
    *,
    on_mismatch: Literal["raise", "drop"] = "raise",
    hash_files: bool = True,
) -> pd.DataFrame:
    """Load a PercePiano folder: one row per segment that has both a label and a performance file.

    Columns (sorted by segment_id): segment_id, piece, n_bars, performer (player field: "11", "Score",
    "Score2"), segment, passage, perf_midi (absolute path str), perf_midi_sha, score_midi (path str or
    None), score_midi_sha (or None), labels19 (np.ndarray float32 [19]), pianist (int).

    on_mismatch: "raise" -> PercePianoError listing label keys without data and data without labels;
    "drop" -> those are left out. Either way ``df.attrs["mismatches"]`` holds the :class:`Mismatches`.
    hash_files=False leaves the sha columns None (for callers that only need labels and names).
    """
    root = Path(root)
    if not root.is_dir():
        raise PercePianoError(f"{root}: PercePiano folder not found")
    labels = read_labels(root / LABEL_FILE)
    files = _performance_files(root)
    mismatches = Mismatches(
        sorted(set(labels) - set(files)), sorted(str(files[k]) for k in set(files) - set(labels))
    )
    if mismatches and on_mismatch == "raise":
        lines = mismatches.describe()
        shown = "\n  ".join(lines[:20]) + (f"\n  ... and {len(lines) - 20} more" if len(lines) > 20 else "")
        raise PercePianoError(f"{root}: labels and files do not match (on_mismatch='drop' skips them):\n  {shown}")
    rows = []
    for sid in sorted(set(labels) & set(files)):
        name = parse_segment_name(sid)
        ratings, pianist = labels[sid]
        score = find_score_midi(root, name)
        rows.append(
            {
                "segment_id": sid,
                "piece": name.piece,
                "n_bars": name.n_bars,
                "performer": name.performer,
                "segment": name.segment,
                "passage": name.passage,
                "perf_midi": str(files[sid]),
                "perf_midi_sha": cached_sha256(files[sid]) if hash_files else None,
                "score_midi": str(score) if score is not None else None,
                "score_midi_sha": cached_sha256(score) if hash_files and score is not None else None,
                "labels19": ratings,
                "pianist": pianist,
            }
        )
    df = pd.DataFrame(rows, columns=COLUMNS)
    df.attrs["mismatches"] = mismatches
    return df


def labels_matrix(df: pd.DataFrame) -> np.ndarray:
    """The labels19 column stacked: [M, 19] float32 (row order of ``df``)."""
    if len(df) == 0:
        return np.zeros((0, N_DIMS), dtype=np.float32)
    return np.stack(df["labels19"].to_list()).astype(np.float32)

