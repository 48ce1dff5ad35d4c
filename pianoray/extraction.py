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

import logging
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from pianoray.data.augment import AUDIO_SUFFIXES, AugmentConfig, WaveformAugmentor, load_mono
from pianoray.data.cache import FRAME_RATE, MUQ_LAYER, CacheWriter, write_json_atomic
from pianoray.data.midi import file_sha256
from pianoray.data.percepiano import PERCEPIANO_DIMS, PercePianoError, parse_segment_name, read_labels
from pianoray.data.tiers import Tier, parse_tier
from pianoray.errors import PianorayError
from pianoray.feedback import Feedback, or_default
from pianoray.models.audio.muq_encoder import (
    MUQ_SAMPLE_RATE,
    MuQEncoder,
    MuQEncoderConfig,
    checkpoint_weights_file,
    read_muq_stat,
)
from pianoray.models.audio.muq_tail import MUQ_N_LAYERS

log = logging.getLogger(__name__)

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


class ExtractionError(PianorayError, ValueError):
    """Extraction cannot go on; the message names the file (or option) at fault."""


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
    feedback: Feedback | None = None,
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
    ``allow_random``. ``feedback`` shows progress per file (None: logged).
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
        or_default(feedback).warn("T1 rows without labels (pianoray validate will list them): pass labels, or tier T3")
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

    with or_default(feedback).progress("extract", len(files) * (1 + augment)) as advance:
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
            advance(1, path.name)
            for version in range(augment):
                rng = augmentation_seed(seed, ident.segment_id, version)
                noisy, applied = augment_until_applied(augmentor, audio, rng, path)
                twin_id = f"{ident.segment_id}~aug{version}"
                twin = {"segment_id": twin_id, "piece": ident.piece, "passage": ident.passage,
                        "performer": ident.performer, "clean_id": ident.segment_id,
                        "augmentation": "+".join(t.name for t in applied)}
                add(Tier.T4, twin, noisy, path)
                applied_log[twin_id] = [{"name": t.name, "params": t.params} for t in applied]
                advance(1, f"{path.name} (augmented {version + 1}/{augment})")
    if applied_log:
        for root in (out, out / FINAL_DIR):
            write_json_atomic(root / Tier.T4.name / AUGMENTATIONS_FILE, applied_log)
    # final/ first: ROOT's corpus.json (its completion marker) must imply a complete final/.
    final_writer.close()
    return writer.close()
