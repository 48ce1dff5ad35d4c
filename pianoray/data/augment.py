"""Augmentation for the robustness tier (T4) and the robustness metrics.

Two levels:
- :class:`WaveformAugmentor`: the seed's suite on raw audio, before MuQ extraction (room IR 0.3, additive
  noise at 10-30 dB SNR 0.3, phone-mic simulation 0.2, pitch shift +-50 cents 0.1, 3-band EQ 0.2).
  audiomentations (0.43) does pitch shift, EQ filters, tanh distortion and file IRs; we draw every parameter
  from our own ``numpy.random.Generator`` and hand it to the transform frozen, so a seed reproduces the
  output exactly and audiomentations' global RNG is never consulted. Noise mixing, simulated rooms, the
  compressor and the band limit are written here because audiomentations either draws their noise from the
  global RNG or lacks them (its Limiter needs a package we don't install).
- :func:`perturb_embeddings`: a cheap stand-in in MuQ-frame space (noise, gain, temporal smoothing) for the
  demo's T4 pairs, where there is no audio to augment.

Audio is float32, mono ``[n]`` or multichannel ``[C, n]``, at any sample rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy import ndimage, signal

from pianoray.errors import InputError

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".aiff", ".aif")
NOISE_COLOURS: dict[str, float] = {"white": 0.0, "pink": 1.0, "brown": 2.0}  # power ~ 1 / f^exponent


class AugmentConfig(BaseModel):
    """Probabilities and ranges of the waveform suite (the seed's table by default)."""

    model_config = ConfigDict(extra="forbid")

    p_room: float = Field(0.3, ge=0, le=1)
    p_noise: float = Field(0.3, ge=0, le=1)
    p_phone: float = Field(0.2, ge=0, le=1)
    p_pitch: float = Field(0.1, ge=0, le=1)
    p_eq: float = Field(0.2, ge=0, le=1)
    ir_dir: Path | None = None  # real impulse responses (e.g. MIT IR Survey); None = simulated rooms
    noise_dir: Path | None = None  # real noise clips (e.g. ESC-50); None = coloured noise
    snr_db: tuple[float, float] = (10.0, 30.0)
    rt60_s: tuple[float, float] = (0.2, 1.2)  # simulated rooms' reverberation time
    max_cents: float = Field(50.0, ge=0, le=1200)
    eq_gain_db: float = Field(6.0, ge=0, le=24)
    phone_band_hz: float = Field(8000.0, gt=0)  # phone path: nothing above this survives
    # librosa's phase vocoder + resampling hits the cent ratio (measured: 440 Hz +50 cents within 0.002%);
    # signalsmith is faster but lands ~3 cents sharp at +-50 cents (measured 1.0312 for 1.0293).
    pitch_method: Literal["librosa_phase_vocoder", "signalsmith_stretch"] = "librosa_phase_vocoder"

    @model_validator(mode="after")
    def _check(self) -> "AugmentConfig":
        for name in ("snr_db", "rt60_s"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"augment.{name}: low {lo} > high {hi}")
        if self.rt60_s[0] <= 0:
            raise ValueError(f"augment.rt60_s must be positive, got {self.rt60_s}")
        for name in ("ir_dir", "noise_dir"):
            folder = getattr(self, name)
            if folder is not None and not _audio_files(folder):
                raise ValueError(f"augment.{name}: {folder} holds no audio files ({', '.join(AUDIO_SUFFIXES)})")
        return self


@dataclass(frozen=True)
class AppliedTransform:
    """One transform the augmentor applied and the parameters it drew (for logs and robustness reports)."""

    name: str
    params: dict[str, Any] = field(default_factory=dict)


def _audio_files(folder: Path) -> list[Path]:
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)


def load_mono(path: Path, sample_rate: int) -> NDArray[np.float32]:
    """An audio file as mono float32 at ``sample_rate`` (soundfile + soxr; librosa's loader is slow to import)."""
    import soundfile as sf
    import soxr

    try:
        audio, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # soundfile raises its own LibsndfileError, RuntimeError on old versions
        raise InputError(f"{path}: cannot read audio ({e})") from e
    mono = audio.mean(axis=1)
    return (soxr.resample(mono, sr, sample_rate) if sr != sample_rate else mono).astype(np.float32)


def _power(x: NDArray) -> float:
    return float(np.mean(np.square(x, dtype=np.float64)))


