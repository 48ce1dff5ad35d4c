"""``pianoray extract``: audio files -> a tier cache of MuQ frames (``hidden_states[8]``, plus the final layer).

What runs, per audio file:

1. load mono at 24 kHz (soundfile + soxr, :func:`pianoray.data.augment.load_mono`);
2. cut into fixed windows of ``window_seconds`` (``window_frames = 25 * window_seconds`` frames). The last
   partial window is DROPPED: MuQ's conformer conv module ignores padding masks, so a zero-padded window
   would change its valid frames, and an overlapped last window would break the cache's time axis
   (frames would repeat). A file shorter than one window is an error naming the file;
3. :class:`MuQEncoder` on each window: MuQ's front end (log-mel 2048/240/128 -> normalisation ->
   2 x stride-2 residual Conv2d -> linear to the conformer width, 25 frames/s) and HF's
   ``Wav2Vec2ConformerEncoder`` with MuQ's config (12 layers). Forward hooks collect ``hidden_states[8]``
   (the output of conformer layer index 7 = the input of layer 9) and the final layer (after the encoder's
   final LayerNorm): transformers 5's bare encoder returns neither;
4. write ``hidden_states[8]`` as the tier's frames (ROOT, ``muq_layer=8``) and the final layer as a second,
   complete pianoray cache in ``ROOT/final/`` (same tiers, segment ids and windows, ``muq_layer=12``): the
   frozen baseline reads it with ``open_cache(ROOT / "final")``. ``final/`` is closed before ROOT's
   corpus.json, so a complete ROOT implies a complete ``final/``.

With ``augment=N`` every clean file also gets N augmented versions (:class:`WaveformAugmentor`, seeded per
file and version) extracted the same way and written as T4 rows whose ``clean_id`` is the clean segment;
``augmentation`` holds the transform names ("room_ir+noise") and ``T4/augmentations.json`` (and
``final/T4/augmentations.json``) every transform's drawn parameters. A draw in which no transform fires is
redrawn from the same generator (a twin identical to its clean segment teaches invariance nothing).

The front end is reconstructed from MuQ's published source (tencent-ailab/MuQ: ``MelSTFT`` with
torchaudio's MelSpectrogram defaults + ``AmplitudeToDB``, the ``stat`` normalisation, ``Conv2dSubsampling``
of two ``Res2dModule``); torchaudio is not installed here, so the mel is our own STFT + HTK filterbank. It
has not been checked against a real checkpoint (no network): loading one checks every key and shape and
fails listing the mismatches, and where the checkpoint carries torchaudio's window/filterbank buffers they
are loaded and their difference from ours is logged. Without a checkpoint the weights are random: that is
refused unless ``allow_random=True`` (tests, demos), because random features look like real ones.

Nothing here imports ray; the CLI (``pianoray extract``) is a thin wrapper around :func:`extract`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from pianoray.data.augment import AUDIO_SUFFIXES, AugmentConfig, WaveformAugmentor, load_mono
from pianoray.data.cache import FRAME_RATE, MUQ_LAYER, CacheWriter, write_json_atomic
from pianoray.data.midi import file_sha256
from pianoray.data.percepiano import PERCEPIANO_DIMS, PercePianoError, parse_segment_name, read_labels
from pianoray.data.tiers import Tier, parse_tier
from pianoray.models.audio.muq_tail import (
    MUQ_FIRST_TAIL_LAYER,
    MUQ_N_LAYERS,
    MuQCheckpointError,
    MuQTailConfig,
    find_conformer_prefix,
    read_state_dict,
)

log = logging.getLogger(__name__)

MUQ_SAMPLE_RATE = 24_000
FINAL_DIR = "final"  # ROOT/final/: the second cache, holding the final layer (hidden_states[12])
FINAL_LAYER = MUQ_N_LAYERS
AUGMENTATIONS_FILE = "augmentations.json"  # ROOT/T4/augmentations.json: segment id -> applied transforms
NO_CHECKPOINT_MESSAGE = (
    "no MuQ checkpoint: extraction would produce random features; pass --muq-checkpoint, "
    "or --allow-random for tests"
)
# Redraws of an augmentation in which nothing fired; P(nothing fires) = 0.28 with the seed's probabilities,
# so 64 tries all failing has probability ~1e-35 (only a config with all probabilities 0 gets there).
MAX_AUGMENT_DRAWS = 64


class ExtractionError(ValueError):
    """Extraction cannot go on; the message names the file (or option) at fault."""


# ---------------------------------------------------------------------------------- the encoder


class MuQEncoderConfig(BaseModel):
    """MuQ's shape: front end + 12-layer conformer. Defaults are MuQ's (confirm against its config.json).

    ``mel_mean`` / ``mel_std`` are MuQ's ``stat`` (melspec_2048 mean/std in dB over its training set); when
    the checkpoint is a folder with a config.json holding ``stat``, those values replace these.
    """

    model_config = ConfigDict(extra="forbid")

    conformer: MuQTailConfig = Field(default_factory=lambda: MuQTailConfig(n_layers=MUQ_N_LAYERS))
    n_fft: int = Field(2048, ge=16)
    hop: int = Field(240, ge=1)  # 24 kHz / 240 = 100 mel frames/s; two stride-2 convs -> 25 frames/s
    n_mels: int = Field(128, ge=4)
    conv_dim: int = Field(512, ge=1)  # channels of the Conv2d subsampler
    mel_mean: float = 6.768444971712967
    mel_std: float = Field(18.417922652295623, gt=0)

    @model_validator(mode="after")
    def _check(self) -> "MuQEncoderConfig":
        if self.conformer.n_layers != MUQ_N_LAYERS:
            raise ValueError(
                f"encoder.conformer.n_layers must be {MUQ_N_LAYERS} (MuQ's depth: the cache holds layer "
                f"{MUQ_LAYER} and the final layer), got {self.conformer.n_layers}"
            )
        if MUQ_SAMPLE_RATE % (self.hop * 4) or MUQ_SAMPLE_RATE // (self.hop * 4) != FRAME_RATE:
            raise ValueError(f"encoder.hop {self.hop}: 24 kHz / (4 x hop) must be {FRAME_RATE} frames/s")
        return self

    @classmethod
    def tiny(cls, **overrides: Any) -> "MuQEncoderConfig":
        """A 12-layer encoder narrow enough for unit tests (width 32, 2 heads, ffn 64), random weights."""
        values: dict[str, Any] = {
            "conformer": MuQTailConfig(width=32, heads=2, ffn=64, kernel=7, n_layers=MUQ_N_LAYERS),
            "n_mels": 32,
            "conv_dim": 4,
        }
        values.update(overrides)
        return cls(**values)

    @property
    def samples_per_frame(self) -> int:
        return MUQ_SAMPLE_RATE // FRAME_RATE  # 960


def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int) -> Tensor:
    """Triangular HTK-mel filterbank without area normalisation (torchaudio's ``melscale_fbanks`` defaults:
    f_min 0, f_max sr/2, ``norm=None``, ``mel_scale="htk"``) -> [n_fft // 2 + 1, n_mels] float32."""
    all_freqs = torch.linspace(0, sample_rate // 2, n_fft // 2 + 1, dtype=torch.float64)
    mel_max = 2595.0 * math.log10(1.0 + (sample_rate / 2) / 700.0)
    mel_points = torch.linspace(0.0, mel_max, n_mels + 2, dtype=torch.float64)
    f_points = 700.0 * (10.0 ** (mel_points / 2595.0) - 1.0)
    f_diff = f_points[1:] - f_points[:-1]
    slopes = f_points[None, :] - all_freqs[:, None]  # [n_freqs, n_mels + 2]
    down = -slopes[:, :-2] / f_diff[:-1]
    up = slopes[:, 2:] / f_diff[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


class MelSpectrogramDB(nn.Module):
    """waveform [B, n] (24 kHz) -> log-mel [B, n_mels, n // hop] in dB (power, 10 log10, floor 1e-10).

    torchaudio's MelSpectrogram (centred STFT, reflect padding, periodic Hann window) gives n // hop + 1
    frames; MuQ drops the last one, so a window of k x 960 samples gives exactly 4k mel frames -> k output
    frames. Buffers keep torchaudio's names (``mel_stft.spectrogram.window``, ``mel_stft.mel_scale.fb``) so a
    MuQ checkpoint that stores them loads into them.
    """

    def __init__(self, n_fft: int, hop: int, n_mels: int) -> None:
        super().__init__()
        self.n_fft = n_fft
        self.hop = hop
        self.mel_stft = nn.Module()
        self.mel_stft.spectrogram = nn.Module()
        self.mel_stft.spectrogram.register_buffer("window", torch.hann_window(n_fft))
        self.mel_stft.mel_scale = nn.Module()
        self.mel_stft.mel_scale.register_buffer("fb", mel_filterbank(MUQ_SAMPLE_RATE, n_fft, n_mels))

    def forward(self, wave: Tensor) -> Tensor:
        spec = torch.stft(
            wave, self.n_fft, hop_length=self.hop, window=self.mel_stft.spectrogram.window,
            center=True, pad_mode="reflect", return_complex=True,
        ).abs().pow(2)  # [B, n_freqs, frames]
        mel = torch.matmul(spec.transpose(1, 2), self.mel_stft.mel_scale.fb).transpose(1, 2)
        return (10.0 * torch.log10(torch.clamp(mel, min=1e-10)))[..., :-1]


class Res2dModule(nn.Module):
    """MuQ's residual Conv2d block: [B, C_in, F, T] -> [B, C_out, F / s_f, T / s_t] (3x3 convs + BatchNorm)."""

    def __init__(self, in_ch: int, out_ch: int, stride: tuple[int, int]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()
        self.diff = in_ch != out_ch or stride[0] > 1
        if self.diff:  # a projected shortcut where the shape changes
            self.conv3 = nn.Conv2d(in_ch, out_ch, 3, padding=1, stride=stride)
            self.bn3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = self.bn3(self.conv3(x)) if self.diff else x
        return self.relu(shortcut + out)


class Conv2dSubsampling(nn.Module):
    """log-mel [B, n_mels, 4T] -> [B, T, width]: two stride-(2, 2) residual blocks, then a linear layer over
    (channels x remaining mel bands)."""

    def __init__(self, conv_dim: int, width: int, n_mels: int) -> None:
        super().__init__()
        self.conv = nn.Sequential(Res2dModule(1, conv_dim, (2, 2)), Res2dModule(conv_dim, conv_dim, (2, 2)))
        bands = n_mels
        for _ in range(2):
            bands = (bands - 1) // 2 + 1  # kernel 3, padding 1, stride 2
        self.linear = nn.Linear(conv_dim * bands, width)

    def forward(self, mel: Tensor) -> Tensor:
        x = self.conv(mel.unsqueeze(1))  # [B, C, F', T]
        b, c, f, t = x.shape
        return self.linear(x.permute(0, 3, 1, 2).reshape(b, t, c * f))


@dataclass
class EncoderOutputs:
    """``layer8`` = hidden_states[8] [B, T, W]; ``final`` = hidden_states[12] after the final LayerNorm."""

    layer8: Tensor
    final: Tensor


class MuQEncoder(nn.Module):
    """waveform windows [B, k x 960] at 24 kHz -> :class:`EncoderOutputs` with [B, k, width] each.

    Parameter names follow MuQ's ``MuQModel`` (checkpoint keys ``model.<name>``): ``conv.*`` (front end),
    ``conformer.*`` (HF ``Wav2Vec2ConformerEncoder``), ``preprocessor_melspec_2048.*`` (mel buffers).
    Always in eval mode: BatchNorm statistics and dropout must be MuQ's inference behaviour.
    """

    def __init__(self, cfg: MuQEncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.preprocessor_melspec_2048 = MelSpectrogramDB(cfg.n_fft, cfg.hop, cfg.n_mels)
        self.register_buffer("mel_mean", torch.tensor(cfg.mel_mean), persistent=False)
        self.register_buffer("mel_std", torch.tensor(cfg.mel_std), persistent=False)
        self.conv = Conv2dSubsampling(cfg.conv_dim, cfg.conformer.width, cfg.n_mels)
        hf = cfg.conformer.hf_config()
        # The encoder builds a positional conv embedding its forward never calls (rotary positions are used);
        # at MuQ's width it is 8.4M parameters, so it is built minimal and dropped.
        hf.num_conv_pos_embeddings, hf.num_conv_pos_embedding_groups = 1, 1
        self.conformer = Wav2Vec2ConformerEncoder(hf)
        del self.conformer.pos_conv_embed
        self.pretrained = False
        self.checkpoint: str | None = None
        self.eval()

    def train(self, mode: bool = True) -> "MuQEncoder":
        return super().train(False)  # extraction only: see the class docstring

    def front_end(self, wave: Tensor) -> Tensor:
        """[B, k x 960] -> conformer input [B, k, width] (MuQ's normalised log-mel + Conv2d subsampling)."""
        mel = self.preprocessor_melspec_2048(wave)
        return self.conv((mel - self.mel_mean) / self.mel_std)

    @torch.no_grad()
    def forward(self, wave: Tensor) -> EncoderOutputs:
        collected: dict[str, Tensor] = {}
        # transformers 5's bare encoder returns only the last state: hooks collect the two we cache.
        layer = self.conformer.layers[MUQ_FIRST_TAIL_LAYER - 1]  # its output = hidden_states[8]
        hooks = [
            layer.register_forward_hook(lambda _m, _i, out: collected.__setitem__("layer8", out)),
            self.conformer.layer_norm.register_forward_hook(lambda _m, _i, out: collected.__setitem__("final", out)),
        ]
        try:
            self.conformer(self.front_end(wave))
        finally:
            for hook in hooks:
                hook.remove()
        return EncoderOutputs(collected["layer8"], collected["final"])

    def load_checkpoint(self, path_or_state: str | Path | Mapping[str, Tensor]) -> "MuQEncoder":
        """Load a MuQ checkpoint (``model.conv.*`` + ``model.conformer.*``, any prefix), by name.

        Raises MuQCheckpointError (naming the file) listing missing/unexpected keys and shape mismatches.
        The unused positional conv embedding, MuQ's quantiser/heads and other modules are ignored.
        """
        source = str(path_or_state) if isinstance(path_or_state, (str, Path)) else "state dict"
        state = read_state_dict(Path(path_or_state)) if isinstance(path_or_state, (str, Path)) else path_or_state
        try:
            conformer_prefix = find_conformer_prefix(state, MUQ_FIRST_TAIL_LAYER)
        except MuQCheckpointError as e:
            raise MuQCheckpointError(f"{source}: {e}") from None
        base = conformer_prefix[: -len("conformer.")] if conformer_prefix.endswith("conformer.") else None
        if base is None:
            raise MuQCheckpointError(f"{source}: the Conformer sits under {conformer_prefix!r}, not '<prefix>conformer.'")
        ours = {k: v for k, v in self.state_dict().items()}
        mel_keys = {k for k in ours if k.startswith("preprocessor_melspec_2048.")}
        optional = mel_keys | {"conformer.embed_positions.inv_freq"}
        mapped = {
            k[len(base):]: v for k, v in state.items()
            if k.startswith(base) and k[len(base):].startswith(("conv.", "conformer.", "preprocessor_melspec_2048."))
            and not k[len(base):].startswith("conformer.pos_conv_embed.")
        }
        missing = sorted(set(ours) - set(mapped) - optional)
        unexpected = sorted(set(mapped) - set(ours))
        shapes = sorted(
            f"{k}: checkpoint {tuple(mapped[k].shape)} vs encoder {tuple(ours[k].shape)}"
            for k in set(mapped) & set(ours) if mapped[k].shape != ours[k].shape
        )
        if missing or unexpected or shapes:
            parts = []
            if missing:
                parts.append(f"missing {len(missing)}: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
            if unexpected:
                parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:12])}")
            if shapes:
                parts.append(f"shape mismatch (is the encoder config MuQ's?): {'; '.join(shapes[:6])}")
            raise MuQCheckpointError(f"{source} does not fit the MuQ encoder: " + " | ".join(parts))
        for key in sorted(mel_keys & set(mapped)):
            diff = float((mapped[key].float() - ours[key].float()).abs().max())
            log.info("%s: checkpoint's %s differs from ours by at most %.3g (loaded)", source, key, diff)
        self.load_state_dict({**ours, **mapped}, strict=True)
        self.pretrained = True
        self.checkpoint = source
        return self


def read_muq_stat(checkpoint: Path) -> dict[str, float]:
    """MuQ's mel normalisation from a checkpoint folder's config.json (``stat.melspec_2048_mean/std``); {}
    when the checkpoint is a file or the folder has no such config."""
    config = checkpoint / "config.json" if checkpoint.is_dir() else None
    if config is None or not config.is_file():
        return {}
    try:
        raw = json.loads(config.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ExtractionError(f"{config}: not valid JSON ({e})") from None
    stat = raw.get("stat") if isinstance(raw, dict) else None
    if not isinstance(stat, dict) or "melspec_2048_mean" not in stat or "melspec_2048_std" not in stat:
        return {}
    return {"mel_mean": float(stat["melspec_2048_mean"]), "mel_std": float(stat["melspec_2048_std"])}


def checkpoint_weights_file(checkpoint: Path) -> Path:
    """The file :func:`read_state_dict` reads for ``checkpoint`` (itself, or a folder's first weights file)."""
    if checkpoint.is_dir():
        for pattern in ("*.safetensors", "*.bin", "*.pt"):
            found = sorted(checkpoint.glob(pattern))
            if found:
                return found[0]
    return checkpoint


def build_encoder(
    cfg: MuQEncoderConfig | None, muq_checkpoint: str | Path | None, *, allow_random: bool, seed: int
) -> MuQEncoder:
    """The encoder extraction runs: MuQ's weights from ``muq_checkpoint``, else (``allow_random`` only) a
    random MuQ-shaped one seeded by ``seed``. Refuses (ExtractionError) with neither."""
    cfg = cfg or MuQEncoderConfig()
    if muq_checkpoint is None:
        if not allow_random:
            raise ExtractionError(NO_CHECKPOINT_MESSAGE)
        log.warning("random MuQ-shaped encoder (width %d): features are meaningless; tests/demo only",
                    cfg.conformer.width)
    else:
        stat = read_muq_stat(Path(muq_checkpoint).expanduser())
        if stat:
            cfg = cfg.model_copy(update=stat)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
        torch.manual_seed(seed)
        encoder = MuQEncoder(cfg)
    if muq_checkpoint is not None:
        encoder.load_checkpoint(Path(muq_checkpoint).expanduser())
    return encoder


# ---------------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class SegmentIdentity:
    segment_id: str
    piece: str
    passage: str
    performer: str


def segment_identity(path: Path) -> SegmentIdentity:
    """Ids from the file name: PercePiano names give piece / passage / performer; anything else is its own
    piece and passage (performer "unknown")."""
    stem = path.stem.strip()
    try:
        name = parse_segment_name(stem)
    except PercePianoError:
        return SegmentIdentity(stem, stem, stem, "unknown")
    return SegmentIdentity(name.segment_id, name.piece, name.passage, name.performer)


def audio_files(audio_dir: Path) -> list[Path]:
    """Audio files directly in ``audio_dir`` (sorted, so ids and shard order are reproducible)."""
    if not audio_dir.is_dir():
        raise ExtractionError(f"{audio_dir}: audio folder not found")
    files = sorted(p for p in audio_dir.iterdir() if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ExtractionError(f"{audio_dir}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    return files


def label_source(labels: str | Path | Mapping[str, Sequence[float]] | None) -> dict[str, list[float]] | None:
    """``labels``: a PercePiano label JSON (19 ratings + pianist index per key), a mapping id -> 19 floats, or
    None -> {segment_id: 19 floats} or None."""
    if labels is None:
        return None
    if isinstance(labels, (str, Path)):
        return {k: [float(v) for v in ratings] for k, (ratings, _pianist) in read_labels(labels).items()}
    return {str(k).strip(): [float(v) for v in values] for k, values in labels.items()}


def windows(audio: np.ndarray, window_samples: int, path: Path) -> np.ndarray:
    """[n] -> [n // window_samples, window_samples]: whole windows from the start, the partial rest dropped."""
    n_windows = audio.shape[0] // window_samples
    if n_windows == 0:
        raise ExtractionError(
            f"{path}: {audio.shape[0] / MUQ_SAMPLE_RATE:.2f} s is shorter than one window "
            f"({window_samples / MUQ_SAMPLE_RATE:.2f} s); lower --window-seconds"
        )
    return audio[: n_windows * window_samples].reshape(n_windows, window_samples)


def encode_windows(
    encoder: MuQEncoder, wins: np.ndarray, device: torch.device, batch_windows: int
) -> tuple[np.ndarray, np.ndarray]:
    """[n_windows, samples] -> (layer-8 frames, final frames), each [n_windows x window_frames, width] float32.

    Windows are encoded independently (batched for speed), each exactly window_frames long: no padding.
    """
    layer8, final = [], []
    for start in range(0, wins.shape[0], batch_windows):
        batch = torch.from_numpy(np.ascontiguousarray(wins[start : start + batch_windows])).to(device)
        out = encoder(batch)
        layer8.append(out.layer8.float().cpu().reshape(-1, out.layer8.shape[-1]))
        final.append(out.final.float().cpu().reshape(-1, out.final.shape[-1]))
    return torch.cat(layer8).numpy(), torch.cat(final).numpy()


@contextlib.contextmanager
def _progress(enabled: bool, total: int) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("extract"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  TextColumn("{task.description}")) as bar:
        yield (bar, bar.add_task("", total=total))


def augmentation_seed(seed: int, segment_id: str, version: int) -> np.random.Generator:
    """One generator per (seed, file, version): results do not depend on file order or on other files."""
    return np.random.default_rng([seed, zlib.crc32(segment_id.encode()), version])


def augment_until_applied(
    augmentor: WaveformAugmentor, audio: np.ndarray, rng: np.random.Generator, where: Path
) -> tuple[np.ndarray, list[Any]]:
    """The augmentor's output with at least one transform applied (redrawn from ``rng`` otherwise)."""
    for _ in range(MAX_AUGMENT_DRAWS):
        out, applied = augmentor.augment(audio, MUQ_SAMPLE_RATE, rng)
        if applied:
            return out, applied
    raise ExtractionError(f"{where}: no augmentation fired in {MAX_AUGMENT_DRAWS} draws (all probabilities 0?)")


# ---------------------------------------------------------------------------------- extract


def extract(
    audio_dir: str | Path,
    out: str | Path,
    *,
    muq_checkpoint: str | Path | None = None,
    augment: int = 0,
    window_seconds: float = 10.0,
    allow_random: bool = False,
    seed: int = 0,
    tier: str | Tier = "T1",
    labels: str | Path | Mapping[str, Sequence[float]] | None = None,
    progress: bool = True,
    encoder_config: MuQEncoderConfig | None = None,
    augment_config: AugmentConfig | None = None,
    device: str | None = None,
    batch_windows: int = 8,
    overwrite: bool = False,
) -> Path:
    """Extract every audio file in ``audio_dir`` into a pianoray cache at ``out``; returns ``out``.

    Clean files become rows of ``tier`` (T1, or T3 with group = piece); ``labels`` (T1 only) gives each its
    19 PercePiano ratings, and then every file must have one. ``augment`` N adds N T4 twins per file.
    ``encoder_config`` defaults to MuQ's shape; ``device`` to CUDA when available. Raises ExtractionError
    (naming the file) for an unreadable or too-short file, and without ``muq_checkpoint`` unless
    ``allow_random``.
    """
    audio_dir, out = Path(audio_dir).expanduser(), Path(out).expanduser()
    clean_tier = parse_tier(tier)
    if clean_tier not in (Tier.T1, Tier.T3):
        raise ExtractionError(f"tier {clean_tier.name}: extract writes T1 or T3 (T2 needs placements, T4 is --augment)")
    if augment < 0:
        raise ExtractionError(f"augment must be >= 0, got {augment}")
    window_frames = round(window_seconds * FRAME_RATE)
    if window_frames < 1 or not math.isclose(window_frames, window_seconds * FRAME_RATE):
        raise ExtractionError(f"window_seconds {window_seconds}: must be a positive multiple of 1/{FRAME_RATE} s")
    label_map = label_source(labels)
    if label_map is not None and clean_tier is not Tier.T1:
        raise ExtractionError(f"labels are for T1 rows; tier is {clean_tier.name}")
    if label_map is None and clean_tier is Tier.T1:
        log.warning("T1 rows without labels (pianoray validate will list them): pass labels, or tier T3")
    files = audio_files(audio_dir)
    encoder = build_encoder(encoder_config, muq_checkpoint, allow_random=allow_random, seed=seed)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    encoder.to(dev)
    window_samples = window_frames * encoder.cfg.samples_per_frame
    augmentor = WaveformAugmentor(augment_config) if augment else None

    checkpoint_file = None if muq_checkpoint is None else checkpoint_weights_file(Path(muq_checkpoint).expanduser())
    created_by = {
        "tool": "pianoray extract",
        "seed": seed,
        "muq_checkpoint": None if checkpoint_file is None else checkpoint_file.name,
        "muq_checkpoint_sha256": None if checkpoint_file is None else file_sha256(checkpoint_file),
        "random_encoder": muq_checkpoint is None,
        "window_seconds": window_seconds,
        "partial_window": "dropped",
        "augment": augment,
        "encoder": encoder.cfg.model_dump(mode="json"),
    }
    width = encoder.cfg.conformer.width
    label_names = list(PERCEPIANO_DIMS) if label_map is not None else None
    writer = CacheWriter(out, width, window_frames, name=f"extract:{audio_dir.name}", created_by={
        **created_by, "layer": f"hidden_states[{MUQ_LAYER}]", "final_layer_cache": FINAL_DIR,
    }, muq_layer=MUQ_LAYER, label_names=label_names, overwrite=overwrite)
    final_writer = CacheWriter(out / FINAL_DIR, width, window_frames, name=f"extract:{audio_dir.name}:final",
                               created_by={**created_by, "layer": f"hidden_states[{FINAL_LAYER}] (final LayerNorm)"},
                               muq_layer=FINAL_LAYER, label_names=label_names, overwrite=overwrite)
    applied_log: dict[str, list[dict[str, Any]]] = {}

    def add(tier_: Tier, row: dict[str, Any], audio: np.ndarray, path: Path) -> None:
        layer8, final = encode_windows(encoder, windows(audio, window_samples, path), dev, batch_windows)
        writer.add(tier_, row, layer8)
        final_writer.add(tier_, row, final)

    with _progress(progress, len(files) * (1 + augment)) as bar:
        for path in files:
            ident = segment_identity(path)
            try:
                audio = load_mono(path, MUQ_SAMPLE_RATE)
            except ValueError as e:
                raise ExtractionError(str(e)) from None
            row: dict[str, Any] = {
                "segment_id": ident.segment_id, "piece": ident.piece, "passage": ident.passage,
                "performer": ident.performer,
            }
            if clean_tier is Tier.T1 and label_map is not None:
                if ident.segment_id not in label_map:
                    raise ExtractionError(f"{path}: no label for segment {ident.segment_id!r} in the label source")
                row["labels19"] = label_map[ident.segment_id]
            if clean_tier is Tier.T3:
                row["group"] = ident.piece
            add(clean_tier, row, audio, path)
            if bar:
                bar[0].update(bar[1], advance=1, description=path.name)
            for version in range(augment):
                rng = augmentation_seed(seed, ident.segment_id, version)
                noisy, applied = augment_until_applied(augmentor, audio, rng, path)
                twin_id = f"{ident.segment_id}~aug{version}"
                twin = {"segment_id": twin_id, "piece": ident.piece, "passage": ident.passage,
                        "performer": ident.performer, "clean_id": ident.segment_id,
                        "augmentation": "+".join(t.name for t in applied)}
                add(Tier.T4, twin, noisy, path)
                applied_log[twin_id] = [{"name": t.name, "params": t.params} for t in applied]
                if bar:
                    bar[0].update(bar[1], advance=1, description=f"{path.name} (augmented {version + 1}/{augment})")
    if applied_log:
        for root in (out, out / FINAL_DIR):
            write_json_atomic(root / Tier.T4.name / AUGMENTATIONS_FILE, applied_log)
    # final/ first: ROOT's corpus.json (its completion marker) must imply a complete final/.
    final_writer.close()
    return writer.close()
