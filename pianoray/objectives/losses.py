"""Training losses: regression, dimension-wise ranking, piece InfoNCE, invariance, and the tier-masked
multi-task total (torch).

Every loss is computed in float32 with autocast off (so bf16 autocast on a GPU does not round the
similarities or the pair differences), and returns a scalar that stays attached to the graph even
when it has nothing to average over (an empty sum, exactly 0): the training loop can always call
``backward`` on the total.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from pianoray.data.tiers import TIER_TERMS, Tier

if TYPE_CHECKING:
    from pianoray.config import LossConfig
    from pianoray.data.batch import Batch

TERMS = ("regression", "ranking", "contrastive", "invariance")

# Label gaps within this of the threshold count as reaching it, exactly as in the pairwise-accuracy
# metric (pianoray.objectives.metrics.GAP_TOLERANCE): 0.55 - 0.50 is 0.0499999 in float32.
GAP_TOLERANCE = 1e-6


def _zero(x: Tensor) -> Tensor:
    """A 0 scalar connected to ``x``'s graph (an empty sum: no NaN leaks in even if x holds NaN)."""
    return x.reshape(-1)[:0].sum()


def _no_autocast(device: torch.device) -> torch.autocast:
    return torch.autocast(device_type=device.type, enabled=False)


def mse_loss(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked samples and all dimensions.

    Args:
        pred: [B, N] predictions. target: [B, N]. mask: [B] bool, True = sample has a target.
    Returns:
        scalar: mean over mask.sum() * N entries; 0 (attached to ``pred``) if the mask is empty.
    """
    if pred.shape != target.shape:
        raise ValueError(f"mse_loss: pred has shape {tuple(pred.shape)}, target {tuple(target.shape)}")
    mask = mask.to(device=pred.device, dtype=torch.bool)
    with _no_autocast(pred.device):
        if not bool(mask.any()):
            return _zero(pred.float())
        return ((pred[mask].float() - target[mask].float()) ** 2).mean()


def ranking_loss(
    scores: Tensor,
    target: Tensor,
    group: Tensor,
    *,
    kind: str = "logistic",
    margin: float = 0.1,
    threshold: float = 0.05,
) -> Tensor:
    """DimensionWiseRankingLoss: order every within-group pair in every dimension like its targets.

    For each dimension n and each unordered pair i < j with group[i] == group[j] >= 0 and
    |target[i, n] - target[j, n]| >= threshold, with d = (scores[i, n] - scores[j, n]) * sign(target gap):
    logistic: softplus(-d); margin: relu(margin - d).

    The threshold is 0.05 on the [0, 1] label scale by default: the same threshold pairwise accuracy
    uses, so the loss trains exactly the pairs the selection metric scores (raters cannot separate
    closer performances; ranking them would fit rater noise).

    Args:
        scores: [B, N] ranking-head outputs. target: [B, N] values to order by (labels or placement
            scores). group: [B] long, -1 = in no pair.
    Returns:
        scalar: mean over valid (pair, dimension) entries; 0 (attached to ``scores``) if none.
    """
    if kind not in ("logistic", "margin"):
        raise ValueError(f"ranking_loss: kind must be 'logistic' or 'margin', got {kind!r}")
    if scores.shape != target.shape:
        raise ValueError(f"ranking_loss: scores has shape {tuple(scores.shape)}, target {tuple(target.shape)}")
    with _no_autocast(scores.device):
        s = scores.float()
        t = target.to(s.device).float()
        g = group.to(s.device).long()
        b = s.shape[0]
        upper = torch.ones(b, b, dtype=torch.bool, device=s.device).triu(1)  # each pair once
        same = (g[:, None] == g[None, :]) & (g[:, None] >= 0) & upper  # [B, B]
        dt = t[:, None, :] - t[None, :, :]  # [B, B, N]
        valid = same[:, :, None] & (dt.abs() >= threshold - GAP_TOLERANCE) & (dt != 0)
        if not bool(valid.any()):
            return _zero(s)
        d = (s[:, None, :] - s[None, :, :]) * torch.sign(dt)
        d = d[valid]
        per_entry = F.softplus(-d) if kind == "logistic" else F.relu(margin - d)
        return per_entry.mean()


def info_nce_loss(z: Tensor, piece: Tensor, performer: Tensor, *, temperature: float = 0.07) -> Tensor:
    """Piece-level multi-positive InfoNCE: other performers of the same piece are positives.

    For an anchor i with piece[i] >= 0:
      positives P(i) = {j != i : piece[j] == piece[i], not the same known performer};
      candidates C(i) = {j != i : piece[j] >= 0, not (same piece and same known performer)}
        (the positives plus every sample of another piece; a same-piece same-performer sample is
        neither a positive nor a fair negative, so it is left out of the denominator);
      loss_i = mean_{p in P(i)} -log( exp(s_ip) / sum_{j in C(i)} exp(s_ij) ),  s = cos(z_i, z_j) / temperature.
    "Same known performer" means performer[i] == performer[j] >= 0 (an unknown performer, -1, counts
    as different). Samples with piece -1 take no part at all (unknown piece: not a safe negative).

    Args:
        z: [B, D] embeddings. piece: [B] long, -1 = none. performer: [B] long, -1 = unknown.
    Returns:
        scalar: mean of loss_i over anchors with >= 1 positive; 0 (attached to ``z``) if none.
    """
    with _no_autocast(z.device):
        zf = F.normalize(z.float(), dim=-1)
        pc = piece.to(z.device).long()
        pf = performer.to(z.device).long()
        b = zf.shape[0]
        eye = torch.eye(b, dtype=torch.bool, device=z.device)
        known = pc >= 0
        same_piece = (pc[:, None] == pc[None, :]) & known[:, None] & known[None, :] & ~eye
        same_performer = (pf[:, None] == pf[None, :]) & (pf[:, None] >= 0)
        positive = same_piece & ~same_performer  # [B, B]
        candidate = known[:, None] & known[None, :] & ~eye & ~(same_piece & same_performer)
        anchors = positive.any(dim=1)
        if not bool(anchors.any()):
            return _zero(zf)
        sim = (zf @ zf.T) / temperature  # [B, B]
        log_prob = torch.log_softmax(sim[anchors].masked_fill(~candidate[anchors], float("-inf")), dim=1)
        pos = positive[anchors]
        # where() rather than a product: log_prob is -inf off the candidates and -inf * 0 is NaN.
        per_anchor = -torch.where(pos, log_prob, torch.zeros_like(log_prob)).sum(dim=1) / pos.sum(dim=1)
        return per_anchor.mean()


def invariance_loss(z: Tensor, pair: Tensor) -> Tensor:
    """Mean squared distance between each sample's embedding and its augmented twin's.

    Args:
        z: [B, D]. pair: [B] long, the batch index of the twin, -1 = none. A pair listed from both
            sides (pair[i] == j and pair[j] == i) counts once.
    Returns:
        scalar: mean over pairs and dimensions of (z[i] - z[j])^2; 0 (attached to ``z``) if no pair.
    """
    b = z.shape[0]
    p = pair.to(z.device).long()
    if bool(((p < -1) | (p >= b)).any()):
        raise ValueError(f"invariance_loss: pair holds indices outside [-1, {b}): {p.tolist()}")
    idx = torch.arange(b, device=z.device)
    has = (p >= 0) & (p != idx)
    with _no_autocast(z.device):
        zf = z.float()
        if not bool(has.any()):
            return _zero(zf)
        a, c = idx[has], p[has]
        lo, hi = torch.minimum(a, c), torch.maximum(a, c)
        key = torch.unique(lo * b + hi)
        i, j = key // b, key % b
        return ((zf[i] - zf[j]) ** 2).mean()


def _carries(tier: Tensor, term: str) -> Tensor:
    """[B] bool: True where the sample's tier contributes to ``term`` (TIER_TERMS)."""
    table = torch.zeros(max(int(t) for t in Tier) + 1, dtype=torch.bool, device=tier.device)
    for t, terms in TIER_TERMS.items():
        if term in terms:
            table[int(t)] = True
    tl = tier.long()
    if bool(((tl < 0) | (tl >= table.numel())).any()):
        raise ValueError(f"multitask_loss: batch.tier holds values outside 1..4: {sorted(set(tl.tolist()))}")
    return table[tl]


def multitask_loss(
    regression: Tensor,
    scores: Tensor,
    z: Tensor,
    batch: "Batch",
    weights: "LossConfig",
    *,
    terms: Iterable[str] | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """L = L_reg + lambda_rank * L_rank + lambda_contrastive * L_con + lambda_invariance * L_inv.

    Each term sees only the samples whose tier carries it (``TIER_TERMS``):
      regression: has_labels & tier T1 (mse_loss on labels);
      ranking: rank_group of T1/T2 samples, -1 elsewhere (ranking_loss on rank_target);
      contrastive: piece of T3 samples, -1 elsewhere (info_nce_loss);
      invariance: pair of T4 samples, -1 elsewhere (invariance_loss).

    Args:
        regression, scores: [B, N] head outputs. z: [B, D] embedding.
        batch: a ``pianoray.data.batch.Batch``. weights: a ``pianoray.config.LossConfig``.
        terms: the term names to run (default all four); e.g. {"contrastive", "invariance"} for a
            self-supervised stage. A term whose lambda is 0 is reported but not added to the total.
    Returns:
        (total scalar attached to the graph, parts {term: detached float32 scalar, "total": ...}).
    """
    run = set(TERMS if terms is None else terms)
    unknown = run - set(TERMS)
    if unknown:
        raise ValueError(f"multitask_loss: unknown terms {sorted(unknown)}; expected a subset of {list(TERMS)}")
    dev = z.device
    tier = batch.tier.to(dev)
    minus_one = torch.full_like(tier, -1, dtype=torch.long)
    lam = {
        "regression": 1.0,
        "ranking": weights.lambda_rank,
        "contrastive": weights.lambda_contrastive,
        "invariance": weights.lambda_invariance,
    }

    def compute(term: str) -> Tensor:
        if term == "regression":
            mask = batch.has_labels.to(dev).bool() & _carries(tier, "regression")
            return mse_loss(regression, batch.labels.to(dev), mask)
        if term == "ranking":
            group = torch.where(_carries(tier, "ranking"), batch.rank_group.to(dev).long(), minus_one)
            return ranking_loss(
                scores,
                batch.rank_target.to(dev),
                group,
                kind=weights.ranking,
                margin=weights.margin,
                threshold=weights.rank_threshold,
            )
        if term == "contrastive":
            piece = torch.where(_carries(tier, "contrastive"), batch.piece.to(dev).long(), minus_one)
            return info_nce_loss(z, piece, batch.performer.to(dev), temperature=weights.temperature)
        pair = torch.where(_carries(tier, "invariance"), batch.pair.to(dev).long(), minus_one)
        # A twin that is not itself a T4 sample is not an invariance pair either.
        twin_ok = torch.zeros_like(pair, dtype=torch.bool)
        has = pair >= 0
        twin_ok[has] = _carries(tier, "invariance")[pair[has]]
        return invariance_loss(z, torch.where(twin_ok, pair, minus_one))

    total = _zero(z.float())
    parts: dict[str, Tensor] = {}
    for term in TERMS:
        if term not in run:
            continue
        if lam[term] == 0:
            with torch.no_grad():
                parts[term] = compute(term).detach().float()
            continue
        value = compute(term)
        parts[term] = value.detach().float()
        total = total + lam[term] * value
    parts["total"] = total.detach().float()
    return total, parts
