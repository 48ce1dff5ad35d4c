"""The shared pipeline and the encoder contract.

Seed pipeline: sequence [B, T, D] -> attention pooling [B, D] -> shared encoder (2-layer MLP + LayerNorm)
-> z [B, 512] -> per-dimension ranking heads and a sigmoid regression head, N dimensions each; optionally
(Round 3 by default) an auxiliary difficulty head, z -> the piece's difficulty grade scaled to [0, 1].

Every encoder (audio, symbolic, fusion) implements ``encode(batch) -> EncoderOutput(tokens, mask, z)``:
the sequence is kept (not only z) so that a fusion module can attend over the other modality's tokens.
Subclass :class:`PooledEncoder` and implement ``sequence(batch)``; pooling and the shared encoder come
with it. An encoder may also give each label dimension its own representation (``z_dims``, F3's gated
fusion): the heads of dimension d then read ``z_dims[:, d]`` instead of the shared z, with the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier

Z_DIM = 512


class EncoderOutput(NamedTuple):
    """tokens: [B, T, D] float; mask: [B, T] bool (True = real); z: [B, 512] float (what the contrastive and
    invariance losses compare); z_dims: [B, N, 512], one representation per label dimension for its heads,
    or None when every dimension's heads read z."""

    tokens: Tensor
    mask: Tensor
    z: Tensor
    z_dims: Tensor | None = None


class ModelOutput(NamedTuple):
    """z: [B, 512]; scores: [B, N] ranking-head scores (unbounded); regression: [B, N] in (0, 1);
    tokens / mask: the encoder's sequence, for fusion and diagnostics; difficulty: [B] in (0, 1), the difficulty
    head's grade (scaled as ``Batch.difficulty``), or None for a model without one."""

    z: Tensor
    scores: Tensor
    regression: Tensor
    tokens: Tensor
    mask: Tensor
    difficulty: Tensor | None = None