def _frozen(transform: Any, **params: Any) -> Any:
    """An audiomentations transform with its parameters set by us (its own randomisation skipped)."""
    transform.parameters = {"should_apply": True, **params}
    transform.freeze_parameters()
    return transform


def coloured_noise(shape: tuple[int, ...], colour: str, rng: np.random.Generator) -> NDArray[np.float32]:
    """Noise of the given shape (time on the last axis) whose power spectrum falls as 1/f^k (white k=0,
    pink 1, brown 2), unit RMS. Shaped in the frequency domain so the slope is exact at every length."""
    if colour not in NOISE_COLOURS:
        raise ValueError(f"unknown noise colour {colour!r}; known: {', '.join(NOISE_COLOURS)}")
    n = shape[-1]
    white = rng.standard_normal(shape)
    spectrum = np.fft.rfft(white, axis=-1)
    freqs = np.arange(spectrum.shape[-1], dtype=np.float64)
    freqs[0] = freqs[1] if len(freqs) > 1 else 1.0  # no infinite DC gain
    spectrum *= freqs ** (-NOISE_COLOURS[colour] / 2)
    noise = np.fft.irfft(spectrum, n=n, axis=-1)
    noise -= noise.mean(axis=-1, keepdims=True)
    return (noise / max(np.sqrt(_power(noise)), 1e-12)).astype(np.float32)


def mix_at_snr(clean: NDArray, noise: NDArray, snr_db: float) -> NDArray[np.float32]:
    """clean + noise scaled so that 10*log10(P_clean / P_noise) == snr_db exactly (same shapes)."""
    p_clean, p_noise = _power(clean), _power(noise)
    if p_noise == 0.0 or p_clean == 0.0:
        return clean.astype(np.float32)
    scale = np.sqrt(p_clean / (p_noise * 10.0 ** (snr_db / 10.0)))
    return (clean + scale * noise).astype(np.float32)


def simulated_room_ir(sample_rate: int, rt60_s: float, rng: np.random.Generator) -> NDArray[np.float32]:
    """A diffuse-field room: a direct impulse, a short gap, then Gaussian noise decaying 60 dB over rt60_s.

    Late reverberation of a real room is close to exponentially decaying noise; that is all a piano model
    needs to see. Energy-normalised so the wet signal keeps roughly the dry level.
    """
    n = max(2, int(round(rt60_s * sample_rate)))
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.908 * t / rt60_s)  # ln(1000) = 6.908: -60 dB at rt60
    pre_delay = int(rng.uniform(0.003, 0.02) * sample_rate)  # first reflections arrive after the direct sound
    tail[:pre_delay] = 0.0
    drr = 10 ** (rng.uniform(-3.0, 6.0) / 10)  # direct-to-reverberant energy ratio, -3..6 dB
    tail *= np.sqrt(1.0 / (drr * max(np.sum(tail**2), 1e-12)))
    tail[0] = 1.0
    return (tail / np.sqrt(np.sum(tail**2))).astype(np.float32)


def compress(x: NDArray, sample_rate: int, threshold_db: float, ratio: float) -> NDArray[np.float32]:
    """A feed-forward peak compressor (5 ms attack-ish one-pole envelope), level restored to the input peak."""
    coeff = np.exp(-1.0 / (0.005 * sample_rate))
    env = signal.lfilter([1 - coeff], [1, -coeff], np.abs(x), axis=-1)
    peak = max(float(np.max(np.abs(x))), 1e-12)
    threshold = peak * 10 ** (threshold_db / 20)
    over = np.maximum(env / threshold, 1.0)
    y = x * over ** (1.0 / ratio - 1.0)
    return (y * peak / max(float(np.max(np.abs(y))), 1e-12)).astype(np.float32)


def band_limit(x: NDArray, sample_rate: int, cutoff_hz: float) -> NDArray[np.float32]:
    """Remove everything above cutoff_hz: resample to 2*cutoff and back, as a phone codec path does.

    soxr's anti-alias filter is steep (> 100 dB), unlike a Butterworth low-pass which leaves a skirt.
    """
    import soxr

    low_rate = int(2 * cutoff_hz)
    if low_rate >= sample_rate:
        return x.astype(np.float32)
    xt = np.ascontiguousarray(np.atleast_2d(x).T)  # soxr wants [n, C]
    down = soxr.resample(xt, sample_rate, low_rate, quality="VHQ")
    up = soxr.resample(down, low_rate, sample_rate, quality="VHQ")
    n = xt.shape[0]
    up = np.pad(up, ((0, max(0, n - up.shape[0])), (0, 0)))[:n]
    out = up.T
    return (out[0] if x.ndim == 1 else out).astype(np.float32)


