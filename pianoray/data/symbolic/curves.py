"""Continuous MIDI curves for the S3 encoder: float32 [T, C] at a fixed frame rate.

25 frames/s by default, the MuQ audio frame rate, so frame t of the curves and of the audio cover the
same 40 ms when MIDI and audio start together. Frame t covers [t / fps, (t + 1) / fps); a note sounds in
every frame its [onset, offset) span touches. T = ceil(last offset * fps); time 0 is the file's time 0.

Channels (CURVE_CHANNELS order; scaled to roughly [0, 1], 0 where nothing sounds):
  pitch_mean      mean MIDI pitch of the sounding notes / 127
  pitch_extent    (highest - lowest sounding pitch) / 87 (the keyboard's span)
  velocity_mean   mean velocity of the sounding notes / 127
  onset_velocity  loudest velocity among notes starting in the frame / 127
  onset_density   notes starting in the frame / 8 (8 onsets in 40 ms is a dense chord)
  polyphony       number of sounding notes / 10
  pedal           1 when the sustain pedal is down at the frame's centre
  ioi             seconds between the latest two onset groups at or before the frame (clipped at 2 s)

Built from a piano roll with difference arrays (one +1 at the start frame, -1 at the end frame, then a
cumulative sum), so the cost is O(N + T * 128) with no per-note Python loop.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pianoray.data.midi import NoteTable

CURVE_CHANNELS = (
    "pitch_mean",
    "pitch_extent",
    "velocity_mean",
    "onset_velocity",
    "onset_density",
    "polyphony",
    "pedal",
    "ioi",
)


class CurveConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    frame_rate: float = Field(25.0, gt=0, description="frames per second (25 = MuQ frames)")
    onset_group_s: float = Field(0.03, ge=0, description="onsets closer than this are one group for IOI")
    max_ioi_s: float = Field(2.0, gt=0)


def compute_curves(notes: NoteTable, config: CurveConfig | None = None) -> np.ndarray:
    """NoteTable -> curves [T, len(CURVE_CHANNELS)] float32 (T >= 1)."""
    c = config or CurveConfig()
    fps = c.frame_rate
    n_ch = len(CURVE_CHANNELS)
    if len(notes) == 0:
        return np.zeros((1, n_ch), dtype=np.float32)
    start = np.floor(notes.onset * fps).astype(np.int64)
    end = np.maximum(np.ceil(notes.offset * fps).astype(np.int64), start + 1)
    t = int(end.max())
    pitch = notes.pitch.astype(np.int64)
    vel = notes.velocity.astype(np.float64)

    # Piano roll of sounding-note counts [T, 128].
    # bincount over flat (frame, pitch) cells is the fast form of np.add.at.
    size = (t + 1) * 128
    diff = np.bincount(start * 128 + pitch, minlength=size) - np.bincount(end * 128 + pitch, minlength=size)
    roll = np.cumsum(diff.reshape(t + 1, 128)[:t], axis=0, dtype=np.int32)
    sounding = roll > 0
    count = roll.sum(axis=1).astype(np.float64)
    keys = np.arange(128, dtype=np.float64)
    any_sound = count > 0
    safe = np.where(any_sound, count, 1.0)
    pitch_mean = (roll @ keys) / safe
    highest = 127 - np.argmax(sounding[:, ::-1], axis=1)
    lowest = np.argmax(sounding, axis=1)
    extent = np.where(any_sound, highest - lowest, 0)

    vel_diff = np.bincount(start, weights=vel, minlength=t + 1) - np.bincount(end, weights=vel, minlength=t + 1)
    vel_mean = np.cumsum(vel_diff[:t]) / safe

    onset_count = np.bincount(start, minlength=t)[:t].astype(np.float64)
    onset_vel = np.zeros(t)
    np.maximum.at(onset_vel, start, vel)

    centres = (np.arange(t) + 0.5) / fps
    pedal = np.zeros(t)
    iv = notes.pedal_intervals
    if len(iv):
        k = np.searchsorted(iv[:, 0], centres, side="right") - 1
        pedal = ((k >= 0) & (centres < iv[np.clip(k, 0, None), 1])).astype(np.float64)

    # Onset groups: the first onset of each run of onsets closer than onset_group_s.
    onset = notes.onset
    group_start = onset[np.concatenate([[True], np.diff(onset) > c.onset_group_s])]
    ioi_of_group = np.concatenate([[0.0], np.diff(group_start)])
    g = np.searchsorted(group_start, centres, side="right") - 1  # latest group at or before the frame
    ioi = np.where(g >= 0, ioi_of_group[np.clip(g, 0, None)], 0.0)

    out = np.stack(
        [
            np.where(any_sound, pitch_mean, 0.0) / 127.0,
            extent / 87.0,
            np.where(any_sound, vel_mean, 0.0) / 127.0,
            onset_vel / 127.0,
            onset_count / 8.0,
            count / 10.0,
            pedal,
            np.minimum(ioi, c.max_ioi_s),
        ],
        axis=1,
    )
    return out.astype(np.float32)
