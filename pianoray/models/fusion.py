"""Fusion track (Round 3): a fusion module over a run's two frozen winners, and the F1/F2/F3/F-score registrations.

A :class:`FusionEncoder` wraps the winning audio and symbolic encoders, their trained weights loaded and frozen
(no gradient, and eval mode even while it trains, so their dropout and normalisation statistics never move),
and trains only its fusion module; the shared heads of :class:`~pianoray.models.contract.PerformanceModel`
train on top. Every fusion module maps the two encoders' outputs to one ``EncoderOutput``:

- **F1** :class:`CrossAttentionFusion`: each modality's tokens attend to the other's; both attended sequences
  are pooled and the shared MLP turns them into z.
- **F2** :class:`ConcatFusion`: [z_audio; z_symbolic] -> MLP -> z, the baseline that must beat audio alone.
- **F3** :class:`GatedFusion`: per label dimension d, a gate g_d = sigmoid(W_d [z_a; z_s] + b_d) mixes
  z_d = g_d z_a + (1 - g_d) z_s, and dimension d's heads read z_d. The gates say which modality each
  dimension relies on (:meth:`GatedFusionEncoder.gates`).
- **F-score** :class:`ScoreConditionedFusion`: score-conditioned quality f(z_perf_audio, z_perf_midi,
  z_score_midi), the score MIDI encoded by the same frozen symbolic winner (:class:`ScoreFusionEncoder`, which
  reads the winner's score views, ``score:<view>``): [z_a; z_p; z_s; z_p - z_s] -> MLP -> z, so the heads see
  what the score asks for, how the performance sounds, and where its notes depart from the score.

Round 3 fills the config's ``audio`` and ``symbolic`` parts (each winner's encoder name and model config),
builds with :func:`build_fusion`, then loads the winners' trained weights with
:meth:`FusionEncoder.load_winners`. The registrations are ``kind="fusion"``: never Round-1/2 experiments.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any, ClassVar, Literal, Mapping

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from pianoray.data.batch import Batch
from pianoray.data.views import SCORE
from pianoray.models import registry
from pianoray.models.contract import Z_DIM, AttentionPooling, Encoder, EncoderOutput, PooledEncoder, SharedEncoder
from pianoray.models.registry import DataSpec, FusionSpec, ModelConfig, register, register_track
from pianoray.records import DEFAULT_TRACK_METRICS

logger = logging.getLogger(__name__)

Modality = Literal["audio", "symbolic"]


class FusedPart(BaseModel):
    """One frozen winner, as Round 3 fills it in: its registered encoder name and that encoder's model config
    (the winning experiment's ``model`` dict)."""

    model_config = ConfigDict(extra="forbid")
    encoder: str | None = None
    model: dict[str, Any] = Field(default_factory=dict)


class FusionConfig(ModelConfig):
    """What every fusion experiment shares: the two winners it fuses (unset until Round 3 knows them).
    ``reads_score``: the fusion also reads each segment's score MIDI (F-score), so it runs only on a corpus that
    has one for every segment Round 3 reads."""

    reads_score: ClassVar[bool] = False
    audio: FusedPart = Field(default_factory=FusedPart)
    symbolic: FusedPart = Field(default_factory=FusedPart)


class CrossAttentionConfig(FusionConfig):
    """F1. d_model: the common width both modalities' tokens are projected to; heads: attention heads;
    hidden: the shared MLP's hidden width. dropout applies to the attention weights and the MLP."""

    d_model: int = Field(256, ge=8)
    heads: int = Field(4, ge=1)
    hidden: int = Field(Z_DIM, ge=8)

    @model_validator(mode="after")
    def _check_heads(self) -> "CrossAttentionConfig":
        if self.d_model % self.heads:
            raise ValueError(f"d_model ({self.d_model}) must be a multiple of heads ({self.heads})")
        return self


class ConcatConfig(FusionConfig):
    """F2. hidden: the MLP's hidden width; dropout: the MLP's."""

    hidden: int = Field(Z_DIM, ge=8)


class GatedConfig(FusionConfig):
    """F3. The gates are one linear map of [z_a; z_s] (the seed's W_d): no size to choose; dropout is unused."""


class ScoreConditionedConfig(FusionConfig):
    """F-score. hidden: the MLP's hidden width; dropout: the MLP's."""

    reads_score: ClassVar[bool] = True
    hidden: int = Field(Z_DIM, ge=8)


def _pair_tokens(audio: EncoderOutput, symbolic: EncoderOutput) -> tuple[Tensor, Tensor]:
    """The two embeddings as a 2-token sequence [B, 2, 512], all real: the tokens of a fusion of z's only."""
    tokens = torch.stack([audio.z, symbolic.z], dim=1)
    return tokens, torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)


