"""Hand-crafted summary features of a whole performance: one fixed-length vector per MIDI file.

These feed the non-neural reference (gradient boosting, ``pianoray.models.boosting``): the line a learned
symbolic encoder has to beat. They summarise the whole segment (no crop, no window), in seven families:
velocity, timing (IOI and rubato), tempo drift, chord spread (asynchrony), articulation, pedal and
polyphony, plus a few pitch/size descriptors of what is played. :data:`FEATURE_NAMES` lists them in column
order; :func:`performance_features` computes them, vectorised over the notes (no Python loop over notes).

Notes whose onsets lie within :data:`CHORD_TOLERANCE` of the previous note's onset form one *event* (a
chord, possibly rolled); IOIs are between event onsets, so a chord's spread is not mistaken for rhythm.
Without a score, IOI variation mixes notated rhythm with rubato: :func:`within_group_zscore` over the
performances of one passage (same music) removes what is played and keeps how it is played.

Every feature is finite for any non-empty NoteTable (a statistic with too few values is 0).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

CHORD_TOLERANCE = 0.03  # s: onsets closer than this to the previous note's belong to the same event
SMOOTH_EVENTS = 8  # events in the moving average that turns per-event values into tempo/dynamics curves
MIN_IOI = 0.02  # s: floor of the time to the next event (articulation ratios)

FEATURE_NAMES: tuple[str, ...] = (
    # size and pace
    "log_notes", "log_span_s", "notes_per_s", "events_per_s",
    # timing: IOI between events (log seconds) and rubato
    "ioi_log_mean", "ioi_log_std", "ioi_log_p10", "ioi_log_p90", "ioi_cv", "ioi_local_rubato",
    "ioi_residual_std", "pause_fraction", "ioi_log_max_over_median",
    # tempo drift: the smoothed log-IOI curve over normalised time
    "tempo_slope", "tempo_last_minus_first", "tempo_final_ritardando", "tempo_curve_std", "tempo_curve_range",
    # chord spread (asynchrony within events)
    "chord_fraction", "chord_size_mean", "spread_mean_ms", "spread_std_ms", "spread_p90_ms", "melody_lead_ms",
    "rolled_fraction",
    # velocity
    "vel_mean", "vel_std", "vel_p05", "vel_p50", "vel_p95", "vel_range", "vel_local_diff", "vel_slope",
    "vel_curve_std", "vel_curve_range", "vel_last_minus_first", "vel_peak_position", "vel_residual_std",
    "vel_pitch_corr", "chord_top_minus_rest", "chord_vel_std", "vel_ioi_corr", "vel_tempo_corr",
    # articulation: duration against the time to the next event
    "dur_log_mean", "dur_log_std", "art_log_mean", "art_log_std", "art_log_p10", "art_log_p90",
    "staccato_fraction", "legato_fraction", "legato_overlap_ms", "melody_art_log_mean", "bass_art_log_mean",
    # pedal
    "pedal_note_fraction", "pedal_time_fraction", "pedal_presses_per_s", "pedal_press_log_mean",
    "pedal_presses_per_event", "pedal_sustain_log_mean", "pedal_down_delay_ms", "pedal_gap_log_mean",
    # polyphony (keys held; with the pedal's sustain)
    "poly_mean", "poly_p95", "poly_pedal_mean", "poly_pedal_p95", "silence_fraction", "key_density",
    # what is played (register); within-passage z-scoring cancels these, the raw values help the mean
    "pitch_mean", "pitch_std", "pitch_range", "pitch_p05", "pitch_p95",
)
N_FEATURES = len(FEATURE_NAMES)
# Names the feature definition: caches of computed features are keyed by it (bump the version on any change
# to a feature's computation; a change of the list changes the hash by itself).
FEATURES_VERSION = 1
FEATURES_ID = f"perf{FEATURES_VERSION}-" + hashlib.sha256("|".join(FEATURE_NAMES).encode()).hexdigest()[:10]


# ------------------------------------------------------------------------------------ small statistics


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else 0.0


def _std(x: np.ndarray) -> float:
    return float(x.std()) if x.size > 1 else 0.0


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else 0.0


def slope(t: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y [K] on t [K]; 0 when t does not vary (or K < 2)."""
    if t.size < 2:
        return 0.0
    tc = t - t.mean()
    var = float((tc * tc).sum())
    return float((tc * (y - y.mean())).sum() / var) if var > 1e-12 else 0.0


