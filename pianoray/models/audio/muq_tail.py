"""The top of MuQ that the audio candidates adapt: rotary positions + Conformer layers 9-12 + final LayerNorm.

The frame cache holds MuQ's ``hidden_states[8]`` (the input to its 9th Conformer layer), so every audio
candidate runs only the last four layers, the ones LoRA / unfreezing touch. Built from HF's own
``Wav2Vec2ConformerEncoderLayer`` so that a real MuQ state dict loads by name and reproduces MuQ's
``hidden_states[12]`` (after the encoder's final LayerNorm) exactly; ``tests/models/audio/test_muq_tail.py``
checks that against HF's full encoder.

Traps this module handles (measured, see DESIGN.md):
- the conv module's BatchNorm must keep MuQ's running statistics: ``train()`` keeps every BatchNorm in eval,
  also when a wrapper (peft, the encoder, the training loop) calls ``train()``;
- the conv module ignores the padding mask: fixed-length windows without padding are what the cache holds;
  padded frames still leak into valid frames within the depthwise kernel's reach (as in MuQ itself);
- MuQ checkpoints nest the encoder under ``model.conformer.``; :func:`load_muq_state_dict` finds the prefix.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn
from transformers import Wav2Vec2ConformerConfig
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoderLayer

from pianoray.errors import PianorayError

log = logging.getLogger(__name__)

# MuQ runs 12 Conformer layers; the cache holds the input of layer index 8 (0-based), the tail runs 8..11.
MUQ_N_LAYERS = 12
MUQ_FIRST_TAIL_LAYER = 8


class MuQTailConfig(BaseModel):
    """Shape of the tail. Defaults are MuQ's conformer (confirm against a real MuQ config.json)."""

    model_config = ConfigDict(extra="forbid")

    width: int = Field(1024, ge=8)
    heads: int = Field(16, ge=1)
    ffn: int = Field(4096, ge=8)
    kernel: int = Field(31, ge=1)  # depthwise conv kernel; odd ("same" padding)
    n_layers: int = Field(4, ge=1, le=MUQ_N_LAYERS)
    rotary_base: int = Field(10000, gt=0)
    eps: float = Field(1e-5, gt=0)  # the final LayerNorm's eps (the layers' own LayerNorms use 1e-5 in HF)
    hidden_dropout: float = Field(0.1, ge=0, lt=1)
    activation_dropout: float = Field(0.1, ge=0, lt=1)
    attention_dropout: float = Field(0.1, ge=0, lt=1)
    conv_dropout: float = Field(0.1, ge=0, lt=1)
    activation: str = "swish"
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"

    @model_validator(mode="after")
    def _check_shape(self) -> "MuQTailConfig":
        if self.width % self.heads:
            raise ValueError(f"tail.width ({self.width}) must be divisible by tail.heads ({self.heads})")
        if (self.width // self.heads) % 2:
            raise ValueError(f"tail head size width/heads = {self.width // self.heads} must be even (rotary)")
        if self.kernel % 2 == 0:
            raise ValueError(f"tail.kernel ({self.kernel}) must be odd (the conv module pads 'same')")
        return self

    @classmethod
    def demo(cls, **overrides: object) -> "MuQTailConfig":
        """A narrow, short tail that trains in minutes on a laptop CPU (random weights, demo only)."""
        values: dict[str, object] = {"width": 128, "heads": 4, "ffn": 256, "kernel": 7}
        values.update(overrides)
        return cls(**values)

    def hf_config(self) -> Wav2Vec2ConformerConfig:
        """The HF config the layers are built from (only the fields an encoder layer reads matter)."""
        return Wav2Vec2ConformerConfig(
            hidden_size=self.width,
            num_attention_heads=self.heads,
            intermediate_size=self.ffn,
            conv_depthwise_kernel_size=self.kernel,
            num_hidden_layers=self.n_layers,
            position_embeddings_type="rotary",
            rotary_embedding_base=self.rotary_base,
            layer_norm_eps=self.eps,
            hidden_act=self.activation,
            hidden_dropout=self.hidden_dropout,
            activation_dropout=self.activation_dropout,
            attention_dropout=self.attention_dropout,
            conformer_conv_dropout=self.conv_dropout,
            layerdrop=0.0,
            attn_implementation=self.attn_implementation,
        )


class RotaryEmbedding(nn.Module):
    """MuQ's rotary table (HF ``Wav2Vec2ConformerRotaryPositionalEmbedding``) without its cache.

    HF caches the table per sequence length and never invalidates it on ``.to(device)`` or a dtype change
    under autocast; recomputing it is a few microseconds. ``inv_freq`` keeps HF's name so state dicts load.

    forward: hidden [B, T, W] -> [2, T, 1, 1, head_dim] (cos, sin) in hidden's dtype.
    """

    def __init__(self, head_dim: int, base: float) -> None:
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)

    def forward(self, hidden: Tensor) -> Tensor:
        steps = torch.arange(hidden.shape[1], device=self.inv_freq.device).type_as(self.inv_freq)
        freqs = steps[:, None] * self.inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)
        return torch.stack([emb.cos()[:, None, None, :], emb.sin()[:, None, None, :]]).type_as(hidden)


