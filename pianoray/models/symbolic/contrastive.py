"""wav2vec-2.0-style masked contrastive objective, as small pure functions (used by S3's pretraining).

The recipe (Baevski et al. 2020), applied to a sequence of frame features:

1. :func:`sample_span_mask` picks spans of frames to hide (within each sequence's valid frames);
2. the encoder replaces those frames' inputs by a learned mask embedding and contextualises;
3. :func:`sample_negatives` draws, for every masked frame, K distractor frames from the *same* sequence's
   other masked frames (never the frame itself), so the model must tell this moment from other moments
   of the same performance rather than recognise the piece;
4. :func:`contrastive_logits` scores the true target (index 0) and the K distractors by cosine
   similarity / temperature;
5. :func:`contrastive_loss` is the cross-entropy with class 0 over the masked frames that have negatives.

Shapes: B sequences, T frames, D feature width, K negatives per masked frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def sample_span_mask(T: int, mask_prob: float, span: int, generator: torch.Generator, valid: Tensor) -> Tensor:
    """Spans of ``span`` frames to mask, placed inside each sequence's valid frames.

    Args:
        T: sequence length (``valid.shape[1]``).
        mask_prob: target fraction of valid frames covered before overlaps; each sequence gets
            ``max(1, round(mask_prob * n_valid / span))`` spans (overlapping spans merge, so the covered
            fraction is a little lower, as in wav2vec 2.0).
        span: frames per span (clipped to the sequence's valid length).
        generator: torch RNG (CPU) for the span starts.
        valid: bool [B, T], True = a real frame. Valid frames are assumed to be a prefix (padded batches).
    Returns:
        bool [B, T]: True = masked; always False on padding; every sequence with >= 1 valid frame gets at
        least one masked frame.
    """
    if valid.dim() != 2 or valid.shape[1] != T:
        raise ValueError(f"sample_span_mask: valid must be [B, {T}], got {tuple(valid.shape)}")
    if not 0.0 < mask_prob <= 1.0 or span < 1:
        raise ValueError(f"sample_span_mask: need 0 < mask_prob <= 1 and span >= 1, got {mask_prob}, {span}")
    B = valid.shape[0]
    n_valid = valid.sum(1).cpu()  # [B]
    out = torch.zeros(B, T, dtype=torch.bool)
    for b in range(B):
        n = int(n_valid[b])
        if n == 0:
            continue
        width = min(span, n)
        n_spans = max(1, round(mask_prob * n / width))
        starts = torch.randint(0, n - width + 1, (n_spans,), generator=generator)
        # [n_spans, width] frame indices of every span, scattered into the row.
        frames = (starts[:, None] + torch.arange(width)[None, :]).reshape(-1)
        out[b, frames] = True
    return out.to(valid.device) & valid


def sample_negatives(n_neg: int, mask: Tensor, generator: torch.Generator) -> Tensor:
    """For each masked frame, ``n_neg`` other masked frames of the same sequence (with replacement).

    Drawing from the sequence's own masked frames (not from other sequences, nor from unmasked frames
    the context saw) is wav2vec 2.0's choice: distractors share the performance's piece, instrument
    and recording, so only the moment-specific content separates them from the positive.

    Args:
        n_neg: K, negatives per masked frame.
        mask: bool [B, T], True = masked.
        generator: torch RNG (CPU).
    Returns:
        long [B, T, K]: time indices into the same sequence; never the frame itself; -1 where the frame
        is not masked or its sequence has fewer than 2 masked frames (nothing to contrast with).
    """
    if n_neg < 1:
        raise ValueError(f"sample_negatives: n_neg must be >= 1, got {n_neg}")
    device = mask.device
    m = mask.cpu().bool()
    B, T = m.shape
    count = m.sum(1)  # [B] masked frames per sequence
    rank = m.long().cumsum(1) - 1  # [B, T] rank of a masked frame among its sequence's masked frames
    # Masked time indices first, in time order (stable sort on "not masked").
    masked_times = torch.argsort((~m).to(torch.int8), dim=1, stable=True)  # [B, T]
    # Draw j uniformly among the other count-1 masked frames: j in [0, count-2], then skip the positive.
    others = (count - 1).clamp(min=1).to(torch.float64)[:, None, None]  # [B, 1, 1]
    j = (torch.rand(B, T, n_neg, generator=generator, dtype=torch.float64) * others).floor().long()
    j = j + (j >= rank[:, :, None]).long()
    idx = torch.gather(masked_times, 1, j.clamp(max=T - 1).reshape(B, T * n_neg)).reshape(B, T, n_neg)
    usable = m & (count >= 2)[:, None]
    return torch.where(usable[:, :, None], idx, torch.full_like(idx, -1)).to(device)


def contrastive_logits(context: Tensor, targets: Tensor, negatives_idx: Tensor, temperature: float) -> Tensor:
    """Cosine similarity / temperature of each frame's context to its target (index 0) and negatives.

    Similarities come from one [B, T, T] matrix per batch, so no [B, T, K, D] tensor is built.
    A negative whose target is identical to the positive's (e.g. two silent frames) is not a true
    distractor: its logit is -inf, as in HF's wav2vec 2.0.

    Args:
        context: [B, T, D] contextual outputs. targets: [B, T, D] target features.
        negatives_idx: long [B, T, K] from :func:`sample_negatives` (-1 = no negatives for this frame).
        temperature: > 0.
    Returns:
        [B, T, K + 1] float logits; rows whose ``negatives_idx`` is -1 are all -inf.
    """
    if temperature <= 0:
        raise ValueError(f"contrastive_logits: temperature must be > 0, got {temperature}")
    if context.shape != targets.shape:
        raise ValueError(f"contrastive_logits: context {tuple(context.shape)} != targets {tuple(targets.shape)}")
    c = F.normalize(context.float(), dim=-1)
    t = F.normalize(targets.float(), dim=-1)
    sim = torch.einsum("btd,bsd->bts", c, t)  # [B, T, T]: context at t vs target at s
    positive = sim.diagonal(dim1=1, dim2=2)[:, :, None]  # [B, T, 1]
    safe_idx = negatives_idx.clamp(min=0)
    negative = torch.gather(sim, 2, safe_idx)  # [B, T, K]
    # Same-target negatives: compare raw targets exactly (distance 0), not the normalised ones.
    same = torch.cdist(targets.float(), targets.float()) == 0  # [B, T, T]
    duplicate = torch.gather(same, 2, safe_idx)
    negative = negative.masked_fill(duplicate, float("-inf"))
    logits = torch.cat([positive, negative], dim=-1) / temperature
    return logits.masked_fill((negatives_idx[:, :, :1] < 0), float("-inf"))


def contrastive_loss(logits: Tensor, negatives_idx: Tensor) -> tuple[Tensor, Tensor]:
    """Cross-entropy with the positive (class 0) over the frames that have negatives.

    Args:
        logits: [B, T, K + 1] from :func:`contrastive_logits`. negatives_idx: long [B, T, K].
    Returns:
        (scalar mean loss, scalar accuracy: fraction of those frames whose positive has the top logit).
        Zero (attached to the graph) and accuracy 0 when no frame qualifies.
    """
    rows = negatives_idx[:, :, 0] >= 0  # [B, T]
    if not bool(rows.any()):
        # A zero that stays on the graph (so backward() works); -inf entries are zeroed first (-inf * 0 = nan).
        zero = logits.masked_fill(~torch.isfinite(logits), 0.0).sum() * 0.0
        return zero, logits.new_zeros(())
    picked = logits[rows]  # [M, K + 1]
    target = torch.zeros(picked.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(picked, target)
    accuracy = (picked.argmax(-1) == 0).float().mean().detach()
    return loss, accuracy
