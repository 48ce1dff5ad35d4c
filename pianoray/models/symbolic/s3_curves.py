"""S3: multi-scale 1D-CNN + Transformer over continuous MIDI curves, pretrained wav2vec-2.0-style.

Input view ``curves``: ``inputs["curves"]`` float [B, T, C] (C = 8 channels at 25 frames/s, see
``pianoray.data.symbolic.curves``), ``inputs["curves_mask"]`` bool [B, T].

Model (the seed's "most analogous to MuQ"):
  curves [B, T, C] -> three parallel Conv1d branches (kernels 3, 7, 15 frames = 120/280/600 ms; GELU)
  -> concat [B, T, 3 * branch_channels] -> Linear + LayerNorm -> frame features [B, T, D]
  -> + convolutional position embedding (wav2vec 2.0's grouped conv: relative, any length)
  -> pre-LN Transformer (key padding mask from curves_mask) -> LayerNorm -> tokens [B, T, D]
  -> attention pooling + shared MLP -> z [B, 512] (PooledEncoder).

Pretraining (:class:`CurveContrastiveTask`, pure pieces in ``pianoray.models.symbolic.contrastive``):
spans of frame features are replaced by a learned mask embedding before the Transformer; at each masked
frame a projection of the context must pick the frame's own CNN feature among K features of other masked
frames of the same sequence (cosine / temperature, cross-entropy).

Targets are the CNN features with the gradient stopped (no quantiser). Why: if the targets also received
gradients, the CNN could lower the loss by making every frame's feature alike and the context trivially
"right" (wav2vec 2.0 prevents that collapse with a Gumbel quantiser plus a codebook-diversity penalty).
Stopping the gradient removes that shortcut at no cost: the CNN still learns through the context path
(unmasked frames), and the targets follow it. Curves are 8 smooth channels, not raw audio, so a
discrete codebook would add tuning knobs for little gain. Exactly identical targets (silent frames) are
not used as negatives (``contrastive_logits``).

Sizes: the demo default (0.65M parameters) trains in seconds on a CPU; ``S3Config.full()``
(branch 128, 512 wide, 8 layers x 8 heads) has 28.1M parameters (checked in the tests).
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.models.contract import Encoder, PooledEncoder
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register
from pianoray.models.symbolic.contrastive import (
    contrastive_logits,
    contrastive_loss,
    sample_negatives,
    sample_span_mask,
)

KERNELS = (3, 7, 15)  # the seed's multi-scale CNN


class S3PretrainConfig(BaseModel):
    """wav2vec-style pretraining knobs (part of the encoder config, hence of the pretraining cache key)."""

    model_config = ConfigDict(extra="forbid")
    mask_prob: float = Field(0.5, gt=0, le=1, description="fraction of valid frames covered by spans (pre-overlap)")
    span: int = Field(10, ge=1, description="frames per masked span (10 = 400 ms at 25 fps)")
    negatives: int = Field(20, ge=1, description="distractors per masked frame (wav2vec 2.0: 100)")
    temperature: float = Field(0.1, gt=0)


class S3Config(ModelConfig):
    """S3 sizes. Defaults are the demo; :meth:`full` is the seed-sized model."""

    channels: int = Field(8, ge=1, description="curve channels (CURVE_CHANNELS)")
    branch_channels: int = Field(32, ge=1, description="output channels of each Conv1d branch")
    d_model: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn: int = Field(256, ge=8)
    position_kernel: int = Field(31, ge=3, description="odd width of the conv position embedding (frames)")
    position_groups: int = Field(16, ge=1)
    pretrain: S3PretrainConfig = S3PretrainConfig()

    @model_validator(mode="after")
    def _shapes(self) -> "S3Config":
        if self.d_model % self.heads:
            raise ValueError(f"S3Config: d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        if self.d_model % self.position_groups:
            raise ValueError(f"S3Config: d_model ({self.d_model}) must be divisible by position_groups ({self.position_groups})")
        if self.position_kernel % 2 == 0:
            raise ValueError(f"S3Config: position_kernel must be odd, got {self.position_kernel}")
        return self

    @classmethod
    def full(cls, **overrides: Any) -> "S3Config":
        return cls.model_validate({**FULL, **overrides})


# Seed-sized S3 (28.1M parameters, comparable to S1's full preset); position kernel 127 frames = 5 s.
FULL: dict[str, Any] = {
    "branch_channels": 128, "d_model": 512, "layers": 8, "heads": 8, "ffn": 2048,
    "position_kernel": 127, "pretrain": {"negatives": 100},
}


class MultiScaleConv(nn.Module):
    """curves [B, T, C] -> frame features [B, T, D]: Conv1d branches with kernels 3/7/15, concat, project.

    Padding frames are zeroed first so that a padded batch gives valid frames the same features as the
    sequence alone (zero padding = the convolution's own border)."""

    def __init__(self, channels: int, branch_channels: int, d_model: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, branch_channels, k, padding=k // 2), nn.GELU()) for k in KERNELS
        )
        self.project = nn.Sequential(nn.Linear(branch_channels * len(KERNELS), d_model), nn.LayerNorm(d_model))

    def forward(self, curves: Tensor, mask: Tensor) -> Tensor:
        x = (curves * mask[..., None]).transpose(1, 2)  # [B, C, T]
        y = torch.cat([branch(x) for branch in self.branches], dim=1)  # [B, 3c, T]
        return self.project(y.transpose(1, 2))


class ConvPositionEmbedding(nn.Module):
    """wav2vec 2.0's relative position embedding: x + GELU(grouped Conv1d(x)); [B, T, D] -> [B, T, D]."""

    def __init__(self, d_model: int, kernel: int, groups: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(d_model, d_model, kernel, padding=kernel // 2, groups=groups)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        x = x * mask[..., None]
        return x + nn.functional.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)


class CurveEncoder(PooledEncoder):
    """curves [B, T, C] -> tokens [B, T, D] -> z [B, 512]."""

    views = ("curves",)

    def __init__(self, cfg: S3Config) -> None:
        super().__init__(cfg.d_model, dropout=cfg.dropout)
        self.cfg = cfg
        self.features = MultiScaleConv(cfg.channels, cfg.branch_channels, cfg.d_model)
        self.mask_embedding = nn.Parameter(torch.empty(cfg.d_model).uniform_())  # as wav2vec 2.0
        self.position = ConvPositionEmbedding(cfg.d_model, cfg.position_kernel, cfg.position_groups)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)

    def frame_features(self, curves: Tensor, mask: Tensor) -> Tensor:
        """curves [B, T, C], mask [B, T] -> CNN features [B, T, D] (the pretraining targets)."""
        if curves.dim() != 3 or curves.shape[-1] != self.cfg.channels:
            raise ValueError(f"S3: curves must be [B, T, {self.cfg.channels}] (S3Config.channels), got {tuple(curves.shape)}")
        return self.features(curves, mask.bool())

    def contextualise(self, features: Tensor, mask: Tensor, masked: Tensor | None = None) -> Tensor:
        """features [B, T, D] -> context [B, T, D]; frames where ``masked`` [B, T] is True see only the mask embedding."""
        mask = mask.bool()
        if masked is not None:
            features = torch.where(masked[..., None], self.mask_embedding.to(features.dtype), features)
        x = self.position(features, mask)
        # A row with no valid frame would make attention softmax over nothing (NaN): let it see frame 0;
        # pooling still ignores it through ``mask``.
        attend = mask.clone()
        attend[:, 0] |= ~attend.any(1)
        return self.norm(self.transformer(x, src_key_padding_mask=~attend))

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        curves, mask = batch.inputs["curves"], batch.inputs["curves_mask"]
        return self.contextualise(self.frame_features(curves, mask), mask), mask


class CurveContrastiveTask:
    """The S3 ``PretrainTask``: masked-span contrastive prediction of CNN frame features."""

    name = "s3-contrastive"
    views = ("curves",)

    def __init__(self, cfg: S3Config) -> None:
        self.cfg = cfg

    def build_heads(self, encoder: Encoder) -> nn.Module:
        # wav2vec 2.0's final_proj: maps context into the target space before the cosine.
        return nn.Linear(_as_s3(encoder).cfg.d_model, _as_s3(encoder).cfg.d_model)

    def loss(
        self, encoder: Encoder, heads: nn.Module, inputs: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        enc = _as_s3(encoder)
        pc = self.cfg.pretrain
        curves, valid = inputs["curves"], inputs["curves_mask"].bool()
        features = enc.frame_features(curves, valid)
        masked = sample_span_mask(valid.shape[1], pc.mask_prob, pc.span, generator, valid)
        negatives = sample_negatives(pc.negatives, masked, generator)
        context = heads(enc.contextualise(features, valid, masked))
        targets = features.detach()  # stop-gradient targets: see the module docstring
        logits = contrastive_logits(context, targets, negatives, pc.temperature)
        loss, accuracy = contrastive_loss(logits, negatives)
        spread = float(targets[valid].std(0).mean()) if bool(valid.any()) else 0.0
        return loss, {
            "contrastive": float(loss.detach()),
            "accuracy": float(accuracy),
            "masked_fraction": float(masked.sum() / valid.sum().clamp(min=1)),
            "target_std": spread,  # falls toward 0 if the features collapse
        }


def _as_s3(encoder: Encoder) -> CurveEncoder:
    if not isinstance(encoder, CurveEncoder):
        raise TypeError(f"the s3-contrastive pretraining task needs a CurveEncoder, got {type(encoder).__name__}")
    return encoder


def build_s3(cfg: S3Config, data: DataSpec) -> CurveEncoder:
    return CurveEncoder(cfg)


register(
    EncoderSpec(
        name="S3",
        track="symbolic",
        role="candidate",
        config_cls=S3Config,
        build=build_s3,
        views=CurveEncoder.views,
        description="multi-scale 1D-CNN + Transformer over MIDI curves, wav2vec-style pretraining",
        pretrain=lambda cfg: CurveContrastiveTask(cfg),
    )
)
