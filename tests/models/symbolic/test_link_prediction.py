"""Pure functions of the graph pretraining objectives: known values and properties."""

from __future__ import annotations

import math

import pytest
import torch

from pianoray.models.symbolic.link_prediction import (
    holdout_mask,
    link_accuracy,
    link_bce_loss,
    mask_attributes,
    pair_keys,
    sample_negative_edges,
    select_nodes,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_pair_keys_directed_and_undirected() -> None:
    ei = torch.tensor([[0, 2, 1], [2, 0, 3]])
    assert pair_keys(ei, 4, undirected=False).tolist() == [2, 8, 7]
    assert pair_keys(ei, 4, undirected=True).tolist() == [2, 2, 7]


def test_holdout_keeps_mirror_edges_together_and_tracks_fraction() -> None:
    g = _gen(1)
    src = torch.randint(0, 200, (3000,), generator=g)
    dst = torch.randint(0, 200, (3000,), generator=g)
    ei = torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1)  # every pair both ways
    keys = pair_keys(ei, 200, undirected=True)
    held = holdout_mask(keys, 0.2, _gen(2))
    # a pair is held out in both directions or in neither
    assert torch.equal(held[:3000], held[3000:])
    assert 0.15 < held.float().mean().item() < 0.25


def test_holdout_picks_at_least_one_and_rejects_bad_fraction() -> None:
    keys = torch.tensor([5, 5, 9])
    for seed in range(5):
        assert holdout_mask(keys, 1e-6, _gen(seed)).any()
    assert holdout_mask(torch.zeros(0, dtype=torch.long), 0.5, _gen()).numel() == 0
    with pytest.raises(ValueError, match="fraction"):
        holdout_mask(keys, 1.5, _gen())


def test_negatives_stay_in_their_graph_and_avoid_edges() -> None:
    # two graphs: nodes 0..4 and 5..9, each a complete graph minus the pair (0,1) / (5,6)
    ptr = torch.tensor([0, 5, 10])
    batch = torch.tensor([0] * 5 + [1] * 5)
    pairs = [(a, b) for lo in (0, 5) for a in range(lo, lo + 5) for b in range(lo, lo + 5) if a != b]
    pairs = [p for p in pairs if set(p) not in ({0, 1}, {5, 6})]
    existing = torch.tensor(pairs).T
    src = torch.tensor([0, 1, 5, 6] * 50)
    neg = sample_negative_edges(src, ptr, batch, existing, _gen(3), undirected=True)
    assert neg.shape[0] == 2 and neg.shape[1] > 0
    assert torch.equal(batch[neg[0]], batch[neg[1]])  # same graph
    assert (neg[0] != neg[1]).all()  # no self pair
    # the only non-edges are the removed pairs
    assert {frozenset(p) for p in neg.T.tolist()} == {frozenset({0, 1}), frozenset({5, 6})}


def test_directed_negatives_allow_the_reverse_of_an_edge() -> None:
    ptr, batch = torch.tensor([0, 2]), torch.tensor([0, 0])
    existing = torch.tensor([[0], [1]])  # 0 -> 1 only
    neg = sample_negative_edges(torch.tensor([1] * 20), ptr, batch, existing, _gen(), undirected=False)
    assert neg.shape[1] > 0 and (neg == torch.tensor([[1], [0]])).all()
    assert sample_negative_edges(torch.tensor([0] * 20), ptr, batch, existing, _gen(), undirected=False).shape[1] == 0


def test_link_bce_known_values() -> None:
    zero = torch.zeros(3)
    assert link_bce_loss(zero, zero).item() == pytest.approx(math.log(2))
    pos, neg = torch.tensor([2.0]), torch.tensor([-1.0, 0.0])
    expected = 0.5 * (math.log1p(math.exp(-2.0)) + 0.5 * (math.log1p(math.exp(-1.0)) + math.log(2)))
    assert link_bce_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    # an empty side drops out instead of producing NaN
    assert link_bce_loss(pos, torch.zeros(0)).item() == pytest.approx(math.log1p(math.exp(-2.0)), rel=1e-6)
    with pytest.raises(ValueError):
        link_bce_loss(torch.zeros(0), torch.zeros(0))
    assert link_accuracy(torch.tensor([1.0, -1.0]), torch.tensor([-2.0, -3.0])) == pytest.approx(0.75)


def test_select_nodes_and_mask_attributes() -> None:
    assert select_nodes(4, 1e-6, _gen()).sum() == 1
    assert select_nodes(0, 0.5, _gen()).numel() == 0
    feats = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    feats[:, 3] = 0.0  # flag column
    mask = torch.tensor([False, True, False])
    inputs, targets = mask_attributes(feats, mask, [0, 2], flag_column=3)
    assert targets.tolist() == [[4.0, 6.0]]
    assert inputs[1].tolist() == [0.0, 5.0, 0.0, 1.0]
    assert torch.equal(inputs[[0, 2]], feats[[0, 2]])
    assert feats[1, 0] == 4.0  # the input is not modified in place