class CrossAttentionFusion(nn.Module):
    """F1: audio tokens [B, Ta, Da] and symbolic tokens [B, Ts, Ds] -> projected to d_model -> each attends to
    the other's real tokens (residual + LayerNorm) -> each pooled over its own mask -> [B, 2 d_model]
    -> shared MLP -> z [B, 512]. Tokens: both attended sequences, concatenated [B, Ta + Ts, d_model]."""

    def __init__(self, cfg: CrossAttentionConfig, audio_dim: int, symbolic_dim: int) -> None:
        super().__init__()
        d = cfg.d_model
        self.project_audio = nn.Linear(audio_dim, d)
        self.project_symbolic = nn.Linear(symbolic_dim, d)
        self.audio_to_symbolic = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.symbolic_to_audio = nn.MultiheadAttention(d, cfg.heads, dropout=cfg.dropout, batch_first=True)
        self.norm_audio = nn.LayerNorm(d)
        self.norm_symbolic = nn.LayerNorm(d)
        self.pool_audio = AttentionPooling(d)
        self.pool_symbolic = AttentionPooling(d)
        self.shared = SharedEncoder(2 * d, hidden=cfg.hidden, dropout=cfg.dropout)

    def forward(self, audio: EncoderOutput, symbolic: EncoderOutput) -> EncoderOutput:
        a, s = self.project_audio(audio.tokens), self.project_symbolic(symbolic.tokens)
        # Both directions read the projected inputs (symmetric); a key_padding_mask is True at padding.
        a_read, _ = self.audio_to_symbolic(a, s, s, key_padding_mask=~symbolic.mask, need_weights=False)
        s_read, _ = self.symbolic_to_audio(s, a, a, key_padding_mask=~audio.mask, need_weights=False)
        a, s = self.norm_audio(a + a_read), self.norm_symbolic(s + s_read)
        pooled = torch.cat([self.pool_audio(a, audio.mask), self.pool_symbolic(s, symbolic.mask)], dim=-1)
        return EncoderOutput(torch.cat([a, s], dim=1), torch.cat([audio.mask, symbolic.mask], dim=1),
                             self.shared(pooled))


class ConcatFusion(nn.Module):
    """F2: [z_a; z_s] [B, 1024] -> 2-layer MLP + LayerNorm -> z [B, 512]. Tokens: the two z's [B, 2, 512]."""

    def __init__(self, cfg: ConcatConfig) -> None:
        super().__init__()
        self.mlp = SharedEncoder(2 * Z_DIM, hidden=cfg.hidden, dropout=cfg.dropout)

    def forward(self, audio: EncoderOutput, symbolic: EncoderOutput) -> EncoderOutput:
        tokens, mask = _pair_tokens(audio, symbolic)
        return EncoderOutput(tokens, mask, self.mlp(tokens.flatten(1)))


class GatedFusion(nn.Module):
    """F3: per label dimension d, g_d = sigmoid(W_d [z_a; z_s] + b_d) and z_d = g_d z_a + (1 - g_d) z_s.

    z_dims [B, N, 512] feeds dimension d's heads with z_d. z [B, 512] (for the contrastive and invariance losses)
    is the mean of the z_d, i.e. z_a and z_s mixed by the mean gate. Tokens: the two z's [B, 2, 512].
    """

    def __init__(self, n_dims: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * Z_DIM, n_dims)

    def gates(self, z_audio: Tensor, z_symbolic: Tensor) -> Tensor:
        """[B, 512] x 2 -> [B, N] in (0, 1): each dimension's weight on audio (1 - it on symbolic)."""
        return torch.sigmoid(self.gate(torch.cat([z_audio, z_symbolic], dim=-1)))

    def forward(self, audio: EncoderOutput, symbolic: EncoderOutput) -> EncoderOutput:
        g = self.gates(audio.z, symbolic.z)[..., None]  # [B, N, 1]
        z_dims = g * audio.z[:, None] + (1 - g) * symbolic.z[:, None]  # [B, N, 512]
        tokens, mask = _pair_tokens(audio, symbolic)
        return EncoderOutput(tokens, mask, z_dims.mean(dim=1), z_dims)


