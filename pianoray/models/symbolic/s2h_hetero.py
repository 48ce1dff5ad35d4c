"""S2H: a heterogeneous graph network over the onset / during / follow / silence note graph.

The ``hetero_graph`` view has one node type ("note") and seven relations: onset (simultaneous, stored in
both directions), during, follow, silence and their reverses ``rev_*`` (``pianoray.data.symbolic.graphs``).
Each layer is a ``HeteroConv`` with one GATConv per relation (edge attributes: interval and onset gap),
summed, then residual + LayerNorm: the relations keep separate attention weights, so "starts while I
sound" and "starts after my rest" carry different messages.

    x [N, 6] raw -> scaled node features [N, 22] (shared with S2) -> Linear -> L x HeteroConv block
    -> h [N, D] -> per-graph tokens [B, T, D] (to_dense_batch) -> pooling -> z [B, 512]

GATConv here adds no self-loops (with seven relations they would be counted seven times): the residual
carries the node's own state, and a relation with no edges in a batch simply sends no messages.

Pretraining (``S2HPretrainTask``): link prediction per relation. For each base relation some edges
are held out (with their reverse-relation mirrors), the graph is encoded once without them, and each
relation's own scorer separates its held-out edges from same-graph non-edges of that relation (BCE).
The loss is the mean over the relations that have edges in the batch; each is reported as a part.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch
from pydantic import Field, model_validator
from torch import Tensor, nn
from torch_geometric.nn import GATConv, HeteroConv, SAGEConv
from torch_geometric.utils import to_dense_batch

from pianoray.data.batch import Batch
from pianoray.data.symbolic.graphs import HETERO_DIRECTED, HETERO_RELATIONS
from pianoray.models.contract import PooledEncoder
from pianoray.models.registry import DataSpec, EncoderSpec, ModelConfig, register
from pianoray.models.symbolic.link_prediction import (
    holdout_mask,
    link_accuracy,
    link_bce_loss,
    pair_keys,
    sample_negative_edges,
)
from pianoray.models.symbolic.s2_graph import NODE_DIM, log_time, scale_note_features

NODE = "note"
ALL_RELATIONS = HETERO_RELATIONS + tuple(f"rev_{r}" for r in HETERO_DIRECTED)
HETERO_EDGE_DIM = 2


def edge_type(relation: str) -> tuple[str, str, str]:
    return (NODE, relation, NODE)


def scale_hetero_edge_features(edge_attr: Tensor) -> Tensor:
    """Raw [E, 2] (interval / 12, onset gap s) -> [E, 2]: interval clipped to +-4 octaves, gap log-scaled."""
    a = edge_attr.float()
    return torch.cat([a[:, :1].clamp(-4.0, 4.0), log_time(a[:, 1:2])], dim=1)


class S2HConfig(ModelConfig):
    """Demo size by default; ``S2HConfig.full()`` is the seed's size."""

    hidden: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1, description="GATConv heads; hidden must divide by it (ignored for sage)")
    conv: Literal["gat", "sage"] = Field("gat", description="per-relation layer: GATConv (edge attrs) or SAGEConv")
    link_fraction: float = Field(0.15, gt=0, le=0.5, description="pretraining: share of each relation's edges held out")

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "S2HConfig":
        if self.conv == "gat" and self.hidden % self.heads:
            raise ValueError(f"S2HConfig: hidden ({self.hidden}) must be divisible by heads ({self.heads})")
        return self

    @classmethod
    def full(cls, **overrides: Any) -> "S2HConfig":
        """Cluster size: 4 HeteroConv layers x 256 wide x 8 heads (1.9M backbone parameters, 2.3M in all)."""
        return cls(**({"hidden": 256, "layers": 4, "heads": 8} | overrides))


