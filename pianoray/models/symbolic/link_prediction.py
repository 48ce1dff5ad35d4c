"""Pure tensor functions for the graph pretraining objectives of S2 and S2H.

Link prediction: hold out some edges (a pair and its reverse together, so the held-out link cannot be
read back from its mirror), encode the graph without them, and score them against sampled non-edges
of the same graph with a binary cross-entropy. Masked attributes: blank some nodes' feature columns,
flag them, and regress the blanked values.

Everything here takes an explicit ``torch.Generator`` (CPU) so pretraining is reproducible; node
indices are global indices into a PyG ``Batch`` (graphs laid out contiguously, ``ptr`` [G+1] the
first node of each graph).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pair_keys(edge_index: Tensor, num_nodes: int, *, undirected: bool) -> Tensor:
    """[2, E] long -> [E] long key per edge; with ``undirected`` (s, d) and (d, s) share a key."""
    src, dst = edge_index[0].long(), edge_index[1].long()
    if undirected:
        src, dst = torch.minimum(src, dst), torch.maximum(src, dst)
    return src * num_nodes + dst


def holdout_mask(keys: Tensor, fraction: float, generator: torch.Generator) -> Tensor:
    """[E] bool, True = held out. Edges with the same key are held out together.

    Each distinct key is held out with probability ``fraction``; if that picks nothing but there are
    edges, one key is held out, so every batch with edges has a positive to score.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"holdout fraction must lie in [0, 1], got {fraction}")
    if keys.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=keys.device)
    unique, inverse = torch.unique(keys.cpu(), return_inverse=True)
    pick = torch.rand(len(unique), generator=generator) < fraction
    if fraction > 0 and not bool(pick.any()):
        pick[torch.randint(len(unique), (1,), generator=generator)] = True
    return pick[inverse].to(keys.device)


def sample_negative_edges(
    src: Tensor,
    ptr: Tensor,
    batch: Tensor,
    existing: Tensor,
    generator: torch.Generator,
    *,
    undirected: bool,
) -> Tensor:
    """For each source node, one random target in the SAME graph that is not linked to it: [2, K].

    src: [P] long global node ids (the positives' sources, so negatives match their degree profile).
    ptr: [G+1] long; batch: [N] long graph id per node; existing: [2, E] the relation's full edge set
    (held-out edges included, so a held-out positive is never drawn as a negative).
    Candidates that hit an existing edge or the source itself are dropped, so K <= P.
    """
    device = src.device
    if src.numel() == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    src_cpu = src.long().cpu()
    g = batch.cpu()[src_cpu]
    lo, hi = ptr.cpu()[g], ptr.cpu()[g + 1]
    dst = lo + (torch.rand(len(src_cpu), generator=generator) * (hi - lo).float()).long().clamp_max(hi - lo - 1)
    n = int(ptr[-1])
    cand = torch.stack([src_cpu, dst])
    taken = torch.isin(pair_keys(cand, n, undirected=undirected), pair_keys(existing.cpu(), n, undirected=undirected))
    ok = (dst != src_cpu) & ~taken
    return cand[:, ok].to(device)


def link_bce_loss(pos_logits: Tensor, neg_logits: Tensor) -> Tensor:
    """Balanced BCE: mean over positives (target 1) + mean over negatives (target 0), halved.

    pos_logits: [P], neg_logits: [K]; an empty side contributes nothing (the other is not halved).
    Balanced so that the dropped colliding negatives do not tilt the prior.
    """
    terms = []
    if pos_logits.numel():
        terms.append(F.binary_cross_entropy_with_logits(pos_logits, torch.ones_like(pos_logits)))
    if neg_logits.numel():
        terms.append(F.binary_cross_entropy_with_logits(neg_logits, torch.zeros_like(neg_logits)))
    if not terms:
        raise ValueError("link_bce_loss needs at least one positive or negative logit")
    return torch.stack(terms).mean()


def link_accuracy(pos_logits: Tensor, neg_logits: Tensor) -> float:
    """Share of logits on the right side of 0 (positives > 0, negatives < 0); a diagnostic part."""
    right = (pos_logits > 0).sum() + (neg_logits < 0).sum()
    total = pos_logits.numel() + neg_logits.numel()
    return float(right) / max(1, total)


def select_nodes(num_nodes: int, fraction: float, generator: torch.Generator) -> Tensor:
    """[N] bool, each node picked with probability ``fraction`` (at least one when N > 0 and fraction > 0)."""
    pick = torch.rand(num_nodes, generator=generator) < fraction
    if num_nodes and fraction > 0 and not bool(pick.any()):
        pick[torch.randint(num_nodes, (1,), generator=generator)] = True
    return pick


def mask_attributes(features: Tensor, node_mask: Tensor, columns: list[int], flag_column: int) -> tuple[Tensor, Tensor]:
    """Blank ``columns`` of the masked nodes and set their flag; return (inputs, targets).

    features: [N, F] scaled node features (the flag column 0 everywhere); node_mask: [N] bool.
    Returns inputs [N, F] (masked rows: columns -> 0, flag -> 1) and targets [M, len(columns)], the
    original values of the masked rows (M = node_mask.sum()), in ``columns`` order.
    """
    node_mask = node_mask.to(features.device)
    targets = features[node_mask][:, columns]
    inputs = features.clone()
    rows = node_mask.nonzero(as_tuple=True)[0]
    inputs[rows[:, None], torch.tensor(columns, device=features.device)[None, :]] = 0.0
    inputs[rows, flag_column] = 1.0
    return inputs, targets