def corr(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of a [K] and b [K]; 0 when either is constant (or K < 3)."""
    if a.size < 3:
        return 0.0
    ac, bc = a - a.mean(), b - b.mean()
    den = float(np.sqrt((ac * ac).sum() * (bc * bc).sum()))
    return float((ac * bc).sum() / den) if den > 1e-12 else 0.0


def moving_average(x: np.ndarray, width: int = SMOOTH_EVENTS) -> np.ndarray:
    """x [K] -> [K]: centred moving mean over ``width`` values, averaging only the values present at the
    edges (so the ends of the curve are not pulled towards 0)."""
    if x.size == 0:
        return x.astype(np.float64)
    kernel = np.ones(min(width, x.size))
    return np.convolve(x, kernel, mode="same") / np.convolve(np.ones_like(x, dtype=np.float64), kernel, mode="same")


def _quarter_diff(y: np.ndarray) -> float:
    """Mean of the last quarter of y [K] minus the mean of its first quarter (0 when K < 4)."""
    q = y.size // 4
    return float(y[-q:].mean() - y[:q].mean()) if q else 0.0


# ------------------------------------------------------------------------------------ events (chords)


def event_starts(onset: np.ndarray, tol: float = CHORD_TOLERANCE) -> np.ndarray:
    """onset [N] sorted -> [G] index of each event's first note. A note starts a new event when its onset is
    at least ``tol`` after the previous note's (chained: a rolled chord stays one event)."""
    if onset.size == 0:
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, np.diff(onset) >= tol])


def event_extremes(pitch: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(top [G], bottom [G]): the index of each event's highest and lowest note (notes sorted by onset,
    events contiguous from ``starts``)."""
    n = pitch.size
    sizes = np.diff(np.r_[starts, n])
    event = np.repeat(np.arange(starts.size), sizes)
    order = np.lexsort((pitch, event))  # by event, then pitch
    ends = np.cumsum(sizes)
    return order[ends - 1], order[ends - sizes]


def sounding_at(times: np.ndarray, onset: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """times [K] -> [K] number of notes with onset <= t < offset (onset sorted)."""
    started = np.searchsorted(onset, times, side="right")
    ended = np.searchsorted(np.sort(offset), times, side="right")
    return started - ended


def pedal_release(times: np.ndarray, intervals: np.ndarray) -> np.ndarray:
    """times [K] -> [K]: the release time of the pedal press holding each time, or the time itself when the
    pedal is up (intervals [P, 2] (down, up), sorted by down)."""
    if intervals.shape[0] == 0:
        return times.copy()
    idx = np.searchsorted(intervals[:, 0], times, side="right") - 1
    up = intervals[np.clip(idx, 0, None), 1]
    inside = (idx >= 0) & (times < up)
    return np.where(inside, up, times)


# ------------------------------------------------------------------------------------ families


def _timing(ev_onset: np.ndarray, span: float) -> tuple[list[float], np.ndarray, np.ndarray]:
    """Timing and tempo-drift features from event onsets [G]. Also returns (log IOI [G-1], its smoothed
    curve [G-1]) for the velocity-tempo coupling."""
    ioi = np.diff(ev_onset)
    logioi = np.log(np.maximum(ioi, 1e-3))
    curve = moving_average(logioi)
    t = (ev_onset[1:] - ev_onset[0]) / max(span, 1e-6)  # normalised time of each IOI's end
    med = float(np.median(ioi)) if ioi.size else 0.0
    tail = max(1, logioi.size // 10)
    timing = [
        _mean(logioi), _std(logioi), _pct(logioi, 10), _pct(logioi, 90),
        _std(ioi) / max(_mean(ioi), 1e-6) if ioi.size > 1 else 0.0,
        _mean(np.abs(np.diff(logioi))),
        _std(logioi - curve),
        float((ioi > 2 * med).mean()) if ioi.size else 0.0,
        float(np.log(ioi.max() / max(med, 1e-6))) if ioi.size else 0.0,
    ]
    drift = [
        slope(t, curve),
        _quarter_diff(curve),
        float(logioi[-tail:].mean() - np.median(logioi)) if logioi.size >= 4 else 0.0,
        _std(curve),
        _pct(curve, 90) - _pct(curve, 10),
    ]
    return timing + drift, logioi, curve


def _chords(notes: Any, starts: np.ndarray, top: np.ndarray) -> list[float]:
    """Chord-spread features: events of >= 2 notes, their onset spread and the top voice's lead (ms)."""
    n = len(notes)
    sizes = np.diff(np.r_[starts, n])
    first = notes.onset[starts]
    last = np.maximum.reduceat(notes.onset, starts)
    chord = sizes >= 2
    spread = 1000 * (last - first)[chord]
    mean_onset = np.add.reduceat(notes.onset, starts) / sizes
    lead = 1000 * (notes.onset[top] - mean_onset)[chord]
    return [
        float(chord.mean()), float(sizes.mean()), _mean(spread), _std(spread), _pct(spread, 90), _mean(lead),
        float((spread > 15).mean()) if spread.size else 0.0,
    ]


