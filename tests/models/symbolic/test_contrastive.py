"""wav2vec-style contrastive pieces: span masks, same-sequence negatives, logits and loss (known values)."""

from __future__ import annotations

import math

import pytest
import torch

from pianoray.models.symbolic.contrastive import (
    contrastive_logits,
    contrastive_loss,
    sample_negatives,
    sample_span_mask,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _runs(row: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a bool [T] row."""
    out, n = [], 0
    for v in row.tolist() + [False]:
        if v:
            n += 1
        elif n:
            out.append(n)
            n = 0
    return out


def test_span_mask_stays_in_valid_frames_and_covers_about_mask_prob() -> None:
    T = 400
    valid = torch.zeros(8, T, dtype=torch.bool)
    lengths = [400, 300, 200, 100, 40, 5, 1, 0]
    for b, n in enumerate(lengths):
        valid[b, :n] = True
    mask = sample_span_mask(T, 0.5, 10, _gen(), valid)
    assert mask.shape == (8, T) and mask.dtype == torch.bool
    assert not bool((mask & ~valid).any())
    for b, n in enumerate(lengths):
        if n == 0:
            assert not bool(mask[b].any())
            continue
        assert bool(mask[b].any())
        # Spans are contiguous and at least min(span, n) long (overlaps merge into longer runs).
        assert all(r >= min(10, n) for r in _runs(mask[b]))
    # 0.5 before overlaps: random spans overlap, so the covered fraction is below 0.5 but not far.
    frac = mask[:3].sum().item() / valid[:3].sum().item()
    assert 0.3 < frac <= 0.5, frac


def test_span_mask_is_seeded_and_checks_shapes() -> None:
    valid = torch.ones(2, 50, dtype=torch.bool)
    assert torch.equal(sample_span_mask(50, 0.3, 5, _gen(3), valid), sample_span_mask(50, 0.3, 5, _gen(3), valid))
    with pytest.raises(ValueError, match="valid must be"):
        sample_span_mask(40, 0.3, 5, _gen(), valid)
    with pytest.raises(ValueError, match="mask_prob"):
        sample_span_mask(50, 0.0, 5, _gen(), valid)


def test_negatives_come_from_other_masked_frames_of_the_same_sequence() -> None:
    mask = torch.zeros(3, 30, dtype=torch.bool)
    mask[0, [2, 3, 4, 10, 20]] = True
    mask[1, [7]] = True  # a single masked frame: nothing to contrast with
    mask[2, 5:25] = True
    idx = sample_negatives(7, mask, _gen())
    assert idx.shape == (3, 30, 7) and idx.dtype == torch.long
    assert bool((idx[~mask] == -1).all())
    assert bool((idx[1] == -1).all())
    for b in (0, 2):
        for t in mask[b].nonzero().flatten().tolist():
            negs = idx[b, t]
            assert bool((negs != t).all())
            assert bool(mask[b, negs].all())


def test_negatives_are_uniform_over_the_others() -> None:
    mask = torch.zeros(1, 10, dtype=torch.bool)
    mask[0, [1, 4, 6, 9]] = True
    idx = sample_negatives(30000, mask, _gen())[0, 4]  # positive = frame 4
    counts = torch.bincount(idx, minlength=10).float() / idx.numel()
    for t in (1, 6, 9):
        assert abs(counts[t].item() - 1 / 3) < 0.015
    assert counts[4] == 0 and counts[[0, 2, 3, 5, 7, 8]].sum() == 0


def test_logits_known_values_and_exclusions() -> None:
    # Targets: frames 0..3 in 2-D; frame 3 duplicates frame 1 exactly.
    targets = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0], [0.0, 2.0]]])
    context = torch.tensor([[[5.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]])
    idx = torch.tensor([[[1, 2], [0, 3], [-1, -1], [1, 2]]])
    logits = contrastive_logits(context, targets, idx, temperature=0.5)
    assert logits.shape == (1, 4, 3)
    # frame 0: cos to itself 1, to frame 1 0, to frame 2 -1 -> divided by 0.5.
    assert torch.allclose(logits[0, 0], torch.tensor([2.0, 0.0, -2.0]))
    # frame 1: positive cos 1 -> 2; frame 0 orthogonal -> 0; frame 3 identical target -> -inf.
    assert logits[0, 1, 0].item() == pytest.approx(2.0) and logits[0, 1, 1].item() == pytest.approx(0.0)
    assert logits[0, 1, 2].item() == float("-inf")
    assert bool(torch.isinf(logits[0, 2]).all())  # no negatives -> the whole row is -inf
    with pytest.raises(ValueError, match="temperature"):
        contrastive_logits(context, targets, idx, temperature=0.0)


def test_loss_known_value_accuracy_and_empty_case() -> None:
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [float("-inf")] * 2]], requires_grad=True)
    idx = torch.tensor([[[1], [0], [-1]]])
    loss, acc = contrastive_loss(logits, idx)
    expected = (math.log(1 + math.exp(-2.0)) + math.log(1 + math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert acc.item() == pytest.approx(0.5)
    loss.backward()
    assert torch.isfinite(logits.grad).all()

    empty = torch.full((1, 2, 2), float("-inf"), requires_grad=True)
    loss, acc = contrastive_loss(empty, torch.full((1, 2, 1), -1))
    assert loss.item() == 0.0 and acc.item() == 0.0
    loss.backward()  # stays on the graph, no NaN
    assert torch.isfinite(empty.grad).all()


def test_contrastive_objective_is_learnable() -> None:
    """A free context tensor optimised against fixed distinct targets drives the loss toward 0."""
    g = _gen(1)
    targets = torch.randn(2, 40, 8, generator=g)
    mask = sample_span_mask(40, 0.6, 4, g, torch.ones(2, 40, dtype=torch.bool))
    idx = sample_negatives(10, mask, g)
    context = torch.randn(2, 40, 8, generator=g, requires_grad=True)
    opt = torch.optim.Adam([context], lr=0.1)
    first = None
    for _ in range(60):
        loss, acc = contrastive_loss(contrastive_logits(context, targets, idx, 0.1), idx)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first and acc.item() == 1.0