class ScoreConditionedFusion(nn.Module):
    """F-score: z_a (performance audio), z_p (performance MIDI), z_s (score MIDI), each [B, 512] ->
    [z_a; z_p; z_s; z_p - z_s] [B, 2048] -> 2-layer MLP + LayerNorm -> z [B, 512]. z_p - z_s is the performance's
    departure from the score in the symbolic winner's space: the same for every performance of a score that plays
    it as written. Tokens: the three z's [B, 3, 512], all real."""

    def __init__(self, cfg: ScoreConditionedConfig) -> None:
        super().__init__()
        self.mlp = SharedEncoder(4 * Z_DIM, hidden=cfg.hidden, dropout=cfg.dropout)

    def forward(self, audio: EncoderOutput, symbolic: EncoderOutput, score: EncoderOutput) -> EncoderOutput:
        tokens = torch.stack([audio.z, symbolic.z, score.z], dim=1)
        mask = torch.ones(tokens.shape[:2], dtype=torch.bool, device=tokens.device)
        z = self.mlp(torch.cat([audio.z, symbolic.z, score.z, symbolic.z - score.z], dim=-1))
        return EncoderOutput(tokens, mask, z)


def digest(x: Any, h: "hashlib._Hash | None" = None) -> "hashlib._Hash":
    """A blake2b hash of ``x``'s content: tensors (dtype, shape and bytes), dicts (sorted by key), sequences,
    scalars, strings, and graph batches (anything with ``to_dict``, e.g. a PyG ``Batch``). Raises TypeError for
    anything else: a memo keyed by an input it cannot see would serve one batch another's features."""
    h = h if h is not None else hashlib.blake2b(digest_size=16)
    if isinstance(x, Tensor):
        t = x.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(x, Mapping):
        h.update(b"{")
        for k in sorted(x, key=str):
            h.update(repr(k).encode())
            digest(x[k], h)
        h.update(b"}")
    elif isinstance(x, (list, tuple)):
        h.update(f"[{len(x)}".encode())
        for v in x:
            digest(v, h)
    elif x is None or isinstance(x, (bool, int, float, str)):
        h.update(repr(x).encode())
    elif callable(getattr(x, "to_dict", None)):
        h.update(type(x).__name__.encode())
        digest(x.to_dict(), h)
    else:
        raise TypeError(f"digest: cannot hash a {type(x).__name__}")
    return h


class FrozenFeatures:
    """The frozen winners' outputs on the evaluation batches already seen: each encoded once per fold.

    A frozen winner in eval mode is a fixed function of its inputs. Validation reads the same windows every
    epoch, and a fold's fusions read the same validation and test batches through the same fold-k winners, so a
    process that trains every fusion of a fold (a Round-3 fold job) encodes each evaluation batch once per
    winner. Keyed by the winner's weights and the batch's inputs, both by content (:func:`digest`), and by the
    autocast state and the winner's device: a changed weight, window or view is a new key, never another's
    features. Training batches are random crops that never repeat, and are never kept.

    Bounded twice: the outputs of the ``winners`` most recently used weights only (a fold's two winners; the next
    fold's evict them), and ``max_bytes`` (on the device they were computed on), past which a batch is encoded
    without being kept, the result the same."""

    def __init__(self, max_bytes: int = 2 << 30, winners: int = 2) -> None:
        self.max_bytes, self.winners = max_bytes, winners
        self.bytes = self.hits = self.misses = 0
        self.full = False  # the byte bound was reached once (logged then)
        self._kept: dict[str, dict[str, EncoderOutput]] = {}  # weights -> inputs' key -> output; oldest first

    def encode(self, weights: str, encoder: Encoder, batch: Batch) -> EncoderOutput:
        """``encoder.encode(batch)``, from the memo when ``(weights, batch.inputs)`` was encoded before."""
        # A performance batch of F-score also carries the score's inputs, which no winner reads on it: left out
        # of the key, F-score shares the other fusions' features (its score batch has only those).
        inputs = {k: v for k, v in batch.inputs.items() if not k.startswith(SCORE)}
        autocast = [torch.is_autocast_enabled(d) for d in ("cpu", "cuda")]
        device = str(next(encoder.parameters(), torch.empty(0)).device)  # where the output is: part of what it is
        key = digest([inputs, autocast, device]).hexdigest()
        kept = self._kept.pop(weights, {})
        self._kept[weights] = kept  # most recently used last
        while len(self._kept) > self.winners:
            oldest = self._kept.pop(next(iter(self._kept)))
            self.bytes -= sum(_nbytes(o) for o in oldest.values())
        if (out := kept.get(key)) is not None:
            self.hits += 1
            return out
        self.misses += 1
        out = EncoderOutput(*(t.detach() if isinstance(t, Tensor) else t for t in encoder.encode(batch)))
        if self.bytes + _nbytes(out) <= self.max_bytes:
            kept[key] = out
            self.bytes += _nbytes(out)
        elif not self.full:  # the result is the same, only slower: said once, not per batch
            self.full = True
            logger.info("frozen-feature memo full (%d MiB): further evaluation batches are encoded afresh",
                        self.max_bytes >> 20)
        return out