def _velocity(notes: Any, starts: np.ndarray, top: np.ndarray, t_note: np.ndarray, logioi: np.ndarray,
              tempo: np.ndarray) -> list[float]:
    """Velocity features: level and spread, shaping over time (curves of per-event mean velocity), voicing."""
    vel = notes.velocity.astype(np.float64)
    n = vel.size
    sizes = np.diff(np.r_[starts, n])
    ev_vel = np.add.reduceat(vel, starts) / sizes
    curve = moving_average(ev_vel)
    t_ev = t_note[starts]
    note_curve = np.repeat(curve, sizes)
    chord = sizes >= 2
    # top note minus the mean of the others, per chord; within-chord velocity spread
    sums = np.add.reduceat(vel, starts)
    rest = (sums - vel[top]) / np.maximum(sizes - 1, 1)
    sq = np.add.reduceat(vel * vel, starts) / sizes
    chord_std = np.sqrt(np.maximum(sq - ev_vel * ev_vel, 0.0))
    return [
        _mean(vel), _std(vel), _pct(vel, 5), _pct(vel, 50), _pct(vel, 95), _pct(vel, 95) - _pct(vel, 5),
        _mean(np.abs(np.diff(vel))),
        slope(t_note, vel),
        _std(curve), _pct(curve, 90) - _pct(curve, 10),
        _quarter_diff(curve),
        float(t_ev[int(np.argmax(curve))]) if curve.size else 0.0,
        _std(vel - note_curve),
        corr(vel, notes.pitch.astype(np.float64)),
        _mean((vel[top] - rest)[chord]),
        _mean(chord_std[chord]),
        corr(ev_vel[:-1], logioi),  # louder events held longer before the next?
        corr(curve[:-1], -tempo),  # louder where faster (phrase arch)?
    ]


def _articulation(notes: Any, starts: np.ndarray, top: np.ndarray, bottom: np.ndarray) -> list[float]:
    """Articulation: log(duration / time to the next event's onset), per note of every event but the last."""
    n = len(notes)
    sizes = np.diff(np.r_[starts, n])
    event = np.repeat(np.arange(starts.size), sizes)
    dur = notes.offset - notes.onset
    logdur = np.log(np.maximum(dur, 1e-3))
    has_next = event < starts.size - 1
    nxt = notes.onset[starts[np.minimum(event + 1, starts.size - 1)]]
    gap = np.maximum(nxt - notes.onset, MIN_IOI)
    ratio = np.log(np.maximum(dur, 1e-3) / gap)[has_next]
    overlap = 1000 * (notes.offset - nxt)[has_next]
    top_next, bottom_next = has_next[top], has_next[bottom]
    full = np.log(np.maximum(dur, 1e-3) / gap)
    return [
        _mean(logdur), _std(logdur), _mean(ratio), _std(ratio), _pct(ratio, 10), _pct(ratio, 90),
        float((ratio < np.log(0.6)).mean()) if ratio.size else 0.0,
        float((ratio > 0).mean()) if ratio.size else 0.0,
        _mean(overlap[overlap > 0]),
        _mean(full[top][top_next]), _mean(full[bottom][bottom_next]),
    ]


def _pedal(notes: Any, ev_onset: np.ndarray, t0: float, t1: float) -> tuple[list[float], np.ndarray]:
    """Pedal features; also returns each note's offset extended by the sustain pedal [N]."""
    span = max(t1 - t0, 1e-6)
    iv = notes.pedal_intervals
    sustained = pedal_release(notes.offset, iv)
    if iv.shape[0] == 0:
        return [_mean(notes.pedal.astype(np.float64)), 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], sustained
    clipped = np.clip(iv, t0, t1)
    length = iv[:, 1] - iv[:, 0]
    # the last event onset at or before each press: how late after the attack the pedal goes down
    prev = np.searchsorted(ev_onset, iv[:, 0], side="right") - 1
    delay = np.where(prev >= 0, iv[:, 0] - ev_onset[np.clip(prev, 0, None)], np.nan)
    delay = np.minimum(delay[~np.isnan(delay)], 1.0)
    gaps = iv[1:, 0] - iv[:-1, 1]
    dur = np.maximum(notes.offset - notes.onset, 1e-3)
    return [
        _mean(notes.pedal.astype(np.float64)),
        float(min((clipped[:, 1] - clipped[:, 0]).sum() / span, 1.0)),
        iv.shape[0] / span,
        _mean(np.log(np.maximum(length, 1e-3))),
        iv.shape[0] / max(ev_onset.size, 1),
        _mean(np.log((sustained - notes.onset) / dur)),
        1000 * _pct(delay, 50),
        _mean(np.log(np.maximum(gaps, 1e-3))),
    ], sustained


