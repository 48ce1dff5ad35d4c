"""The seed's three audio candidates over cached MuQ ``hidden_states[8]`` frames, and their registration.

- **A1** (LoRA multi-task): LoRA on the frozen MuQ tail (layers 9-12) -> pooling -> shared MLP -> z.
- **A2** (staged domain adaptation): A1's model, trained in two stages (:meth:`StagedLoraEncoder.stages`):
  self-supervised (T3+T4, contrastive + invariance), then supervised (T1+T2+T3, every term).
- **A3** (gradual unfreeze): the whole tail trainable, unfrozen from the top (MuQ layer 12, then 11, 10, 9)
  on a schedule, with discriminative learning rates (deeper = smaller).

All read ``batch.inputs["frames"]`` [B, T, W] float and ``batch.inputs["frames_mask"]`` [B, T] bool. The tail's
width must equal the cache's frame width (``DataSpec.frame_width``): the demo preset is 128 wide, real MuQ
caches are 1024 wide (``tail: {width: 1024, heads: 16, ffn: 4096, kernel: 31}``, i.e. ``MuQTailConfig()``).
Without ``muq_checkpoint`` the tail is random-initialised (a warning says so): fine for the demo only.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier
from pianoray.models.audio.lora import LoraSettings, apply_lora
from pianoray.models.audio.muq_tail import MuQTail, MuQTailConfig, load_muq_state_dict
from pianoray.models.contract import PooledEncoder, Stage
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register


class AudioTailConfig(ModelConfig):
    """What every MuQ-tail encoder shares: the tail's shape and where MuQ's weights come from."""

    tail: MuQTailConfig = Field(default_factory=MuQTailConfig.demo)
    muq_checkpoint: Path | None = None  # a MuQ .safetensors/.pt (or a folder holding one); None = random


class LoraEncoderConfig(AudioTailConfig):
    lora: LoraSettings = Field(default_factory=LoraSettings)


class StagedLoraConfig(LoraEncoderConfig):
    # share of the epoch budget spent in the self-supervised stage (the rest is supervised)
    self_supervised_fraction: float = Field(0.3, gt=0, lt=1)


class GradualUnfreezeConfig(AudioTailConfig):
    # Fraction of the epoch budget at which each tail layer unfreezes, from the top (MuQ 12, 11, 10, 9).
    unfreeze_at: tuple[float, ...] = (0.0, 0.15, 0.3, 0.45)
    tail_lr_scale: float = Field(0.1, gt=0, le=1)  # top tail layer's lr relative to the heads' base lr
    lr_decay: float = Field(0.5, gt=0, le=1)  # each layer deeper: lr *= lr_decay

    @model_validator(mode="after")
    def _check_schedule(self) -> "GradualUnfreezeConfig":
        if len(self.unfreeze_at) != self.tail.n_layers:
            raise ValueError(
                f"unfreeze_at has {len(self.unfreeze_at)} entries but tail.n_layers is {self.tail.n_layers}"
            )
        if any(not 0 <= f < 1 for f in self.unfreeze_at):
            raise ValueError(f"unfreeze_at: fractions must lie in [0, 1), got {self.unfreeze_at}")
        if list(self.unfreeze_at) != sorted(self.unfreeze_at):
            raise ValueError(f"unfreeze_at: must be non-decreasing (top layer first), got {self.unfreeze_at}")
        return self


class MuQTailEncoder(PooledEncoder):
    """frames [B, T, W] + frames_mask [B, T] -> MuQ tail [B, T, W] -> (pooling + shared MLP) z [B, 512]."""

    views = ("frames",)

    def __init__(self, cfg: AudioTailConfig, tail: MuQTail) -> None:
        super().__init__(tail.cfg.width, dropout=cfg.dropout)
        self.tail = tail

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        frames, mask = batch.inputs["frames"], batch.inputs["frames_mask"]
        if frames.shape[-1] != self.token_dim:
            raise ValueError(
                f"batch.inputs['frames'] is {frames.shape[-1]} wide but the MuQ tail expects {self.token_dim}"
            )
        return self.tail(frames, mask), mask


class LoraEncoder(MuQTailEncoder):
    """A1: LoRA adapters on the frozen tail's attention projections; pooling + shared MLP train fully."""

    def __init__(self, cfg: LoraEncoderConfig, tail: MuQTail) -> None:
        super().__init__(cfg, apply_lora(tail, cfg.lora))


class StagedLoraEncoder(LoraEncoder):
    """A2: A1's model with a two-stage plan the training loop runs in order."""

    def __init__(self, cfg: StagedLoraConfig, tail: MuQTail) -> None:
        super().__init__(cfg, tail)
        self.self_supervised_fraction = cfg.self_supervised_fraction

    def stages(self, total_epochs: int) -> list[Stage]:
        """[self_supervised (T3+T4; contrastive, invariance; not used for model selection),
        supervised (T1+T2+T3; every term)], epochs summing to ``total_epochs``.

        A budget of one epoch cannot hold two stages: it is all supervised.
        """
        if total_epochs < 1:
            raise ValueError(f"A2 needs a budget of at least 1 epoch, got {total_epochs}")
        supervised_tiers = (Tier.T1, Tier.T2, Tier.T3)
        if total_epochs == 1:
            return [Stage("supervised", 1, tiers=supervised_tiers)]
        first = min(total_epochs - 1, max(1, round(total_epochs * self.self_supervised_fraction)))
        return [
            Stage(
                "self_supervised",
                first,
                tiers=(Tier.T3, Tier.T4),
                terms=frozenset({"contrastive", "invariance"}),
                select=False,
            ),
            Stage("supervised", total_epochs - first, tiers=supervised_tiers, terms=None),
        ]