class HeteroBlock(nn.Module):
    """h -> LayerNorm(h + Dropout(GELU(sum over relations of conv_r(h, edges_r)))): [N, D] -> [N, D]."""

    def __init__(self, cfg: S2HConfig) -> None:
        super().__init__()
        self.use_attr = cfg.conv == "gat"

        def conv(_: str) -> nn.Module:
            if self.use_attr:
                return GATConv(cfg.hidden, cfg.hidden // cfg.heads, heads=cfg.heads, edge_dim=HETERO_EDGE_DIM,
                               dropout=cfg.dropout, add_self_loops=False)
            return SAGEConv(cfg.hidden, cfg.hidden)

        self.conv = HeteroConv({edge_type(r): conv(r) for r in ALL_RELATIONS}, aggr="sum")
        self.norm = nn.LayerNorm(cfg.hidden)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, h: Tensor, edge_index: dict, edge_attr: dict) -> Tensor:
        if self.use_attr:
            out = self.conv({NODE: h}, edge_index, edge_attr_dict=edge_attr)
        else:
            out = self.conv({NODE: h}, edge_index)
        if NODE not in out:  # no relation present at all: nothing to pass
            return h
        return self.norm(h + self.dropout(torch.nn.functional.gelu(out[NODE])))


class S2HHeteroEncoder(PooledEncoder):
    """HeteroConv network over the ``hetero_graph`` view; tokens are the node embeddings per graph."""

    views: ClassVar[tuple[str, ...]] = ("hetero_graph",)

    def __init__(self, cfg: S2HConfig) -> None:
        super().__init__(cfg.hidden, dropout=cfg.dropout)
        self.cfg = cfg
        self.input = nn.Sequential(nn.Linear(NODE_DIM, cfg.hidden), nn.LayerNorm(cfg.hidden))
        self.blocks = nn.ModuleList(HeteroBlock(cfg) for _ in range(cfg.layers))

    @staticmethod
    def relations(graph: Any) -> tuple[dict, dict]:
        """PyG hetero batch -> ({edge type: edge_index [2, E]}, {edge type: raw edge_attr [E, 2]}) for the
        known relations present in it (unknown relation names are an error, naming them)."""
        index, attr = {}, {}
        for et, ei in graph.edge_index_dict.items():
            if et[1] not in ALL_RELATIONS:
                raise KeyError(f"S2H: unknown relation {et[1]!r} in the hetero graph; known: {ALL_RELATIONS}")
            index[et] = ei
            store = graph[et]
            attr[et] = store.edge_attr if "edge_attr" in store else ei.new_zeros(ei.shape[1], HETERO_EDGE_DIM).float()
        return index, attr

    def node_features(self, graph: Any) -> Tensor:
        store = graph[NODE]
        return scale_note_features(store.x, store.batch, graph.num_graphs)

    def embed_nodes(self, features: Tensor, edge_index: dict, edge_attr: dict) -> Tensor:
        """features [N, NODE_DIM]; {edge type: [2, E]}; {edge type: raw [E, 2]} -> h [N, D]."""
        h = self.input(features)
        scaled = {et: scale_hetero_edge_features(a) for et, a in edge_attr.items()}
        for block in self.blocks:
            h = block(h, edge_index, scaled)
        return h

    def sequence(self, batch: Batch) -> tuple[Tensor, Tensor]:
        try:
            graph = batch.inputs["hetero_graph"]
        except KeyError:
            raise KeyError(f"S2H reads batch.inputs['hetero_graph'], but the batch has {sorted(batch.inputs)}") from None
        index, attr = self.relations(graph)
        h = self.embed_nodes(self.node_features(graph), index, attr)
        return to_dense_batch(h, graph[NODE].batch, batch_size=graph.num_graphs)