class MuQTail(nn.Module):
    """hidden_states[8] frames [B, T, W] (+ mask [B, T] bool, True = real) -> hidden_states[12] [B, T, W].

    Parameter names match MuQ's encoder after renumbering (``layers.{j}`` = MuQ ``layers.{8+j}``,
    ``layer_norm``, ``embed_positions.inv_freq``). Random-initialised unless a MuQ state dict is loaded.
    """

    def __init__(self, cfg: MuQTailConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.hf_config = cfg.hf_config()
        self.embed_positions = RotaryEmbedding(cfg.width // cfg.heads, cfg.rotary_base)
        self.layers = nn.ModuleList(Wav2Vec2ConformerEncoderLayer(self.hf_config) for _ in range(cfg.n_layers))
        self.layer_norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.pretrained = False  # set by load_muq_state_dict

    def forward(self, frames: Tensor, mask: Tensor | None = None) -> Tensor:
        # Padded positions are masked as attention keys only. HF's encoder zeroes them once, before layer 1;
        # re-zeroing here would change valid frames through the conv module (it ignores the mask) and break
        # equivalence with MuQ's hidden_states[12].
        hidden = frames
        attn_mask = create_bidirectional_mask(config=self.hf_config, inputs_embeds=hidden, attention_mask=mask)
        rotary = self.embed_positions(hidden)
        for layer in self.layers:
            hidden = layer(hidden, attention_mask=attn_mask, relative_position_embeddings=rotary)
        return self.layer_norm(hidden)

    def train(self, mode: bool = True) -> "MuQTail":
        # requires_grad_(False) does not stop BatchNorm's running stats; MuQ's statistics must stay put,
        # whether the tail is frozen (A1/A2) or fine-tuned (A3) on far fewer, smaller batches.
        super().train(mode)
        for module in self.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        return self

    def warn_if_random(self) -> None:
        """Say once per process (Round 3 builds an audio winner per fusion and fold) that this tail is random."""
        key = (self.cfg.width, self.cfg.n_layers)
        if not self.pretrained and key not in _WARNED_RANDOM:
            _WARNED_RANDOM.add(key)
            log.warning(
                "random-initialised MuQ tail: demo only (width %d, %d layers); give muq_checkpoint for real use",
                self.cfg.width,
                self.cfg.n_layers,
            )


_WARNED_RANDOM: set[tuple[int, int]] = set()


class MuQCheckpointError(PianorayError, ValueError):
    """A MuQ checkpoint that does not fit the tail (names the file and the offending keys)."""


def read_state_dict(path: Path) -> dict[str, Tensor]:
    """A state dict from ``*.safetensors``, a torch file (``*.pt``/``*.bin``/``*.ckpt``) or a folder holding one."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors")) + sorted(path.glob("*.bin")) + sorted(path.glob("*.pt"))
        if not candidates:
            raise MuQCheckpointError(f"{path}: folder holds no *.safetensors, *.bin or *.pt checkpoint")
        path = candidates[0]
    if not path.is_file():
        raise MuQCheckpointError(f"{path}: MuQ checkpoint not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a file that is no checkpoint fails deep in a (un)pickler or safetensors' parser
        raise MuQCheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e!s:.200})") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise MuQCheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj


def find_conformer_prefix(state_dict: Mapping[str, Tensor], first_layer: int = MUQ_FIRST_TAIL_LAYER) -> str:
    """The key prefix under which the Conformer encoder sits (MuQ: ``model.conformer.``; a bare encoder: '')."""
    pattern = re.compile(rf"^(.*?)layers\.{first_layer}\.self_attn\.linear_q\.weight$")
    prefixes = sorted({m.group(1) for k in state_dict if (m := pattern.match(k))})
    prefixes = [p for p in prefixes if f"{p}layer_norm.weight" in state_dict]
    if len(prefixes) != 1:
        found = ", ".join(repr(p) for p in prefixes) or "none"
        raise MuQCheckpointError(
            f"cannot locate a Conformer encoder with layers.{first_layer} and a final layer_norm "
            f"(candidate prefixes: {found}); pass prefix= explicitly"
        )
    return prefixes[0]


def remap_muq_state_dict(
    state_dict: Mapping[str, Tensor],
    n_layers: int = 4,
    prefix: str | None = None,
    first_layer: int = MUQ_FIRST_TAIL_LAYER,
) -> dict[str, Tensor]:
    """MuQ encoder keys -> tail keys: ``{prefix}layers.{first+j}.*`` -> ``layers.{j}.*``, plus
    ``{prefix}layer_norm.*`` and ``{prefix}embed_positions.inv_freq``. Everything else is dropped."""
    if prefix is None:
        prefix = find_conformer_prefix(state_dict, first_layer)
    out: dict[str, Tensor] = {}
    layer_key = re.compile(rf"^{re.escape(prefix)}layers\.(\d+)\.(.+)$")
    for key, value in state_dict.items():
        if m := layer_key.match(key):
            j = int(m.group(1)) - first_layer
            if 0 <= j < n_layers:
                out[f"layers.{j}.{m.group(2)}"] = value
        elif key.startswith(f"{prefix}layer_norm.") or key == f"{prefix}embed_positions.inv_freq":
            out[key[len(prefix) :]] = value
    return out


def check_state_dict_fits(
    mapped: Mapping[str, Tensor],
    expected: Mapping[str, Tensor],
    *,
    source: str,
    target: str,
    config_hint: str,
    optional: set[str] | frozenset[str] = frozenset(),
) -> None:
    """Raise MuQCheckpointError, naming ``source``, if the remapped checkpoint ``mapped`` does not fit the
    module's own state dict ``expected``: missing keys (bar ``optional``), unexpected keys, or shapes that
    differ. ``target`` names the module ("tail", "encoder"); ``config_hint`` the config that sets its shapes."""
    missing = sorted(set(expected) - set(mapped) - set(optional))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = sorted(
        f"{k}: checkpoint {tuple(mapped[k].shape)} vs {target} {tuple(expected[k].shape)}"
        for k in set(mapped) & set(expected)
        if mapped[k].shape != expected[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {', '.join(missing[:12])}{' ...' if len(missing) > 12 else ''}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {', '.join(unexpected[:12])}")
        if shapes:
            parts.append(f"shape mismatch (is {config_hint} MuQ's?): {'; '.join(shapes[:6])}")
        raise MuQCheckpointError(f"{source} does not fit the MuQ {target}: " + " | ".join(parts))


def load_muq_state_dict(
    tail: MuQTail,
    state_dict_or_path: Mapping[str, Tensor] | str | Path,
    prefix: str | None = None,
) -> MuQTail:
    """Load MuQ's conformer layers 8..11 (renumbered 0..3) and final LayerNorm into ``tail``, by name.

    Raises MuQCheckpointError listing missing / unexpected keys or mismatched shapes. ``inv_freq`` may be
    absent (older checkpoints keep it non-persistent); it is then checked to be recomputable, not loaded.
    """
    source = str(state_dict_or_path) if isinstance(state_dict_or_path, (str, Path)) else "state dict"
    state_dict = (
        read_state_dict(Path(state_dict_or_path))
        if isinstance(state_dict_or_path, (str, Path))
        else state_dict_or_path
    )
    try:
        mapped = remap_muq_state_dict(state_dict, tail.cfg.n_layers, prefix)
    except MuQCheckpointError as e:
        raise MuQCheckpointError(f"{source}: {e}") from None
    check_state_dict_fits(
        mapped,
        tail.state_dict(),
        source=source,
        target="tail",
        config_hint="tail.width/heads/ffn/kernel",
        optional={"embed_positions.inv_freq"},
    )
    tail.load_state_dict(mapped, strict="embed_positions.inv_freq" in mapped)
    tail.pretrained = True
    return tail
