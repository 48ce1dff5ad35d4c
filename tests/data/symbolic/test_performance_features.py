"""Whole-performance summary features: known values on a hand-made performance, and within-passage z-scores."""

from __future__ import annotations

import math

import numpy as np
import pytest

from pianoray.data.midi import NoteTable
from pianoray.data.symbolic.performance_features import (
    FEATURE_NAMES,
    FEATURES_ID,
    N_FEATURES,
    event_starts,
    moving_average,
    performance_features,
    within_group_zscore,
)


def hand_made() -> NoteTable:
    """Four events 0.5 s apart; the second a chord rolled over 20 ms with its top note last and loudest; one
    pedal press from the chord to 1.2 s. Span 0-2 s."""
    return NoteTable.from_arrays(
        pitch=[60, 64, 72, 62, 65],
        onset=[0.0, 0.5, 0.52, 1.0, 1.5],
        offset=[0.4, 0.9, 0.9, 1.25, 2.0],
        velocity=[60, 70, 90, 50, 80],
        pedal_intervals=[[0.5, 1.2]],
    )


def test_known_values_on_a_hand_made_performance() -> None:
    f = dict(zip(FEATURE_NAMES, performance_features(hand_made())))
    expected = {
        "log_notes": math.log(5), "notes_per_s": 2.5, "events_per_s": 2.0,
        # timing: every IOI is 0.5 s: no rubato, no drift
        "ioi_log_mean": math.log(0.5), "ioi_log_std": 0.0, "ioi_cv": 0.0, "ioi_local_rubato": 0.0,
        "tempo_slope": 0.0, "pause_fraction": 0.0,
        # chords: 1 of 4 events, 20 ms spread, top voice 10 ms after the chord's mean onset
        "chord_fraction": 0.25, "chord_size_mean": 1.25, "spread_mean_ms": 20.0, "melody_lead_ms": 10.0,
        "rolled_fraction": 1.0,
        # velocity: top of the chord 20 above the rest
        "vel_mean": 70.0, "vel_p50": 70.0, "chord_top_minus_rest": 20.0, "chord_vel_std": 10.0,
        # articulation: duration / time to the next event, last event left out
        "art_log_mean": float(np.mean(np.log([0.8, 0.8, 0.38 / 0.48, 0.5]))), "staccato_fraction": 0.25,
        "legato_fraction": 0.0,
        # pedal: 3 of 5 onsets inside the press, 0.7 s of 2 s, pressed on the chord's attack
        "pedal_note_fraction": 0.6, "pedal_time_fraction": 0.35, "pedal_presses_per_s": 0.5,
        "pedal_presses_per_event": 0.25, "pedal_down_delay_ms": 0.0, "pedal_press_log_mean": math.log(0.7),
        # polyphony at event onsets: 1 key each; with the pedal the chord still sounds at 1.0 s
        "poly_mean": 1.0, "poly_pedal_mean": 1.5, "silence_fraction": 0.45 / 2, "key_density": 1.93 / 2,
        "pitch_mean": 64.6,
    }
    for name, value in expected.items():
        assert f[name] == pytest.approx(value, abs=1e-9), name


def test_names_match_values_and_every_value_is_finite() -> None:
    assert len(FEATURE_NAMES) == N_FEATURES == len(set(FEATURE_NAMES)) >= 70
    one = NoteTable.from_arrays([60], [1.0], [1.5], [64])  # a single note: every statistic degenerates
    for table in (hand_made(), one):
        x = performance_features(table)
        assert x.shape == (N_FEATURES,) and np.isfinite(x).all()
    assert FEATURES_ID.startswith("perf")
    with pytest.raises(ValueError, match="empty"):
        performance_features(NoteTable.from_arrays([], [], [], []))


def test_events_chain_rolled_chords_and_curves_keep_their_edges() -> None:
    onset = np.array([0.0, 0.02, 0.04, 0.5, 0.6])
    assert event_starts(onset).tolist() == [0, 3, 4]
    assert moving_average(np.array([1.0, 1.0, 1.0]), 8).tolist() == [1.0, 1.0, 1.0]


def test_within_group_zscore_on_a_tiny_table() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0], [10.0, 7.0], [4.0, 0.0], [8.0, 2.0]])
    groups = ["a", "a", "b", "c", "c"]
    z = within_group_zscore(x, groups)
    # a: mean 2, std 1 -> -1, +1; its second feature does not vary -> 0; b: one row -> 0; c: mean 6, std 2
    assert z.tolist() == [[-1.0, 0.0], [1.0, 0.0], [0.0, 0.0], [-1.0, -1.0], [1.0, 1.0]]
    # shifting or scaling one passage's performances changes nothing: only relative playing is kept
    x2 = x.copy()
    x2[:2] = 100 + 3 * x2[:2]
    assert np.allclose(within_group_zscore(x2, groups), z)
    with pytest.raises(ValueError, match="2 groups for 5 rows"):
        within_group_zscore(x, ["a", "b"])