class DirectedPairScorer(nn.Module):
    """Link logit for s -> d: MLP over [h_s, h_d, h_s * h_d] (order matters, as during/follow/silence
    are directed): -> [K]."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3 * hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, h: Tensor, pairs: Tensor) -> Tensor:
        a, b = h[pairs[0]], h[pairs[1]]
        return self.mlp(torch.cat([a, b, a * b], dim=-1)).squeeze(-1)


def holdout_relations(edge_index: dict, num_nodes: int, fraction: float,
                      generator: torch.Generator) -> tuple[dict, dict]:
    """Choose held-out edges per base relation; they (and their ``rev_*`` mirrors) leave the input.

    edge_index: {edge type: [2, E]}. Returns (keep {edge type: [E] bool} for every relation given,
    held-out positives {base relation: [2, P]}, one direction per pair; [2, 0] where a present
    relation has no edges). "onset" is symmetric: its pairs are held out in both directions.
    """
    keep = {et: torch.ones(ei.shape[1], dtype=torch.bool, device=ei.device) for et, ei in edge_index.items()}
    positives: dict[str, Tensor] = {}
    for rel in HETERO_RELATIONS:
        et = edge_type(rel)
        if et not in edge_index:
            continue
        ei = edge_index[et]
        undirected = rel not in HETERO_DIRECTED
        keys = pair_keys(ei, num_nodes, undirected=undirected)
        held = holdout_mask(keys, fraction, generator)
        keep[et] = ~held
        pos = ei[:, held]
        positives[rel] = pos[:, pos[0] < pos[1]] if undirected else pos
        rev = edge_type(f"rev_{rel}")
        if not undirected and rev in edge_index:
            mirror = pair_keys(edge_index[rev].flip(0), num_nodes, undirected=False)
            keep[rev] = ~torch.isin(mirror, keys[held])
    return keep, positives


class S2HPretrainTask:
    """Per-relation link prediction on the ``hetero_graph`` view (see the module docstring)."""

    name = "s2h-relation-links"
    views = ("hetero_graph",)

    def __init__(self, cfg: S2HConfig) -> None:
        self.cfg = cfg

    def build_heads(self, encoder: S2HHeteroEncoder) -> nn.Module:
        return nn.ModuleDict({rel: DirectedPairScorer(encoder.cfg.hidden) for rel in HETERO_RELATIONS})

    def loss(self, encoder: S2HHeteroEncoder, heads: nn.Module, inputs: dict[str, Any],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        device = next(encoder.parameters()).device
        graph = inputs["hetero_graph"].to(device)
        store = graph[NODE]
        n = store.num_nodes
        index, attr = encoder.relations(graph)
        keep, positives = holdout_relations(index, n, self.cfg.link_fraction, generator)
        kept = {et: ei[:, keep[et]] for et, ei in index.items()}
        kept_attr = {et: a[keep[et]] for et, a in attr.items()}
        h = encoder.embed_nodes(encoder.node_features(graph), kept, kept_attr)

        losses, parts = [], {}
        for rel, pos in positives.items():
            neg = sample_negative_edges(pos[0], store.ptr, store.batch, index[edge_type(rel)], generator,
                                        undirected=rel not in HETERO_DIRECTED)
            if pos.numel() == 0 and neg.numel() == 0:
                continue
            pos_logits, neg_logits = heads[rel](h, pos), heads[rel](h, neg)
            loss = link_bce_loss(pos_logits, neg_logits)
            losses.append(loss)
            parts[f"link_{rel}"] = float(loss.detach())
            parts[f"accuracy_{rel}"] = link_accuracy(pos_logits.detach(), neg_logits.detach())
        total = torch.stack(losses).mean() if losses else h.sum() * 0.0
        parts["relations"] = float(len(losses))
        return total, parts


def _build(cfg: S2HConfig, data: DataSpec) -> S2HHeteroEncoder:
    return S2HHeteroEncoder(cfg)


SPEC = register(
    EncoderSpec(
        name="S2H",
        track="symbolic",
        role="candidate",
        config_cls=S2HConfig,
        build=_build,
        views=S2HHeteroEncoder.views,
        description="HeteroConv (GATConv per relation) over the onset/during/follow/silence note graph",
        pretrain=lambda cfg: S2HPretrainTask(cfg),
    )
)
