"""S1: a Transformer encoder over REMI token ids, pretrained by BERT-style masked token prediction.

Input view ``remi``: ``inputs["remi"]`` long [B, L] (PAD = 0), ``inputs["remi_mask"]`` bool [B, L].
Model: token embedding (vocab_size + 1 rows: the extra row is the MLM ``[MASK]`` id = vocab_size) +
learned position embedding -> pre-LN ``nn.TransformerEncoder`` (key padding mask from remi_mask) ->
final LayerNorm -> tokens [B, L, D]; attention pooling + the shared MLP give z [B, 512] (PooledEncoder).

Value embeddings (``value_embedding``, on by default): a REMI id alone says nothing about order (Velocity_96
is as far from Velocity_100 as from Velocity_3 until the model has seen enough data to learn it), and a
token's index in the sequence is not its time. So each token also gets (a) a kind embedding, (b) its
numeric value (velocity, pitch, log duration, position in bar; ``remi.token_table``) times a learned
per-kind direction, and (c) a sinusoidal embedding of its clock time in seconds, recovered from the
Bar / Position tokens before it (:func:`token_times`). On the demo corpus this is what lets a small S1
learn from a few hundred labelled segments (ids only: val pairwise 0.53; docs/symbolic-encoders.md).

Pretraining (:class:`RemiMLMTask`): :func:`mlm_mask` selects 15% of the real tokens; of those 80% become
[MASK], 10% a random regular token, 10% stay; a head predicts the original ids (cross-entropy on the
selected positions only). An optional cross-performer InfoNCE term (``pretrain.cross_performer``) pulls
together z of two performers' renditions of one piece; it reads each sample's piece and performer ids
(``inputs["piece"]``, ``inputs["performer"]``, long [B]), which the pretraining loop derives from the
files (corpus manifest, PercePiano names, ASAP's folder layout: ``training.pretrain.rendition_groups``),
and the task asks for batches of cross-performer pairs (``grouped``).

Sizes: the demo default (2 layers x 128 x 4 heads, 0.72M parameters) trains in seconds on a CPU;
``S1Config.full()`` is the seed's 8 layers x 512 x 8 heads (26.5M parameters with a 446-token vocabulary,
checked in tests/models/symbolic/test_s1.py).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.models.contract import Encoder, PooledEncoder
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register
from pianoray.objectives.losses import info_nce_loss

# miditok's REMI vocabulary starts with PAD, BOS, EOS, MASK (ids 0-3): random MLM replacements skip them.
FIRST_REGULAR_ID = 4
IGNORE_INDEX = -100  # F.cross_entropy's default ignore_index


class S1PretrainConfig(BaseModel):
    """Masked-token pretraining knobs (part of the encoder config, hence of the pretraining cache key)."""

    model_config = ConfigDict(extra="forbid")
    mask_prob: float = Field(0.15, gt=0, lt=1, description="fraction of real tokens selected for prediction")
    cross_performer: bool = Field(False, description="add InfoNCE across performers of a piece (needs piece ids)")
    contrastive_weight: float = Field(0.1, ge=0)
    temperature: float = Field(0.07, gt=0)


class S1Config(ModelConfig):
    """S1 sizes. Defaults are the demo; :meth:`full` is the seed's ~25M-parameter model."""

    d_model: int = Field(128, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    ffn: int = Field(256, ge=8)
    max_positions: int = Field(512, ge=8, description="longest REMI sequence (tokens) the model accepts")
    vocab_size: int | None = Field(None, ge=FIRST_REGULAR_ID + 1, description="None: the REMI tokenizer's")
    value_embedding: bool = Field(
        True, description="add kind, numeric-value and clock-time embeddings (needs the REMI tokenizer's vocabulary)"
    )
    pretrain: S1PretrainConfig = S1PretrainConfig()

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "S1Config":
        if self.d_model % self.heads:
            raise ValueError(f"S1Config: d_model ({self.d_model}) must be divisible by heads ({self.heads})")
        return self

    @classmethod
    def full(cls, **overrides: Any) -> "S1Config":
        return cls.model_validate({**FULL, **overrides})


# The seed's S1: 6-12 layers x 512 x 8 heads, ~25M parameters (8 layers: 26.5M with 446 REMI tokens).
FULL: dict[str, Any] = {"d_model": 512, "layers": 8, "heads": 8, "ffn": 2048, "max_positions": 1024}


def mlm_mask(
    ids: Tensor,
    mask: Tensor,
    generator: torch.Generator,
    p: float = 0.15,
    *,
    vocab_size: int,
    mask_id: int,
    low: int = FIRST_REGULAR_ID,
) -> tuple[Tensor, Tensor]:
    """BERT masking of a padded id batch.

    Each real token (``mask`` True) is selected with probability ``p``; a selected token becomes
    ``mask_id`` with probability 0.8, a uniform random id in [low, vocab_size) with 0.1, and stays
    with 0.1. The model must predict every selected token's original id.

    Args:
        ids: long [B, L]; mask: bool [B, L] (True = real token); generator: torch RNG (CPU).
    Returns:
        (inputs long [B, L] with the replacements, targets long [B, L]: the original id where selected,
        -100 elsewhere, padding included).
    """
    if ids.shape != mask.shape:
        raise ValueError(f"mlm_mask: ids {tuple(ids.shape)} and mask {tuple(mask.shape)} differ")
    if not low < vocab_size:
        raise ValueError(f"mlm_mask: need low ({low}) < vocab_size ({vocab_size})")
    shape = ids.shape
    draw = torch.rand(shape, generator=generator).to(ids.device)
    action = torch.rand(shape, generator=generator).to(ids.device)
    random_ids = torch.randint(low, vocab_size, shape, generator=generator).to(ids.device)
    selected = (draw < p) & mask.bool()
    inputs = ids.clone()
    inputs = torch.where(selected & (action < 0.8), torch.full_like(ids, mask_id), inputs)
    inputs = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = torch.where(selected, ids, torch.full_like(ids, IGNORE_INDEX))
    return inputs, targets


def masked_token_accuracy(logits: Tensor, targets: Tensor) -> Tensor:
    """Fraction of selected positions (targets != -100) whose argmax is the target; logits [B, L, V]."""
    sel = targets != IGNORE_INDEX
    if not bool(sel.any()):
        return logits.new_zeros(())
    return (logits[sel].argmax(-1) == targets[sel]).float().mean()


@lru_cache(maxsize=1)
def remi_vocab_size() -> int:
    """The default REMI tokenizer's vocabulary size (446 with pianoray's RemiConfig)."""
    return len(remi_token_table().kind)


@lru_cache(maxsize=1)
def remi_token_table() -> Any:
    """The default REMI tokenizer's TokenTable (the one every symbolic cache is built with)."""
    from pianoray.data.symbolic.remi import RemiTokenizer

    return RemiTokenizer().token_table()


def token_times(kind: Tensor, beats: Tensor, seconds_per_beat: float) -> Tensor:
    """Clock time of every token from the Bar / Position tokens before it.

    A Pitch/Velocity/Duration/Pedal token happens at the last Position before it; a Bar starts a new
    4-beat bar at position 0. Vectorised: bars are a cumulative count, positions are carried forward
    with a cumulative max over the indices of the time markers.

    Args:
        kind: long [B, L] token kinds (``remi.TOKEN_KINDS`` indices); beats: float [B, L] a Position
            token's beat in its bar (0 elsewhere).
    Returns:
        float [B, L] seconds since the sequence's first token (a crop starts at 0 whatever bar it began in).
    """
    from pianoray.data.symbolic.remi import BEATS_PER_BAR, TOKEN_KINDS

    bar, position = TOKEN_KINDS.index("bar"), TOKEN_KINDS.index("position")
    is_bar = kind == bar
    marker = is_bar | (kind == position)
    L = kind.shape[1]
    index = torch.arange(L, device=kind.device).expand_as(kind)
    last = torch.where(marker, index, torch.zeros_like(index)).cummax(dim=1).values
    in_bar = torch.where(marker, beats, torch.zeros_like(beats)).gather(1, last)
    t = (is_bar.long().cumsum(1) * BEATS_PER_BAR + in_bar) * seconds_per_beat
    return t - t[:, :1]


def time_encoding(t: Tensor, n_freq: int) -> Tensor:
    """Sinusoids of t (seconds) at n_freq periods from 40 ms to 40 s (log-spaced): float [..] -> [.., 2 n_freq]."""
    periods = torch.logspace(math.log10(0.04), math.log10(40.0), n_freq, device=t.device, dtype=t.dtype)
    angle = 2 * math.pi * t[..., None] / periods
    return torch.cat([angle.sin(), angle.cos()], dim=-1)


class RemiTransformer(PooledEncoder):
    """REMI ids [B, L] -> tokens [B, L, D] (pre-LN Transformer) -> z [B, 512]."""

    views = ("remi",)

    TIME_FREQS = 16

    def __init__(self, cfg: S1Config, vocab_size: int, table: Any = None) -> None:
        """table: a ``remi.TokenTable`` for this vocabulary (needed when ``cfg.value_embedding``)."""
        super().__init__(cfg.d_model, dropout=cfg.dropout)
        self.cfg = cfg
        self.vocab_size = vocab_size
        self.mask_id = vocab_size  # the extra embedding row
        self.token = nn.Embedding(vocab_size + 1, cfg.d_model)
        self.position = nn.Embedding(cfg.max_positions, cfg.d_model)
        if cfg.value_embedding:
            from pianoray.data.symbolic.remi import MASK_KIND

            if table is None or len(table.kind) != vocab_size:
                got = "none" if table is None else f"{len(table.kind)} ids"
                raise ValueError(
                    f"S1Config.value_embedding needs the REMI token table of the {vocab_size}-id vocabulary "
                    f"(got {got}); set value_embedding: false for another vocabulary"
                )
            # Lookup tables, one more row for [MASK] (kind MASK_KIND, no value: it hides the value too).
            self.register_buffer("kind_of", torch.tensor([*table.kind, MASK_KIND]), persistent=False)
            self.register_buffer("value_of", torch.tensor([*table.value, 0.0]), persistent=False)
            self.register_buffer("beats_of", torch.tensor([*table.beats, 0.0]), persistent=False)
            self.seconds_per_beat = float(table.seconds_per_beat)
            self.kind = nn.Embedding(MASK_KIND + 1, cfg.d_model)
            self.value_direction = nn.Embedding(MASK_KIND + 1, cfg.d_model)
            self.time = nn.Linear(2 * self.TIME_FREQS, cfg.d_model)
        layer = nn.TransformerEncoderLayer(
            cfg.d_model, cfg.heads, cfg.ffn, cfg.dropout, activation="gelu", batch_first=True, norm_first=True
        )
        # enable_nested_tensor is incompatible with norm_first and would only warn.
        self.transformer = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.d_model)

    def hidden(self, ids: Tensor, mask: Tensor) -> Tensor:
        """ids long [B, L] (may hold ``mask_id``), mask bool [B, L] -> [B, L, D] (padding rows are junk)."""
        L = ids.shape[1]
        if L > self.cfg.max_positions:
            raise ValueError(f"S1: REMI sequence of {L} tokens exceeds S1Config.max_positions={self.cfg.max_positions}")
        if int(ids.max()) > self.mask_id or int(ids.min()) < 0:
            raise ValueError(f"S1: token ids must lie in [0, {self.mask_id}] (vocab_size={self.vocab_size} + [MASK])")
        x = self.token(ids) + self.position(torch.arange(L, device=ids.device))[None]
        if self.cfg.value_embedding:
            kind = self.kind_of[ids]
            t = token_times(kind, self.beats_of[ids], self.seconds_per_beat)
            x = x + self.kind(kind) + self.value_direction(kind) * self.value_of[ids][..., None]
            x = x + self.time(time_encoding(t, self.TIME_FREQS))
        # A row with no real token would make attention softmax over nothing (NaN): let it see its
        # first position; pooling still ignores it through ``mask``.
        attend = mask.bool().clone()
        attend[:, 0] |= ~attend.any(1)
        return self.norm(self.transformer(x, src_key_padding_mask=~attend))

    def pooled(self, tokens: Tensor, mask: Tensor) -> Tensor:
        """z [B, 512] from tokens [B, L, D] and mask [B, L]."""
        return self.shared(self.pool(tokens, mask))

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        ids, mask = batch.inputs["remi"], batch.inputs["remi_mask"]
        return self.hidden(ids, mask), mask