class GradualUnfreezeEncoder(MuQTailEncoder):
    """A3: every tail parameter is trainable eventually; layers unfreeze top-down on a schedule.

    Tail layer j (0-based; MuQ layer 9 + j) sits at depth d = n_layers - 1 - j from the top. It unfreezes at
    epoch ``floor(unfreeze_at[d] * total_epochs)`` and trains at ``base_lr * tail_lr_scale * lr_decay**d``.
    The final LayerNorm goes with the top layer. Pooling and the shared MLP train from the start at base_lr.
    """

    def __init__(self, cfg: GradualUnfreezeConfig, tail: MuQTail) -> None:
        super().__init__(cfg, tail)
        self.unfreeze_at = cfg.unfreeze_at
        self.tail_lr_scale = cfg.tail_lr_scale
        self.lr_decay = cfg.lr_decay
        # Before the loop says the budget: the blocks scheduled at fraction 0 train, the rest wait.
        self._set_unfrozen_depth(sum(1 for f in self.unfreeze_at if f == 0.0))

    def tail_blocks(self) -> list[nn.Module]:
        """Tail blocks from the top down: [layers[-1] + final layer_norm, layers[-2], ..., layers[0]]."""
        layers = list(self.tail.layers)
        return [nn.ModuleList([layers[-1], self.tail.layer_norm]), *reversed(layers[:-1])]

    def unfrozen_depth(self, epoch: int, total_epochs: int) -> int:
        """How many tail blocks (from the top) train at 0-based ``epoch`` of ``total_epochs``."""
        return sum(1 for f in self.unfreeze_at if epoch >= math.floor(f * total_epochs))

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Set requires_grad for 0-based ``epoch``; stateless, so a resumed run lands on the same state."""
        self._set_unfrozen_depth(self.unfrozen_depth(epoch, total_epochs))

    def _set_unfrozen_depth(self, depth: int) -> None:
        for d, block in enumerate(self.tail_blocks()):
            block.requires_grad_(d < depth)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        """Every parameter from the start (frozen ones get no gradient, so AdamW skips them until they
        unfreeze), one group per tail block with its discriminative lr, plus pooling + shared MLP."""
        groups: list[dict[str, Any]] = [
            {"params": [*self.pool.parameters(), *self.shared.parameters()], "lr": base_lr, "name": "head"}
        ]
        for d, block in enumerate(self.tail_blocks()):
            groups.append(
                {
                    "params": list(block.parameters()),
                    "lr": base_lr * self.tail_lr_scale * self.lr_decay**d,
                    "name": f"tail_depth{d}",
                }
            )
        return groups


def build_tail(cfg: AudioTailConfig, data: DataSpec, experiment: str) -> MuQTail:
    """The MuQ tail for ``experiment``: shape checked against the cache, MuQ weights loaded if given."""
    if data.frame_width is None:
        raise ValueError(f"{experiment} needs cached MuQ frames, but the corpus has none")
    if cfg.tail.width != data.frame_width:
        raise ValueError(
            f"{experiment}: model.tail.width is {cfg.tail.width} but the cache's frames are {data.frame_width} "
            "wide; set model.tail to match (real MuQ caches: width 1024, heads 16, ffn 4096, kernel 31)"
        )
    tail = MuQTail(cfg.tail)
    if cfg.muq_checkpoint is not None:
        load_muq_state_dict(tail, cfg.muq_checkpoint)
    else:
        tail.warn_if_random()
    return tail


def _build_a1(cfg: LoraEncoderConfig, data: DataSpec) -> LoraEncoder:
    return LoraEncoder(cfg, build_tail(cfg, data, "A1"))


def _build_a2(cfg: StagedLoraConfig, data: DataSpec) -> StagedLoraEncoder:
    return StagedLoraEncoder(cfg, build_tail(cfg, data, "A2"))


def _build_a3(cfg: GradualUnfreezeConfig, data: DataSpec) -> GradualUnfreezeEncoder:
    return GradualUnfreezeEncoder(cfg, build_tail(cfg, data, "A3"))


A1 = register(
    EncoderSpec(
        name="A1",
        track="audio",
        role="candidate",
        config_cls=LoraEncoderConfig,
        build=_build_a1,
        views=LoraEncoder.views,
        description="MuQ layers 9-12 + LoRA on q/k/v/out, multi-task",
    )
)
A2 = register(
    EncoderSpec(
        name="A2",
        track="audio",
        role="candidate",
        config_cls=StagedLoraConfig,
        build=_build_a2,
        views=StagedLoraEncoder.views,
        description="A1's model, staged: self-supervised (T3+T4) then supervised (T1+T2+T3)",
    )
)
A3 = register(
    EncoderSpec(
        name="A3",
        track="audio",
        role="candidate",
        config_cls=GradualUnfreezeConfig,
        build=_build_a3,
        views=GradualUnfreezeEncoder.views,
        description="MuQ layers 9-12 fully fine-tuned, unfrozen 12 -> 9, discriminative lrs",
    )
)