def _polyphony(notes: Any, ev_onset: np.ndarray, sustained: np.ndarray, span: float) -> list[float]:
    """Notes sounding at each event onset (keys held; keys or pedal), silence and key density."""
    keys = sounding_at(ev_onset, notes.onset, notes.offset).astype(np.float64)
    ped = sounding_at(ev_onset, notes.onset, sustained).astype(np.float64)
    reach = np.maximum.accumulate(notes.offset)
    silence = np.maximum(notes.onset[1:] - reach[:-1], 0.0).sum()
    span = max(span, 1e-6)
    return [_mean(keys), _pct(keys, 95), _mean(ped), _pct(ped, 95), float(silence / span),
            float((notes.offset - notes.onset).sum() / span)]


def performance_features(notes: Any) -> np.ndarray:
    """NoteTable with N >= 1 notes -> [len(FEATURE_NAMES)] float64 summary of the whole performance.

    Names and order: :data:`FEATURE_NAMES`. Velocities are MIDI units (1-127), times seconds unless the name
    says ms, log values natural logs. Every value is finite.
    """
    if len(notes) == 0:
        raise ValueError("performance_features: the note table is empty")
    onset = notes.onset
    t0, t1 = float(onset[0]), float(max(notes.offset.max(), onset[-1]))
    span = max(t1 - t0, 1e-3)
    onset_span = max(float(onset[-1] - onset[0]), 1e-3)
    starts = event_starts(onset)
    ev_onset = onset[starts]
    top, bottom = event_extremes(notes.pitch, starts)
    t_note = (onset - onset[0]) / onset_span
    timing, logioi, tempo = _timing(ev_onset, onset_span)
    pedal, sustained = _pedal(notes, ev_onset, t0, t1)
    pitch = notes.pitch.astype(np.float64)
    out = [
        float(np.log(len(notes))), float(np.log(span)), len(notes) / span, starts.size / span,
        *timing,
        *_chords(notes, starts, top),
        *_velocity(notes, starts, top, t_note, logioi, tempo),
        *_articulation(notes, starts, top, bottom),
        *pedal,
        *_polyphony(notes, ev_onset, sustained, span),
        _mean(pitch), _std(pitch), _pct(pitch, 95) - _pct(pitch, 5), _pct(pitch, 5), _pct(pitch, 95),
    ]
    if len(out) != N_FEATURES:  # a programming error: the name list and the computation disagree
        raise AssertionError(f"performance_features: {len(out)} values for {N_FEATURES} names")
    return np.nan_to_num(np.asarray(out, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------------------------ within-passage


def within_group_zscore(x: np.ndarray, groups: Any, *, rel_floor: float = 1e-6) -> np.ndarray:
    """x [M, F], groups [M] (any hashable keys) -> [M, F]: each feature z-scored within its group.

    Every performance of one passage plays the same music, so the passage mean carries *what* is played
    and the z-score *how* this player plays it relative to the others. A feature that does not vary within
    a group (spread below ``rel_floor`` times its spread over all rows), and every group of one row, gives 0.
    Uses only inputs, never labels.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"within_group_zscore: expected x of shape [M, F], got {x.shape}")
    keys = np.asarray(groups, dtype=object).reshape(-1)
    if keys.shape[0] != x.shape[0]:
        raise ValueError(f"within_group_zscore: {keys.shape[0]} groups for {x.shape[0]} rows")
    if x.shape[0] == 0:
        return x.copy()
    _, inv = np.unique(keys.astype(str), return_inverse=True)
    counts = np.bincount(inv).astype(np.float64)[:, None]
    sums = np.zeros((counts.shape[0], x.shape[1]))
    np.add.at(sums, inv, x)
    mean = sums / counts
    dev = x - mean[inv]
    sq = np.zeros_like(sums)
    np.add.at(sq, inv, dev * dev)
    std = np.sqrt(sq / counts)[inv]
    floor = rel_floor * x.std(axis=0) + 1e-12
    return np.where(std > floor, dev / np.where(std > floor, std, 1.0), 0.0)