def _nbytes(out: EncoderOutput) -> int:
    return sum(t.numel() * t.element_size() for t in out if isinstance(t, Tensor))


FROZEN_FEATURES = FrozenFeatures()  # one per process: a fold job's fusions share it


class FusionEncoder(Encoder):
    """Two frozen encoders + a trainable fusion module (``fusion(audio_out, symbolic_out) -> EncoderOutput``).

    ``views``: both encoders' views, audio's first. The encoders train only once unfrozen (:meth:`unfreeze`, the
    ``round3.unfreeze_lr`` stage). Until then their parameters do not require gradients (so ``param_groups``
    holds the fusion module's alone), they run without a graph, and they stay in eval mode whatever mode this
    encoder is put in.
    """

    def __init__(self, audio: Encoder, symbolic: Encoder, fusion: nn.Module) -> None:
        super().__init__()
        # what each winner trains of itself (a LoRA winner: its adapters, never its frozen base): what unfreezes
        self._part_trainable = [p for part in (audio, symbolic) for p in part.parameters() if p.requires_grad]
        self.audio = audio.requires_grad_(False)
        self.symbolic = symbolic.requires_grad_(False)
        self.fusion = fusion
        self.views = tuple(dict.fromkeys((*audio.views, *symbolic.views)))
        self.unfrozen_lr: float | None = None
        self._weights: dict[str, str] = {}  # part -> digest of its weights (reset whenever weights are loaded)
        self.register_load_state_dict_post_hook(lambda module, keys: module._weights.clear())
        self.train()  # the winners were built in train mode

    def train(self, mode: bool = True) -> "FusionEncoder":
        super().train(mode)
        if self.unfrozen_lr is None:
            self.audio.eval()
            self.symbolic.eval()
        return self

    def unfreeze(self, lr: float) -> None:
        """Let the winners train too, at ``lr`` (their own trainable parameters, in their own param group)."""
        self.unfrozen_lr = float(lr)
        for p in self._part_trainable:
            p.requires_grad_(True)
        self.train(self.training)

    def param_groups(self, base_lr: float) -> list[dict[str, Any]]:
        groups = [{"params": [p for p in self.fusion.parameters() if p.requires_grad], "lr": base_lr}]
        if self.unfrozen_lr is not None and self._part_trainable:
            groups.append({"params": list(self._part_trainable), "lr": self.unfrozen_lr})
        return groups

    def parts(self, batch: Batch) -> tuple[EncoderOutput, EncoderOutput]:
        """The encoders' outputs: without a graph while they are frozen (nothing upstream of the fusion module
        trains), with one once unfrozen."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.unfrozen_lr is not None):
            return self._part("audio", batch), self._part("symbolic", batch)

    def _part(self, name: str, batch: Batch) -> EncoderOutput:
        """Winner ``name`` on ``batch``: from :data:`FROZEN_FEATURES` while frozen and evaluating (the same
        batch, the same output), else encoded afresh (training crops; unfrozen winners)."""
        encoder: Encoder = getattr(self, name)
        if self.training or self.unfrozen_lr is not None:
            return encoder.encode(batch)
        if name not in self._weights:
            self._weights[name] = digest(encoder.state_dict()).hexdigest()
        return FROZEN_FEATURES.encode(self._weights[name], encoder, batch)

    def encode(self, batch: Batch) -> EncoderOutput:
        return self.fusion(*self.parts(batch))

    def load_winners(self, audio_state: Mapping[str, Tensor], symbolic_state: Mapping[str, Tensor]) -> None:
        """Load each winner's trained encoder: a Round-2 checkpoint's ``model`` state (a PerformanceModel's:
        its ``encoder.*`` entries; the winner's own heads are not used)."""
        for part, state in ((self.audio, audio_state), (self.symbolic, symbolic_state)):
            part.load_state_dict({k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")})


class GatedFusionEncoder(FusionEncoder):
    """F3's encoder: a :class:`FusionEncoder` over a :class:`GatedFusion`, whose gates a scorer can report."""

    fusion: GatedFusion

    def gates(self, batch: Batch) -> Tensor:
        """[B, N] in (0, 1): dimension d's weight on audio (1 = audio alone, 0 = symbolic alone)."""
        audio, symbolic = self.parts(batch)
        return self.fusion.gates(audio.z, symbolic.z)


class ScoreFusionEncoder(FusionEncoder):
    """F-score's encoder: a :class:`FusionEncoder` whose symbolic winner also encodes the segment's score MIDI.

    ``views``: audio's, the symbolic winner's, then the score view of each of the symbolic winner's
    (``score:<view>``); :meth:`parts` gives three outputs (audio, performance MIDI, score MIDI), the last the
    symbolic winner on :meth:`~pianoray.data.batch.Batch.score_batch`.
    """

    fusion: ScoreConditionedFusion

    def __init__(self, audio: Encoder, symbolic: Encoder, fusion: nn.Module) -> None:
        super().__init__(audio, symbolic, fusion)
        self.views = (*self.views, *(SCORE + v for v in symbolic.views))

    def parts(self, batch: Batch) -> tuple[EncoderOutput, EncoderOutput, EncoderOutput]:  # type: ignore[override]
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.unfrozen_lr is not None):
            return (*super().parts(batch), self._part("symbolic", batch.score_batch()))


def _build_part(part: FusedPart, modality: Modality, data: DataSpec) -> Encoder:
    """The winner of ``modality``'s track, built from its registered encoder and model config (weights untrained:
    :meth:`FusionEncoder.load_winners` loads them)."""
    if part.encoder is None:
        raise ValueError(f"fusion: {modality}.encoder is not set; a fusion is built from the run's winners, "
                         "so Round 3 must name the winning encoder and its model config")
    spec = registry.get(part.encoder)
    if spec.kind != "neural" or spec.track != modality:
        raise ValueError(f"fusion: {modality}.encoder {part.encoder!r} is a {spec.kind} encoder of track "
                         f"{spec.track!r}, not a neural {modality} encoder")
    return spec.build(spec.config_cls.model_validate(part.model), data)


def _token_dim(encoder: Encoder) -> int:
    """D of the encoder's tokens [B, T, D], which F1 projects (every registered neural encoder is pooled)."""
    if not isinstance(encoder, PooledEncoder):
        raise TypeError(f"F1 needs the width of the encoder's tokens; {type(encoder).__name__} is no PooledEncoder")
    return encoder.token_dim


def build_fusion(cfg: FusionConfig, data: DataSpec) -> FusionEncoder:
    """The fusion of ``cfg.audio`` and ``cfg.symbolic`` by the config's experiment (F1, F2, F3 or F-score)."""
    audio, symbolic = _build_part(cfg.audio, "audio", data), _build_part(cfg.symbolic, "symbolic", data)
    if isinstance(cfg, CrossAttentionConfig):
        return FusionEncoder(audio, symbolic, CrossAttentionFusion(cfg, _token_dim(audio), _token_dim(symbolic)))
    if isinstance(cfg, ConcatConfig):
        return FusionEncoder(audio, symbolic, ConcatFusion(cfg))
    if isinstance(cfg, GatedConfig):
        return GatedFusionEncoder(audio, symbolic, GatedFusion(data.n_dims))
    if isinstance(cfg, ScoreConditionedConfig):
        return ScoreFusionEncoder(audio, symbolic, ScoreConditionedFusion(cfg))
    raise TypeError(f"build_fusion: no fusion module for {type(cfg).__name__}")


# Round 3 is evaluated, as the seed says, with the full metrics suite plus STOP prediction and competition
# ranking: both join the fusion track's comparison table.
TRACK = register_track(registry.TrackSpec(
    "fusion", order=2, description="Round 3: a fusion module over the audio and symbolic winners, both frozen",
    metrics=("competition_rho", "stop_auc", *DEFAULT_TRACK_METRICS)))

for _name, _config, _description in (
    ("F1", CrossAttentionConfig, "cross-attention: each modality's tokens attend to the other's"),
    ("F2", ConcatConfig, "concatenation baseline: z_audio and z_symbolic concatenated -> MLP"),
    ("F3", GatedConfig, "gated per dimension: z_d = g_d z_audio + (1 - g_d) z_symbolic"),
    ("F-score", ScoreConditionedConfig, "score-conditioned quality: f(z_audio, z_midi, z_score), the score MIDI "
     "encoded by the symbolic winner"),
):
    register(FusionSpec(name=_name, track="fusion", role="candidate", config_cls=_config, build=build_fusion,
                        description=_description))
