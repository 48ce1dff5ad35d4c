"""MuQ as a whole (front end + 12-layer conformer), for extracting cached frames from audio.

The front end is reconstructed from MuQ's published source (tencent-ailab/MuQ: ``MelSTFT`` with
torchaudio's MelSpectrogram defaults + ``AmplitudeToDB``, the ``stat`` normalisation, ``Conv2dSubsampling``
of two ``Res2dModule``); torchaudio is not installed here, so the mel is our own STFT + HTK filterbank. It
has not been checked against a real checkpoint (no network): loading one checks every key and shape and
fails listing the mismatches. The conformer is HF's ``Wav2Vec2ConformerEncoder`` with MuQ's config; the
training-time tail (layers 9-12) is :class:`pianoray.models.audio.muq_tail.MuQTail`.
"""

from __future__ import annotations

import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from pianoray.data.cache import FRAME_RATE, MUQ_LAYER
from pianoray.models.audio.muq_tail import (
    MUQ_FIRST_TAIL_LAYER,
    MUQ_N_LAYERS,
    MuQCheckpointError,
    MuQTailConfig,
    check_state_dict_fits,
    find_conformer_prefix,
    read_state_dict,
)

log = logging.getLogger(__name__)

MUQ_SAMPLE_RATE = 24_000



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
        check_state_dict_fits(
            mapped, ours, source=source, target="encoder", config_hint="the encoder config", optional=optional
        )
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
        raise MuQCheckpointError(f"{config}: not valid JSON ({e})") from None
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