class WaveformAugmentor:
    """The seed's augmentation suite; each transform fires independently with its probability.

    ``augment(audio, sample_rate, rng)`` -> (augmented audio, applied transforms). Order: room -> EQ -> pitch ->
    noise -> phone (the phone records the noisy room, and its band limit comes last). The output is scaled
    down (never up) if it would clip.
    """

    def __init__(self, cfg: AugmentConfig | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.ir_files = _audio_files(self.cfg.ir_dir) if self.cfg.ir_dir else []
        self.noise_files = _audio_files(self.cfg.noise_dir) if self.cfg.noise_dir else []

    def augment(
        self, audio: NDArray, sample_rate: int, rng: np.random.Generator | int
    ) -> tuple[NDArray[np.float32], list[AppliedTransform]]:
        rng = np.random.default_rng(rng) if isinstance(rng, int) else rng
        x = np.asarray(audio, dtype=np.float32)
        applied: list[AppliedTransform] = []
        c = self.cfg
        # Draw every coin first, so the same seed fires the same transforms whatever each one draws.
        fire = rng.uniform(size=5) < np.array([c.p_room, c.p_eq, c.p_pitch, c.p_noise, c.p_phone])
        steps = (self.room, self.eq, self.pitch_shift, self.noise, self.phone)
        for on, step in zip(fire, steps):
            if on:
                x, record = step(x, sample_rate, rng)
                applied.append(record)
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if peak > 1.0:
            x = x / peak
        return x.astype(np.float32), applied

    # --- individual transforms: (audio, sample_rate, rng) -> (audio, record) -------------------------

    def room(self, x: NDArray, sr: int, rng: np.random.Generator) -> tuple[NDArray, AppliedTransform]:
        if self.ir_files:
            from audiomentations import ApplyImpulseResponse

            path = self.ir_files[int(rng.integers(len(self.ir_files)))]
            t = _frozen(ApplyImpulseResponse(ir_path=[path], p=1.0), ir_file_path=path)
            return t(x, sr), AppliedTransform("room_ir", {"ir_file": str(path)})
        rt60 = float(rng.uniform(*self.cfg.rt60_s))
        ir = simulated_room_ir(sr, rt60, rng)
        wet = signal.fftconvolve(x, ir if x.ndim == 1 else ir[None, :], axes=-1)[..., : x.shape[-1]]
        return wet.astype(np.float32), AppliedTransform("room_ir", {"simulated_rt60_s": rt60})

    def noise(self, x: NDArray, sr: int, rng: np.random.Generator) -> tuple[NDArray, AppliedTransform]:
        snr = float(rng.uniform(*self.cfg.snr_db))
        return self.add_noise(x, sr, snr, rng)

    def add_noise(
        self, x: NDArray, sr: int, snr_db: float, rng: np.random.Generator, colour: str | None = None
    ) -> tuple[NDArray, AppliedTransform]:
        """x + noise at exactly ``snr_db`` (a random clip from noise_dir, else coloured noise)."""
        if self.noise_files and colour is None:
            path = self.noise_files[int(rng.integers(len(self.noise_files)))]
            clip = load_mono(path, sr)
            if clip.size == 0:
                raise InputError(f"{path}: empty noise file")
            start = int(rng.integers(clip.size))
            clip = np.roll(clip, -start)
            clip = np.tile(clip, int(np.ceil(x.shape[-1] / clip.size)))[: x.shape[-1]]
            noise = np.broadcast_to(clip, x.shape)
            params: dict[str, Any] = {"snr_db": snr_db, "noise_file": str(path)}
        else:
            colour = colour or str(rng.choice(list(NOISE_COLOURS)))
            noise = coloured_noise(x.shape, colour, rng)
            params = {"snr_db": snr_db, "colour": colour}
        return mix_at_snr(x, noise, snr_db), AppliedTransform("noise", params)

    def phone(self, x: NDArray, sr: int, rng: np.random.Generator) -> tuple[NDArray, AppliedTransform]:
        """Phone-mic path: compression, then tanh distortion, then the 8 kHz band limit (last, so the
        distortion's harmonics are removed as a phone's codec would)."""
        from audiomentations import TanhDistortion

        threshold_db = float(rng.uniform(-24.0, -10.0))
        ratio = float(rng.uniform(2.0, 6.0))
        distortion = float(rng.uniform(0.05, 0.4))
        y = compress(x, sr, threshold_db, ratio)
        y = _frozen(TanhDistortion(p=1.0), distortion_amount=distortion)(y, sr)
        y = band_limit(y, sr, self.cfg.phone_band_hz)
        params = {"compress_threshold_db": threshold_db, "ratio": ratio, "distortion": distortion,
                  "band_hz": self.cfg.phone_band_hz}
        return y, AppliedTransform("phone", params)

    def pitch_shift(self, x: NDArray, sr: int, rng: np.random.Generator) -> tuple[NDArray, AppliedTransform]:
        cents = float(rng.uniform(-self.cfg.max_cents, self.cfg.max_cents))
        return self.shift_cents(x, sr, cents)

    def shift_cents(self, x: NDArray, sr: int, cents: float) -> tuple[NDArray, AppliedTransform]:
        from audiomentations import PitchShift

        t = _frozen(
            PitchShift(min_semitones=-1, max_semitones=1, method=self.cfg.pitch_method, p=1.0),
            num_semitones=cents / 100.0,
        )
        return t(np.ascontiguousarray(x), sr).astype(np.float32), AppliedTransform("pitch_shift", {"cents": cents})

    def eq(self, x: NDArray, sr: int, rng: np.random.Generator) -> tuple[NDArray, AppliedTransform]:
        """Three bands: a low shelf (80-300 Hz), a mid peak (400-4000 Hz), a high shelf (3-8 kHz, below Nyquist)."""
        from audiomentations import HighShelfFilter, LowShelfFilter, PeakingFilter

        g = self.cfg.eq_gain_db
        bands = {
            "low_shelf": (LowShelfFilter, float(np.exp(rng.uniform(np.log(80), np.log(300)))), float(rng.uniform(0.5, 0.9))),
            "mid_peak": (PeakingFilter, float(np.exp(rng.uniform(np.log(400), np.log(4000)))), float(rng.uniform(0.5, 2.0))),
            "high_shelf": (HighShelfFilter, float(min(np.exp(rng.uniform(np.log(3000), np.log(8000))), 0.4 * sr)), float(rng.uniform(0.5, 0.9))),
        }
        params: dict[str, Any] = {}
        y = x
        for name, (cls, freq, q) in bands.items():
            gain = float(rng.uniform(-g, g))
            y = _frozen(cls(p=1.0), center_freq=freq, gain_db=gain, q_factor=q)(y, sr)
            params[name] = {"freq_hz": freq, "gain_db": gain, "q": q}
        return y.astype(np.float32), AppliedTransform("eq", params)


def perturb_embeddings(
    frames: NDArray, rng: np.random.Generator, strength: float = 0.1
) -> NDArray[np.float32]:
    """A T4 twin in frame space: frames [T, D] -> [T, D], for corpora without audio (the demo).

    Three effects, each scaled by ``strength`` (0 = identity): Gaussian noise at ``strength`` x each
    dimension's std, a global gain in [1 - strength, 1 + strength], and temporal smoothing (a 3- or 5-frame
    moving average, mixed in with weight min(1, strength)) standing in for reverberation's smearing.
    """
    if strength < 0:
        raise ValueError(f"perturb_embeddings: strength must be >= 0, got {strength}")
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"perturb_embeddings: frames must be [T, D], got shape {x.shape}")
    if strength == 0 or x.shape[0] == 0:
        return x.copy()
    std = x.std(axis=0, keepdims=True) + 1e-6
    noisy = x + rng.standard_normal(x.shape).astype(np.float32) * std * strength
    gain = 1.0 + rng.uniform(-strength, strength)
    width = 1 + 2 * int(rng.integers(1, 3))  # 3 or 5 frames (120-200 ms at 25 Hz)
    smooth = ndimage.uniform_filter1d(noisy, size=width, axis=0, mode="nearest")
    mix = min(1.0, strength)
    return ((1 - mix) * noisy + mix * smooth).astype(np.float32) * np.float32(gain)
