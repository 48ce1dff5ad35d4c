"""MIDI -> note table (and back), through symusic.

A :class:`NoteTable` is the one symbolic representation every later feature (REMI tokens, score
graphs, continuous curves, the per-note baseline features) is built from. Times are seconds.
All tracks are merged: piano MIDI often splits hands over tracks, and the encoders see one keyboard.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pianoray.errors import PianorayError
from pianoray.files import atomic_write


class MidiError(PianorayError, ValueError):
    """A MIDI file that cannot be used; the message names the file."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class NoteTable:
    """N notes sorted by (onset, pitch), plus P sustain-pedal intervals.

    pitch: [N] int16 (MIDI 0-127); onset, offset: [N] float64 seconds (offset > onset);
    velocity: [N] int16 (1-127); pedal: [N] bool, sustain pedal down at the note's onset;
    pedal_intervals: [P, 2] float64 seconds, (down, up) of each sustain-pedal press.
    """

    pitch: np.ndarray
    onset: np.ndarray
    offset: np.ndarray
    velocity: np.ndarray
    pedal: np.ndarray
    pedal_intervals: np.ndarray

    def __len__(self) -> int:
        return int(self.pitch.shape[0])

    @property
    def duration(self) -> np.ndarray:
        return self.offset - self.onset

    @classmethod
    def from_arrays(
        cls,
        pitch: np.ndarray,
        onset: np.ndarray,
        offset: np.ndarray,
        velocity: np.ndarray,
        pedal_intervals: np.ndarray | None = None,
    ) -> "NoteTable":
        """Build a sorted table and derive ``pedal`` from the intervals."""
        pitch = np.asarray(pitch, dtype=np.int16)
        onset = np.asarray(onset, dtype=np.float64)
        offset = np.asarray(offset, dtype=np.float64)
        velocity = np.asarray(velocity, dtype=np.int16)
        intervals = (
            np.zeros((0, 2), dtype=np.float64)
            if pedal_intervals is None
            else np.asarray(pedal_intervals, dtype=np.float64).reshape(-1, 2)
        )
        order = np.lexsort((pitch, onset))
        pitch, onset, offset, velocity = pitch[order], onset[order], offset[order], velocity[order]
        if len(intervals):
            intervals = intervals[np.argsort(intervals[:, 0])]
            # A note is pedalled when its onset lies inside some [down, up) interval.
            idx = np.searchsorted(intervals[:, 0], onset, side="right") - 1
            pedal = (idx >= 0) & (onset < intervals[np.clip(idx, 0, None), 1])
        else:
            pedal = np.zeros(len(pitch), dtype=bool)
        return cls(pitch, onset, offset, velocity, pedal, intervals)


def file_sha256(path: str | Path) -> str:
    """Content hash of a file (hex); caches key on it so renamed or touched files are not redone."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_notes(path: str | Path) -> NoteTable:
    """Read a performance or score MIDI file into a NoteTable.

    Raises MidiError (naming the file) for a missing, unreadable, corrupt or note-less file.
    """
    import symusic  # local: keeps `import pianoray.data` light

    path = Path(path)
    if not path.is_file():
        raise MidiError(path, "no such file")
    try:
        score = symusic.Score(str(path)).to("second")
    except Exception as e:  # symusic raises RuntimeError/ValueError variants for corrupt files
        raise MidiError(path, f"not a readable MIDI file ({e})") from None
    pitch, onset, dur, vel, pedals = score_notes(score)
    if not len(pitch):
        raise MidiError(path, "contains no notes")
    onset_a = onset.astype(np.float64)
    dur_a = np.maximum(dur.astype(np.float64), 1e-3)  # zero-length notes exist in the wild
    return NoteTable.from_arrays(pitch, onset_a, onset_a + dur_a, np.clip(vel, 1, 127), pedals)


def score_notes(
    score, *, include_drums: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """The notes and sustain-pedal presses of a symusic ``Score``, all tracks merged, in the score's own time
    unit (ticks or seconds) and symusic's dtypes, unsorted.

    Returns (pitch [N], onset [N], duration [N], velocity [N], pedals [P, 2] (down, up), or None when no track
    has a pedal press); N = 0 when no track has notes. Drum tracks are left out unless ``include_drums``.
    """
    pitch, onset, dur, vel, pedals = [], [], [], [], []
    for track in score.tracks:
        if track.is_drum and not include_drums:
            continue
        n = track.notes.numpy()
        pitch.append(n["pitch"])
        onset.append(n["time"])
        dur.append(n["duration"])
        vel.append(n["velocity"])
        p = track.pedals.numpy()
        if len(p["time"]):
            pedals.append(np.stack([p["time"], p["time"] + p["duration"]], axis=1))
    if not pitch:
        return np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0), None
    return (
        np.concatenate(pitch),
        np.concatenate(onset),
        np.concatenate(dur),
        np.concatenate(vel),
        np.concatenate(pedals) if pedals else None,
    )


def write_midi(notes: NoteTable, path: str | Path, tempo_qpm: float = 120.0) -> None:
    """Write a NoteTable as a one-track piano MIDI file (sustain pedal as CC64 pedals).

    Written to a temporary name and renamed, so a reader never sees half a file.
    """
    import symusic

    score = symusic.Score(480, ttype="second")
    score.tempos.append(symusic.Tempo(0.0, tempo_qpm, ttype="second"))
    track = symusic.Track(name="piano", program=0, is_drum=False, ttype="second")
    for p, on, off, v in zip(notes.pitch, notes.onset, notes.offset, notes.velocity):
        track.notes.append(symusic.Note(float(on), float(off - on), int(p), int(v), ttype="second"))
    # symusic writes controls, not its derived Pedal objects: a press is CC64 127 ... CC64 0.
    for down, up in notes.pedal_intervals:
        track.controls.append(symusic.ControlChange(float(down), 64, 127, ttype="second"))
        track.controls.append(symusic.ControlChange(float(up), 64, 0, ttype="second"))
    score.tracks.append(track)
    atomic_write(path, lambda tmp: score.to("tick").dump_midi(str(tmp)))