class AttentionPooling(nn.Module):
    """Masked attention pooling: [B, T, D] + mask [B, T] -> [B, D].

    A learned query scores each position; padded positions get -inf before the softmax. A row whose
    mask is all False pools to zeros rather than NaN.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def forward(self, x: Tensor, mask: Tensor) -> Tensor:
        logits = self.score(x).squeeze(-1)  # [B, T]
        logits = logits.masked_fill(~mask, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        weights = torch.nan_to_num(weights, nan=0.0)  # all-masked rows
        return torch.einsum("bt,btd->bd", weights, x)


class SharedEncoder(nn.Module):
    """2-layer MLP with LayerNorm: [B, D_in] -> z [B, 512]."""

    def __init__(self, in_dim: int, hidden: int = Z_DIM, out_dim: int = Z_DIM, dropout: float = 0.1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(in_dim),
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, out_dim),
            nn.LayerNorm(out_dim),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class RankingHeads(nn.Module):
    """One scoring head per dimension: z [B, 512] -> scores [B, N] (higher = more of that dimension).

    Each dimension has its own small MLP, so dimensions do not share a single linear direction. Given
    per-dimension representations z [B, N, 512], head d scores z[:, d].
    """

    def __init__(self, n_dims: int, z_dim: int = Z_DIM, hidden: int = 128) -> None:
        super().__init__()
        self.heads = nn.ModuleList(
            nn.Sequential(nn.Linear(z_dim, hidden), nn.GELU(), nn.Linear(hidden, 1)) for _ in range(n_dims)
        )

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 3:
            return torch.cat([h(z[:, d]) for d, h in enumerate(self.heads)], dim=-1)
        return torch.cat([h(z) for h in self.heads], dim=-1)


class RegressionHead(nn.Module):
    """z [B, 512] -> [B, N] in (0, 1) through a sigmoid, matching labels scaled to [0, 1].

    Given per-dimension representations z [B, N, 512], dimension d is sigmoid(w_d . z[:, d] + b_d): the same
    weights, each row of the linear map applied to its own dimension's representation.
    """

    def __init__(self, n_dims: int, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, n_dims)

    def forward(self, z: Tensor) -> Tensor:
        if z.dim() == 3:
            return torch.sigmoid(torch.einsum("bnd,nd->bn", z, self.linear.weight) + self.linear.bias)
        return torch.sigmoid(self.linear(z))


class DifficultyHead(nn.Module):
    """z [B, 512] -> [B] in (0, 1) through a sigmoid: the piece's difficulty grade, scaled to [0, 1] as the
    loaders scale it (``pianoray.data.loaders.scaled_grades``). An auxiliary regression head (the seed's
    difficulty head); it reads the shared z, never the per-dimension representations."""

    def __init__(self, z_dim: int = Z_DIM) -> None:
        super().__init__()
        self.linear = nn.Linear(z_dim, 1)

    def forward(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.linear(z)).squeeze(-1)


@dataclass(frozen=True)
class Stage:
    """One training stage of an experiment (A2 has two; most have one).

    epochs: this stage's share of the budget; tiers: the data it trains on (None = the round's tiers);
    terms: the loss terms it optimises (None = all of the multi-task total).
    """

    name: str
    epochs: int
    tiers: tuple[Tier, ...] | None = None
    terms: frozenset[str] | None = None
    select: bool = True  # False: early stopping / checkpoint ranking ignore this stage (self-supervised)


class Encoder(nn.Module):
    """Base of every encoder. ``views`` names the batch inputs it reads (``Batch.inputs`` keys).

    Hooks the training loop calls (defaults suit most encoders):
    - ``stages(total_epochs)``: the stage plan; [] means one supervised stage on the round's tiers.
    - ``param_groups(base_lr)``: optimiser groups (A3 gives deeper layers smaller learning rates).
    - ``on_epoch_start(epoch, total_epochs)``: e.g. gradual unfreezing.
    """

    views: ClassVar[tuple[str, ...]] = ()

    def encode(self, batch: Batch) -> EncoderOutput:  # pragma: no cover - interface
        raise NotImplementedError

    def stages(self, total_epochs: int) -> list[Stage]:
        return []

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.parameters() if p.requires_grad], "lr": base_lr}]

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        return None

    def forward(self, batch: Batch) -> EncoderOutput:
        return self.encode(batch)


class PooledEncoder(Encoder):
    """An encoder whose backbone yields a sequence; pooling and the shared MLP turn it into z.

    Subclasses set ``token_dim`` (D) and implement ``sequence(batch) -> (tokens [B,T,D], mask [B,T])``.
    """

    def __init__(self, token_dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.token_dim = token_dim
        self.pool = AttentionPooling(token_dim)
        self.shared = SharedEncoder(token_dim, dropout=dropout)

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:  # pragma: no cover - interface
        raise NotImplementedError

    def encode(self, batch: Batch) -> EncoderOutput:
        tokens, mask = self.sequence(batch)
        return EncoderOutput(tokens, mask, self.shared(self.pool(tokens, mask)))


class PerformanceModel(nn.Module):
    """An encoder plus the shared heads; what the training loop trains, whatever the encoder.

    The heads read the encoder's ``z_dims`` when it gives them (one representation per dimension), else z.
    ``difficulty``: also the auxiliary :class:`DifficultyHead` on z (its weights are ``difficulty.*``; a model
    without it keeps the state dict it always had).
    """

    def __init__(self, encoder: Encoder, n_dims: int, difficulty: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.ranking = RankingHeads(n_dims)
        self.regression = RegressionHead(n_dims)
        self.difficulty = DifficultyHead() if difficulty else None

    def forward(self, batch: Batch) -> ModelOutput:
        out = self.encoder.encode(batch)
        heads_in = out.z if out.z_dims is None else out.z_dims
        grade = self.difficulty(out.z) if self.difficulty is not None else None
        return ModelOutput(out.z, self.ranking(heads_in), self.regression(heads_in), out.tokens, out.mask, grade)
