"""Curves on a hand-made table: shape and per-frame values worked out by hand (25 fps = 40 ms frames)."""

from __future__ import annotations

import numpy as np

from pianoray.data.midi import NoteTable
from pianoray.data.symbolic.curves import CURVE_CHANNELS, CurveConfig, compute_curves


def test_curve_values() -> None:
    # A: p60 v100 0.0-0.2 s -> frames 0-4; B: p72 v50 0.1-0.3 s -> frames 2-7; pedal down 0.0-0.1 s.
    notes = NoteTable.from_arrays([60, 72], [0.0, 0.1], [0.2, 0.3], [100, 50], [[0.0, 0.1]])
    c = compute_curves(notes, CurveConfig(frame_rate=25.0))
    assert c.shape == (8, len(CURVE_CHANNELS)) and c.dtype == np.float32
    ch = {name: c[:, i] for i, name in enumerate(CURVE_CHANNELS)}
    np.testing.assert_allclose(ch["pitch_mean"][[0, 3, 6]], np.array([60, 66, 72]) / 127, rtol=1e-6)
    np.testing.assert_allclose(ch["pitch_extent"][[0, 3, 6]], [0, 12 / 87, 0], rtol=1e-6)
    np.testing.assert_allclose(ch["velocity_mean"][[0, 3, 6]], np.array([100, 75, 50]) / 127, rtol=1e-6)
    np.testing.assert_allclose(ch["onset_velocity"][[0, 1, 2, 3]], np.array([100, 0, 50, 0]) / 127, rtol=1e-6)
    np.testing.assert_allclose(ch["onset_density"][[0, 1, 2]], [1 / 8, 0, 1 / 8])
    np.testing.assert_allclose(ch["polyphony"], [0.1, 0.1, 0.2, 0.2, 0.2, 0.1, 0.1, 0.1], rtol=1e-6)
    assert ch["pedal"].tolist() == [1, 1, 0, 0, 0, 0, 0, 0]
    np.testing.assert_allclose(ch["ioi"][[0, 1, 2, 7]], [0, 0, 0.1, 0.1], rtol=1e-6)


def test_silence_is_zero_and_frame_rate_sets_length() -> None:
    notes = NoteTable.from_arrays([60, 62], [0.0, 1.0], [0.1, 1.1], [64, 64])
    c = compute_curves(notes, CurveConfig(frame_rate=10.0))
    assert c.shape == (11, len(CURVE_CHANNELS))
    assert np.all(c[2:10, :6] == 0)  # nothing sounds between the notes
