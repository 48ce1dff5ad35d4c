"""Music fingerprints: hashed pitch runs, and the seen/unseen rule an exported model applies to evaluation data."""

from __future__ import annotations

import numpy as np
import pytest

from pianoray.data.fingerprints import FINGERPRINT_RULE, Fingerprints, hashed, seen_share
from pianoray.data.music import RUN_LENGTH, pitch_runs


def runs_of(pitches: list[int]) -> np.ndarray:
    onset = np.arange(len(pitches), dtype=np.float64) * 0.25
    return hashed(pitch_runs(onset, np.asarray(pitches)))


def test_hashes_are_stable_known_values() -> None:
    # blake2b-64 of the run's bytes, little-endian: the same in every process and on every machine
    assert hashed({bytes([60, 62, 64])}).tolist() == [1639469499981401930]
    assert hashed({bytes(range(60, 76)), bytes(range(61, 77))}).tolist() == [1520440548547324871, 10294007396932065626]
    assert hashed(set()).dtype == np.uint64 and hashed(set()).size == 0


def test_seen_share_counts_the_runs_found() -> None:
    a = runs_of(list(range(40, 80)))  # 40 notes: 25 runs of 16
    assert a.size == 40 - RUN_LENGTH + 1
    assert seen_share(a, a) == 1.0
    tail = runs_of(list(range(40, 60)) + list(range(90, 110)))  # the first 20 notes shared: 5 of 25 runs
    assert seen_share(tail, a) == pytest.approx(5 / 25)
    assert seen_share(np.zeros(0, np.uint64), a) == 0.0 and seen_share(a, np.zeros(0, np.uint64)) == 0.0


def test_seen_when_half_of_a_renditions_runs_were_trained_on() -> None:
    trained = [runs_of(list(range(40, 80))), runs_of(list(range(20, 36)))]
    fp = Fingerprints.of(trained, n_segments=2)
    assert fp.rule == FINGERPRINT_RULE and fp.runs.size == 26 and np.all(np.diff(fp.runs.astype(np.float64)) > 0)
    half = runs_of(list(range(40, 60)) + list(range(100, 105)))  # 10 runs, 5 of them trained on: exactly half
    assert seen_share(half, fp.runs) == 0.5 and fp.is_seen(half)
    less = runs_of(list(range(40, 59)) + list(range(100, 106)))  # 4 of 10
    assert not fp.is_seen(less)
    # a segment is seen when its performance or its score is: a new performance of a trained score
    assert fp.is_seen(less, runs_of(list(range(40, 80)))) and not fp.is_seen(None, less)


def test_save_and_load_round_trip(tmp_path) -> None:
    fp = Fingerprints.of([runs_of(list(range(40, 80)))], n_segments=1)
    fp.save(tmp_path / "f.npz")
    back = Fingerprints.load(tmp_path / "f.npz")
    assert np.array_equal(back.runs, fp.runs) and back.n_segments == 1 and back.rule == FINGERPRINT_RULE
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # written atomically, nothing left
