"""S2: a GATConv graph network over the homogeneous note graph (the ``graph`` view).

Nodes are notes; edges are temporal / harmonic / voice links (``pianoray.data.symbolic.graphs``). The
edge attributes (one-hot edge type, interval, onset gap) enter every attention score through GATConv's
``edge_dim``, so the network can weigh a harmonic neighbour differently from a temporal one.

    x [N, 6] raw -> scaled node features [N, 22] -> Linear -> L x (GATConv + residual + LayerNorm)
    -> node embeddings h [N, D] -> per-graph tokens [B, T, D] (to_dense_batch) -> pooling -> z [B, 512]

Pretraining (``S2PretrainTask``): link prediction (held-out edges vs. same-graph non-edges, MLP scorer,
BCE) plus masked attributes (velocity and duration of ~15% of the notes blanked and flagged, regressed
with MSE). Onset gaps are not masked: every edge carries the onset gap, so a blanked onset would leak
through the edge attributes.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch_geometric.nn import GATConv
from torch_geometric.utils import scatter, to_dense_batch

from pianoray.data.batch import Batch
from pianoray.data.symbolic.graphs import EDGE_TYPES, NODE_FEATURES
from pianoray.models.contract import PooledEncoder
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register
from pianoray.models.symbolic.link_prediction import (
    holdout_mask,
    link_accuracy,
    link_bce_loss,
    mask_attributes,
    pair_keys,
    sample_negative_edges,
    select_nodes,
)

N_VOICES = 4  # GraphConfig.max_voices default; larger voice ids share the last slot
# Scaled node feature layout (columns of ``scale_note_features``).
PITCH_COL = 0
PITCH_CLASS_COLS = slice(1, 13)
VELOCITY_COL = 13
DURATION_COL = 14
POSITION_COL = 15
PEDAL_COL = 16
VOICE_COLS = slice(17, 17 + N_VOICES)
MASK_FLAG_COL = 17 + N_VOICES
NODE_DIM = MASK_FLAG_COL + 1
EDGE_DIM = len(EDGE_TYPES) + 2
_F = {name: i for i, name in enumerate(NODE_FEATURES)}
# Durations and gaps span 10 ms to several seconds: a log scale keeps staccato and held notes apart.
_TIME_UNIT_S = 0.05
_DURATION_NORM = math.log1p(6.0 / _TIME_UNIT_S)


def log_time(seconds: Tensor) -> Tensor:
    """Signed log scale for durations and onset gaps: sign(t) * log1p(|t| / 50 ms) / log1p(6 s / 50 ms)."""
    return torch.sign(seconds) * torch.log1p(seconds.abs() / _TIME_UNIT_S) / _DURATION_NORM


def scale_note_features(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Raw note features [N, 6] (``graphs.NODE_FEATURES``) -> scaled [N, NODE_DIM].

    pitch / 127, pitch-class one-hot (12), velocity / 127, log duration, position of the onset within
    its graph in [0, 1] (onset minus the graph's first onset, over the graph's span), pedal, voice
    one-hot (4), and a masked-node flag (0 here; set by pretraining). batch: [N] graph id per node.
    """
    x = x.float()
    n = x.shape[0]
    out = x.new_zeros(n, NODE_DIM)
    pitch = x[:, _F["pitch"]]
    out[:, PITCH_COL] = pitch / 127.0
    pc = pitch.round().long().remainder(12)
    out[torch.arange(n, device=x.device), PITCH_CLASS_COLS.start + pc] = 1.0
    out[:, VELOCITY_COL] = x[:, _F["velocity"]] / 127.0
    out[:, DURATION_COL] = log_time(x[:, _F["duration"]].clamp_min(0.0))
    onset = x[:, _F["onset"]]
    first = scatter(onset, batch, dim=0, dim_size=num_graphs, reduce="min")[batch]
    span = scatter(onset, batch, dim=0, dim_size=num_graphs, reduce="max")[batch] - first
    out[:, POSITION_COL] = (onset - first) / span.clamp_min(1e-6)
    out[:, PEDAL_COL] = x[:, _F["pedal"]]
    voice = x[:, _F["voice"]].round().long().clamp(0, N_VOICES - 1)
    out[torch.arange(n, device=x.device), VOICE_COLS.start + voice] = 1.0
    return out


def scale_edge_features(edge_attr: Tensor) -> Tensor:
    """Raw edge_attr [E, 5] (one-hot type, interval / 12, onset gap s) -> [E, 5]: the one-hot kept,
    the interval clipped to +-4 octaves, the gap on the signed log scale."""
    a = edge_attr.float()
    k = len(EDGE_TYPES)
    return torch.cat([a[:, :k], a[:, k : k + 1].clamp(-4.0, 4.0), log_time(a[:, k + 1 : k + 2])], dim=1)


