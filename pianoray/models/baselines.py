"""The two reference baselines, one per track, so both tracks exist before the seed's seven encoders.

- ``audio-frozen``: attention pooling + the shared MLP over the cached (frozen) MuQ frames: the seed's
  frozen-MuQ probe. Nothing of MuQ is trained.
- ``symbolic-features``: per-note features of the performance MIDI (the ``notes`` view), a per-note
  projection, then pooling + the shared MLP.

Both are ``role="reference"``: trained and reported, never a track's leader nor a winner. A candidate
is worth its cost only if it beats them.
"""

from __future__ import annotations

from pydantic import Field
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.models.contract import PooledEncoder
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register


class FrozenProbeConfig(ModelConfig):
    pass


class FrozenProbe(PooledEncoder):
    """frames [B,T,W] (frozen MuQ features) -> pooling -> z [B,512]. The features themselves never change."""

    views = ("frames",)

    def __init__(self, cfg: FrozenProbeConfig, width: int) -> None:
        super().__init__(width, dropout=cfg.dropout)

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return batch.inputs["frames"], batch.inputs["frames_mask"]


class NoteFeaturesConfig(ModelConfig):
    hidden: int = Field(128, ge=8)


class NoteFeaturesEncoder(PooledEncoder):
    """notes [B,L,F] (hand-made per-note features) -> per-note MLP [B,L,H] -> pooling -> z [B,512]."""

    views = ("notes",)

    def __init__(self, cfg: NoteFeaturesConfig, n_features: int) -> None:
        super().__init__(cfg.hidden, dropout=cfg.dropout)
        self.embed = nn.Sequential(
            nn.Linear(n_features, cfg.hidden), nn.GELU(), nn.Linear(cfg.hidden, cfg.hidden)
        )

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return self.embed(batch.inputs["notes"]), batch.inputs["notes_mask"]


def _build_probe(cfg: FrozenProbeConfig, data: DataSpec) -> FrozenProbe:
    if data.frame_width is None:
        raise ValueError("audio-frozen needs cached frames, but the corpus has none")
    return FrozenProbe(cfg, data.frame_width)


def _build_notes(cfg: NoteFeaturesConfig, data: DataSpec) -> NoteFeaturesEncoder:
    from pianoray.data.loaders import NOTE_FEATURES  # the notes view's feature list

    return NoteFeaturesEncoder(cfg, len(NOTE_FEATURES))


register(
    EncoderSpec(
        name="audio-frozen",
        track="audio",
        role="reference",
        config_cls=FrozenProbeConfig,
        build=_build_probe,
        views=FrozenProbe.views,
        description="frozen MuQ probe: pooling + MLP over cached frames",
    )
)
register(
    EncoderSpec(
        name="symbolic-features",
        track="symbolic",
        role="reference",
        config_cls=NoteFeaturesConfig,
        build=_build_notes,
        views=NoteFeaturesEncoder.views,
        description="per-note MIDI features, pooled + MLP",
    )
)
