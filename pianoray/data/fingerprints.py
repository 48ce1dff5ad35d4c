"""Music fingerprints: which music a model was trained on, so that evaluation can tell seen music from unseen.

A model scored on music it trained on (another cut of the same take, a repeated section) looks better than it
is, the leak that music-safe folds close (``pianoray.data.music``). An exported model carries the fingerprints
of every segment it trained on, so ``pianoray evaluate`` can split any labelled set the same way:

- a rendition's fingerprint is its pitch runs (``music.pitch_runs``: every 16 consecutive pitches in (onset,
  pitch) order), each hashed to a uint64, so the artifact holds no notes;
- the training fingerprint set is the union over every training segment's performance MIDI and, where it has
  one, its score MIDI;
- a segment is *seen* when at least ``music.THRESHOLD`` (half) of its performance's distinct runs, or of its
  score's, are in the set: the rule by which two passages share music, applied against everything trained on.
  Otherwise it is *unseen*.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pianoray.data.music import RULE, THRESHOLD, pitch_runs
from pianoray.files import atomic_write

FINGERPRINT_RULE = f"{RULE}/blake2b-64"


def hashed(runs: set[bytes]) -> np.ndarray:
    """Distinct runs -> their sorted unique 64-bit hashes [R] uint64 (blake2b, so stable across processes)."""
    out = np.array([int.from_bytes(hashlib.blake2b(r, digest_size=8).digest(), "little") for r in runs],
                   dtype=np.uint64)
    return np.unique(out)


def midi_fingerprint(path: str | Path) -> np.ndarray:
    """[R] uint64: the hashed pitch runs of one MIDI file (``load_notes``'s errors name the file)."""
    from pianoray.data.midi import load_notes

    notes = load_notes(path)
    return hashed(pitch_runs(notes.onset, notes.pitch))


def seen_share(fingerprint: np.ndarray, known: np.ndarray) -> float:
    """Share of ``fingerprint``'s runs [R] found in the sorted ``known`` [K] (0 for an empty fingerprint)."""
    if fingerprint.size == 0 or known.size == 0:
        return 0.0
    return float(np.isin(fingerprint, known, assume_unique=True).mean())


@dataclass(frozen=True)
class Fingerprints:
    """The hashed runs [K] (sorted, unique) of everything a model trained on, and how many segments gave them."""

    runs: np.ndarray
    n_segments: int
    rule: str = FINGERPRINT_RULE

    @classmethod
    def of(cls, renditions: list[np.ndarray], n_segments: int) -> "Fingerprints":
        runs = np.unique(np.concatenate(renditions)) if renditions else np.zeros(0, dtype=np.uint64)
        return cls(runs.astype(np.uint64), n_segments)

    def share(self, fingerprint: np.ndarray) -> float:
        return seen_share(fingerprint, self.runs)

    def is_seen(self, *fingerprints: np.ndarray | None) -> bool:
        """Seen when any of the segment's renditions (performance, score) shares at least half its runs."""
        return any(f is not None and self.share(f) >= THRESHOLD for f in fingerprints)

    def save(self, path: Path) -> None:
        atomic_write(path, lambda tmp: np.savez(tmp, runs=self.runs, n_segments=np.int64(self.n_segments),
                                                rule=np.array(self.rule)))

    @classmethod
    def load(cls, path: Path) -> "Fingerprints":
        with np.load(path, allow_pickle=False) as f:
            return cls(f["runs"].astype(np.uint64), int(f["n_segments"]), str(f["rule"]))
