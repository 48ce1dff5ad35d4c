"""The waveform suite measured on a real PercePiano recording, and the frame-space perturbation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pianoray.data.augment import (
    AugmentConfig,
    WaveformAugmentor,
    coloured_noise,
    perturb_embeddings,
    simulated_room_ir,
)

SR = 22050


@pytest.fixture(scope="module")
def recording(percepiano_dir: Path) -> np.ndarray:
    """4 s of the real example WAV, mono, resampled to 22.05 kHz (keeps the tests fast)."""
    import soxr

    wavs = sorted((percepiano_dir / "examples").glob("*.wav"))
    assert wavs, f"no WAV in {percepiano_dir / 'examples'}"
    audio, sr = sf.read(wavs[0], dtype="float32", frames=44100 * 5)
    mono = audio.mean(axis=1) if audio.ndim == 2 else audio
    return soxr.resample(mono, sr, SR)[SR // 2 : SR // 2 + 4 * SR].astype(np.float32)


def _band_energy_db(x: np.ndarray, lo_hz: float, hi_hz: float) -> float:
    spec = np.abs(np.fft.rfft(x)) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return 10 * np.log10(spec[(freqs >= lo_hz) & (freqs < hi_hz)].sum() + 1e-20)


@pytest.mark.parametrize("snr", [10.0, 17.5, 30.0])
@pytest.mark.parametrize("colour", ["white", "pink", "brown"])
def test_noise_snr_is_measured_as_requested(recording, snr: float, colour: str) -> None:
    noisy, rec = WaveformAugmentor().add_noise(recording, SR, snr, np.random.default_rng(0), colour=colour)
    noise = noisy.astype(np.float64) - recording
    measured = 10 * np.log10(np.mean(recording.astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(measured - snr) <= 0.5
    assert rec.name == "noise" and rec.params == {"snr_db": snr, "colour": colour}


def test_noise_from_folder(recording, tmp_path: Path) -> None:
    clip = coloured_noise((SR,), "pink", np.random.default_rng(1)) * 0.1
    sf.write(tmp_path / "hum.wav", clip, SR)
    aug = WaveformAugmentor(AugmentConfig(noise_dir=tmp_path))
    noisy, rec = aug.add_noise(recording, SR, 20.0, np.random.default_rng(0))
    noise = noisy.astype(np.float64) - recording
    assert abs(10 * np.log10(np.mean(recording.astype(np.float64) ** 2) / np.mean(noise**2)) - 20.0) <= 0.5
    assert rec.params["noise_file"].endswith("hum.wav")
    with pytest.raises(ValueError, match="augment.noise_dir"):
        AugmentConfig(noise_dir=tmp_path / "empty")


def test_noise_colours_have_their_slopes() -> None:
    rng = np.random.default_rng(0)
    for colour, slope in [("white", 0.0), ("pink", -1.0), ("brown", -2.0)]:
        n = coloured_noise((2**16,), colour, rng)
        spec = np.abs(np.fft.rfft(n)) ** 2
        f = np.arange(spec.size)
        sel = (f > 100) & (f < 10000)
        fitted = np.polyfit(np.log(f[sel]), np.log(spec[sel]), 1)[0]
        assert abs(fitted - slope) < 0.1, (colour, fitted)


def test_phone_removes_energy_above_8k(recording) -> None:
    # The recording itself holds little above 8 kHz: add broadband noise so there is something to remove.
    recording, _ = WaveformAugmentor().add_noise(recording, SR, 20.0, np.random.default_rng(0), colour="white")
    phone, rec = WaveformAugmentor().phone(recording, SR, np.random.default_rng(3))
    assert phone.shape == recording.shape
    before_hi = _band_energy_db(recording, 8200, SR / 2)
    after_hi = _band_energy_db(phone, 8200, SR / 2)
    after_lo = _band_energy_db(phone, 100, 4000)
    assert after_hi < after_lo - 60  # essentially nothing above the band edge
    assert after_hi < before_hi - 30  # down to the resampler's floor
    assert abs(after_lo - _band_energy_db(recording, 100, 4000)) < 10  # the music is still there
    assert rec.name == "phone" and rec.params["band_hz"] == 8000.0


def _peak_hz(x: np.ndarray, lo: float, hi: float) -> float:
    """Spectral peak within [lo, hi) Hz, refined by parabolic interpolation on the log magnitude."""
    win = np.hanning(x.size)
    spec = np.log(np.abs(np.fft.rfft(x * win)) + 1e-12)
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    idx = np.where((freqs >= lo) & (freqs < hi))[0]
    k = idx[np.argmax(spec[idx])]
    a, b, c = spec[k - 1], spec[k], spec[k + 1]
    return float((k + 0.5 * (a - c) / (a - 2 * b + c)) * SR / x.size)


@pytest.mark.parametrize("cents", [50.0, -50.0])
def test_pitch_shift_moves_a_pure_tone_by_the_cent_ratio(cents: float) -> None:
    t = np.arange(2 * SR) / SR
    tone = (0.5 * np.sin(2 * np.pi * 440.0 * t)).astype(np.float32)
    shifted, rec = WaveformAugmentor().shift_cents(tone, SR, cents)
    core = slice(SR // 4, -SR // 4)  # away from the stretcher's edges
    ratio = _peak_hz(shifted[core], 300, 600) / _peak_hz(tone[core], 300, 600)
    assert ratio == pytest.approx(2 ** (cents / 1200), rel=1e-3)
    assert rec.params == {"cents": cents}


def _log_spectrum(x: np.ndarray, cents_grid: np.ndarray) -> np.ndarray:
    """Log-magnitude spectrum of x on a grid of cents above 100 Hz."""
    spec = np.log(np.abs(np.fft.rfft(x * np.hanning(x.size))) + 1e-9)
    freqs = np.fft.rfftfreq(x.size, 1 / SR)
    return np.interp(100.0 * 2 ** (cents_grid / 1200), freqs, spec)


def test_pitch_shift_moves_the_recordings_spectrum(recording) -> None:
    """On real piano music no single peak is stable (partials change level); the whole spectrum must slide
    by +50 cents on a log-frequency axis: the best-aligning shift is found by cross-correlation."""
    shifted, _ = WaveformAugmentor().shift_cents(recording, SR, 50.0)
    core = slice(SR // 2, -SR // 2)
    grid = np.arange(0, 1200 * np.log2(4000 / 100), 1.0)  # 100 Hz - 4 kHz in 1-cent steps
    a, b = _log_spectrum(recording[core], grid), _log_spectrum(shifted[core], grid)
    a, b = a - a.mean(), b - b.mean()
    lags = np.arange(-120, 121)
    corr = [np.dot(a[max(0, -k) : len(a) - max(0, k)], b[max(0, k) : len(b) - max(0, -k)]) for k in lags]
    assert abs(lags[int(np.argmax(corr))] - 50) <= 3


def test_room_ir_decays_at_rt60() -> None:
    ir = simulated_room_ir(SR, 0.5, np.random.default_rng(0))
    assert ir[0] > 0 and np.isclose(np.sum(ir.astype(np.float64) ** 2), 1.0, atol=1e-5)
    energy = np.cumsum(ir[::-1].astype(np.float64) ** 2)[::-1]  # Schroeder backward integral
    edc = 10 * np.log10(energy / energy[1] + 1e-30)
    t5, t25 = np.argmax(edc < -5) / SR, np.argmax(edc < -25) / SR
    assert 3 * (t25 - t5) == pytest.approx(0.5, rel=0.25)  # T20-based RT60 estimate


def test_suite_is_deterministic_and_reports_what_it_did(recording) -> None:
    x = recording[: 2 * SR]
    always = AugmentConfig(p_room=1, p_noise=1, p_phone=1, p_pitch=1, p_eq=1)
    a, rec_a = WaveformAugmentor(always).augment(x, SR, 7)
    b, rec_b = WaveformAugmentor(always).augment(x, SR, np.random.default_rng(7))
    assert np.array_equal(a, b) and rec_a == rec_b
    assert [r.name for r in rec_a] == ["room_ir", "eq", "pitch_shift", "noise", "phone"]
    assert a.shape == x.shape and a.dtype == np.float32 and np.max(np.abs(a)) <= 1.0
    c, _ = WaveformAugmentor(always).augment(x, SR, 8)
    assert not np.array_equal(a, c)
    never = AugmentConfig(p_room=0, p_noise=0, p_phone=0, p_pitch=0, p_eq=0)
    same, none = WaveformAugmentor(never).augment(x, SR, 7)
    assert none == [] and np.array_equal(same, x)


def test_default_probabilities_are_the_seeds() -> None:
    aug = WaveformAugmentor()
    counts: dict[str, int] = {}
    x = np.zeros(4096, dtype=np.float32)
    x[::50] = 0.1
    for seed in range(400):
        _, rec = aug.augment(x, 8000, seed)
        for r in rec:
            counts[r.name] = counts.get(r.name, 0) + 1
    expected = {"room_ir": 0.3, "noise": 0.3, "phone": 0.2, "pitch_shift": 0.1, "eq": 0.2}
    for name, p in expected.items():
        assert abs(counts.get(name, 0) / 400 - p) < 0.07, (name, counts)


def test_perturb_embeddings() -> None:
    frames = np.random.default_rng(0).standard_normal((50, 16)).astype(np.float32)
    a = perturb_embeddings(frames, np.random.default_rng(1), 0.1)
    assert a.shape == frames.shape and a.dtype == np.float32
    assert np.array_equal(a, perturb_embeddings(frames, np.random.default_rng(1), 0.1))
    assert np.array_equal(perturb_embeddings(frames, np.random.default_rng(1), 0.0), frames)
    d_small = np.linalg.norm(a - frames)
    d_large = np.linalg.norm(perturb_embeddings(frames, np.random.default_rng(1), 0.5) - frames)
    assert 0 < d_small < d_large
    cos = np.sum(a * frames) / (np.linalg.norm(a) * np.linalg.norm(frames))
    assert cos > 0.8
    with pytest.raises(ValueError, match="\\[T, D\\]"):
        perturb_embeddings(frames[0], np.random.default_rng(0))


def test_room_from_ir_folder(tmp_path: Path) -> None:
    ir = np.zeros(SR // 10, dtype=np.float32)
    ir[0], ir[SR // 20] = 1.0, 0.5  # direct sound + one echo 50 ms later
    sf.write(tmp_path / "room.wav", ir, SR)
    x = np.zeros(SR // 5, dtype=np.float32)
    x[100] = 1.0
    wet, rec = WaveformAugmentor(AugmentConfig(ir_dir=tmp_path)).room(x, SR, np.random.default_rng(0))
    assert rec.name == "room_ir" and rec.params["ir_file"].endswith("room.wav")
    assert wet.shape == x.shape
    echo = int(np.argmax(np.abs(wet[200:]))) + 200
    assert abs(echo - (100 + SR // 20)) <= 2