class MaskedTokenHead(nn.Module):
    """BERT's prediction head: [.., D] -> logits [.., vocab_size] (the [MASK] id is never a target)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(d_model, d_model), nn.GELU(), nn.LayerNorm(d_model))
        self.decoder = nn.Linear(d_model, vocab_size)

    def forward(self, h: Tensor) -> Tensor:
        return self.decoder(self.transform(h))


class RemiMLMTask:
    """The S1 ``PretrainTask``: masked token prediction (+ optional cross-performer InfoNCE)."""

    name = "s1-mlm"
    views = ("remi",)

    def __init__(self, cfg: S1Config) -> None:
        self.cfg = cfg
        self.grouped = cfg.pretrain.cross_performer  # batches of cross-performer pairs

    def build_heads(self, encoder: Encoder) -> nn.Module:
        enc = _as_s1(encoder)
        return MaskedTokenHead(enc.cfg.d_model, enc.vocab_size)

    def loss(
        self, encoder: Encoder, heads: nn.Module, inputs: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]:
        enc = _as_s1(encoder)
        ids, mask = inputs["remi"], inputs["remi_mask"]
        pc = self.cfg.pretrain
        masked, targets = mlm_mask(ids, mask, generator, pc.mask_prob, vocab_size=enc.vocab_size, mask_id=enc.mask_id)
        h = enc.hidden(masked, mask)
        sel = targets != IGNORE_INDEX
        logits = heads(h[sel])  # only the selected positions: [M, V]
        if logits.shape[0]:
            mlm = F.cross_entropy(logits, targets[sel])
            acc = float((logits.argmax(-1) == targets[sel]).float().mean())
        else:  # a batch of very short sequences may select nothing
            mlm, acc = h.sum() * 0.0, 0.0
        parts = {"mlm": float(mlm.detach()), "mlm_accuracy": acc}
        total = mlm
        if pc.cross_performer:
            missing = [k for k in ("piece", "performer") if k not in inputs]
            if missing:
                raise KeyError(
                    f"S1 pretrain.cross_performer needs inputs {missing} (long [B] piece/performer ids per file, "
                    "as training.pretrain gives them)"
                )
            con = info_nce_loss(enc.pooled(h, mask), inputs["piece"], inputs["performer"], temperature=pc.temperature)
            total = total + pc.contrastive_weight * con
            parts["contrastive"] = float(con.detach())
        return total, parts


def _as_s1(encoder: Encoder) -> RemiTransformer:
    if not isinstance(encoder, RemiTransformer):
        raise TypeError(f"the s1-mlm pretraining task needs a RemiTransformer, got {type(encoder).__name__}")
    return encoder


def build_s1(cfg: S1Config, data: DataSpec) -> RemiTransformer:
    """Vocabulary size: the config's, else ``data.extras["remi_vocab_size"]``, else the default tokenizer's;
    the token table (value embeddings) is the default tokenizer's, which every symbolic cache uses."""
    vocab = cfg.vocab_size or data.extras.get("remi_vocab_size") or remi_vocab_size()
    table = remi_token_table() if cfg.value_embedding else None
    return RemiTransformer(cfg, int(vocab), table)


register(
    EncoderSpec(
        name="S1",
        track="symbolic",
        role="candidate",
        config_cls=S1Config,
        build=build_s1,
        views=RemiTransformer.views,
        description="Transformer over REMI tokens, MLM-pretrained",
        pretrain=lambda cfg: RemiMLMTask(cfg),
    )
)