class S2Config(ModelConfig):
    """Demo size by default (trains in seconds on 2 CPUs); ``S2Config.full()`` is the seed's size."""

    hidden: int = Field(64, ge=8, description="node embedding width D (= token width)")
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1, description="attention heads per GATConv; hidden must divide by it")
    link_fraction: float = Field(0.15, gt=0, le=0.5, description="pretraining: share of edge pairs held out")
    mask_fraction: float = Field(0.15, gt=0, le=0.5, description="pretraining: share of notes masked")
    attr_weight: float = Field(1.0, ge=0, description="pretraining: weight of the masked-attribute MSE")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "S2Config":
        if self.hidden % self.heads:
            raise ValueError(f"S2Config: hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self

    @classmethod
    def full(cls, **overrides: Any) -> "S2Config":
        """Cluster size: 5 GATConv layers x 256 wide x 8 heads (0.35M backbone parameters, 0.74M with pooling
        and the shared MLP; the demo size has 11k + 0.3M)."""
        return cls(**({"hidden": 256, "layers": 5, "heads": 8} | overrides))


class GatBlock(nn.Module):
    """h -> LayerNorm(h + Dropout(GELU(GATConv(h, edges)))): [N, D] -> [N, D]."""

    def __init__(self, hidden: int, heads: int, edge_dim: int, dropout: float) -> None:
        super().__init__()
        self.conv = GATConv(hidden, hidden // heads, heads=heads, edge_dim=edge_dim, dropout=dropout)
        self.norm = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return self.norm(h + self.dropout(F.gelu(self.conv(h, edge_index, edge_attr))))


class S2GraphEncoder(PooledEncoder):
    """GATConv network over the ``graph`` view; tokens are the node embeddings per graph [B, T, D]."""

    views: ClassVar[tuple[str, ...]] = ("graph",)

    def __init__(self, cfg: S2Config) -> None:
        super().__init__(cfg.hidden, dropout=cfg.dropout)
        self.cfg = cfg
        self.input = nn.Sequential(nn.Linear(NODE_DIM, cfg.hidden), nn.LayerNorm(cfg.hidden))
        self.blocks = nn.ModuleList(GatBlock(cfg.hidden, cfg.heads, EDGE_DIM, cfg.dropout) for _ in range(cfg.layers))

    def node_features(self, graph: Any) -> Tensor:
        """PyG Batch -> scaled node features [N, NODE_DIM]."""
        return scale_note_features(graph.x, graph.batch, graph.num_graphs)

    def embed_nodes(self, features: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        """features [N, NODE_DIM], edge_index [2, E], raw edge_attr [E, 5] -> h [N, D]."""
        h = self.input(features)
        e = scale_edge_features(edge_attr)
        for block in self.blocks:
            h = block(h, edge_index, e)
        return h

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        try:
            graph = batch.inputs["graph"]
        except KeyError:
            raise KeyError(f"S2 reads batch.inputs['graph'], but the batch has {sorted(batch.inputs)}") from None
        h = self.embed_nodes(self.node_features(graph), graph.edge_index, graph.edge_attr)
        return to_dense_batch(h, graph.batch, batch_size=graph.num_graphs)


class PairScorer(nn.Module):
    """Link logit of node pairs: MLP over [h_s * h_d, |h_s - h_d|] (symmetric in s, d): -> [K]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, pairs: Tensor) -> Tensor:
        a, b = h[pairs[0]], h[pairs[1]]
        return self.mlp(torch.cat([a * b, (a - b).abs()], dim=-1)).squeeze(-1)


class S2PretrainHeads(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.link = PairScorer(hidden)
        self.attributes = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 2))


class S2PretrainTask:
    """Link prediction + masked velocity/duration regression on the ``graph`` view (see module doc)."""

    name = "s2-link-mask"
    views = ("graph",)
    masked_columns = [VELOCITY_COL, DURATION_COL]

    def __init__(self, cfg: S2Config) -> None:
        self.cfg = cfg

    def build_heads(self, encoder: S2GraphEncoder) -> nn.Module:
        return S2PretrainHeads(encoder.cfg.hidden)

    def loss(self, encoder: S2GraphEncoder, heads: nn.Module, inputs: dict[str, Any],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = next(encoder.parameters()).device
        graph = inputs["graph"].to(device)
        n = graph.num_nodes
        # Hold out pairs (both directions) so a held-out link cannot be read back from its mirror edge.
        held = holdout_mask(pair_keys(graph.edge_index, n, undirected=True), self.cfg.link_fraction, generator)
        node_mask = select_nodes(n, self.cfg.mask_fraction, generator).to(device)
        features, targets = mask_attributes(encoder.node_features(graph), node_mask, self.masked_columns, MASK_FLAG_COL)
        h = encoder.embed_nodes(features, graph.edge_index[:, ~held], graph.edge_attr[~held])

        pos = graph.edge_index[:, held]
        pos = pos[:, pos[0] < pos[1]]  # one direction per held-out pair
        neg = sample_negative_edges(pos[0], graph.ptr, graph.batch, graph.edge_index, generator, undirected=True)
        if pos.numel() or neg.numel():
            pos_logits, neg_logits = heads.link(h, pos), heads.link(h, neg)
            link = link_bce_loss(pos_logits, neg_logits)
            acc = link_accuracy(pos_logits.detach(), neg_logits.detach())
        else:  # graphs without edges (single notes): nothing to link, keep the graph attached
            link, acc = h.sum() * 0.0, float("nan")
        attr = F.mse_loss(heads.attributes(h[node_mask]), targets) if targets.numel() else h.sum() * 0.0
        total = link + self.cfg.attr_weight * attr
        return total, {"link": float(link.detach()), "attributes": float(attr.detach()), "link_accuracy": acc}


def _build(cfg: S2Config, data: DataSpec) -> S2GraphEncoder:
    return S2GraphEncoder(cfg)


SPEC = register(
    EncoderSpec(
        name="S2",
        track="symbolic",
        role="candidate",
        config_cls=S2Config,
        build=_build,
        views=S2GraphEncoder.views,
        description="GATConv GNN over the homogeneous note graph (temporal/harmonic/voice edges)",
        pretrain=lambda cfg: S2PretrainTask(cfg),
    )
)
