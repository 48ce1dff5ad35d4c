"""Known-value tests for the training losses (expected numbers worked out by hand in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from pianoray.config import LossConfig
from pianoray.data.batch import Batch
from pianoray.objectives.losses import info_nce_loss, invariance_loss, mse_loss, multitask_loss, ranking_loss


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def t(x, dtype=torch.float32) -> torch.Tensor:  # noqa: ANN001
    return torch.tensor(x, dtype=dtype)


def L(x) -> torch.Tensor:  # noqa: ANN001
    return torch.tensor(x, dtype=torch.long)


# ------------------------------------------------------------------------------------------ mse


def test_mse_known_value_ignores_masked_rows() -> None:
    pred = t([[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]])
    target = t([[0.0, 0.0], [1.0, 1.0], [5.0, 5.0]])
    # squared errors of the two kept rows: 1, 4, 4, 9 -> 18 / 4
    assert mse_loss(pred, target, torch.tensor([True, True, False])).item() == pytest.approx(4.5)


def test_mse_empty_mask_is_zero_with_grad() -> None:
    pred = t([[1.0, 2.0]]).requires_grad_()
    loss = mse_loss(pred, t([[0.0, 0.0]]), torch.tensor([False]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_mse_shape_mismatch_names_both_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(2, 3\)"):
        mse_loss(torch.zeros(2, 2), torch.zeros(2, 3), torch.ones(2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------ ranking

# One group of three (pairs (0,1): target gap -0.4, score gap -1 -> d = +1; (0,2): -0.2, -3 -> d = +3;
# (1,2): +0.2, -2 -> d = -2), plus traps: sample 3 has group -1, sample 4 is alone in group 9.
SCORES = [[0.0], [1.0], [3.0], [0.0], [7.0]]
TARGET = [[0.1], [0.5], [0.3], [0.9], [0.0]]
GROUP = [0, 0, 0, -1, 9]


def test_ranking_logistic_known_value() -> None:
    loss = ranking_loss(t(SCORES), t(TARGET), L(GROUP), kind="logistic")
    expected = (softplus(-1.0) + softplus(-3.0) + softplus(2.0)) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_ranking_margin_known_value() -> None:
    loss = ranking_loss(t(SCORES), t(TARGET), L(GROUP), kind="margin", margin=0.1)
    # relu(0.1 - 1) = 0, relu(0.1 - 3) = 0, relu(0.1 + 2) = 2.1
    assert loss.item() == pytest.approx(2.1 / 3, rel=1e-6)


def test_ranking_threshold_drops_close_pairs_per_dimension() -> None:
    # dim 0: gap 0.04 (dropped); dim 1: gap 0.05 in float32 (kept: 0.55 - 0.50 rounds below 0.05).
    scores = t([[0.0, 0.0], [2.0, 2.0]])
    target = t([[0.50, 0.50], [0.54, 0.55]])
    loss = ranking_loss(scores, target, L([3, 3]), threshold=0.05)
    assert loss.item() == pytest.approx(softplus(-2.0), rel=1e-6)


def test_ranking_no_valid_pair_is_zero_with_grad() -> None:
    scores = t([[1.0], [2.0]]).requires_grad_()
    loss = ranking_loss(scores, t([[0.5], [0.5]]), L([0, 0]))
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()


def test_ranking_gradient_pushes_wrong_pair_apart() -> None:
    scores = t([[1.0], [0.0]]).requires_grad_()  # sample 1 has the higher target but the lower score
    ranking_loss(scores, t([[0.2], [0.8]]), L([0, 0])).backward()
    assert scores.grad[0, 0] > 0 and scores.grad[1, 0] < 0


def test_ranking_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind"):
        ranking_loss(torch.zeros(2, 1), torch.zeros(2, 1), L([0, 0]), kind="hinge")


# ------------------------------------------------------------------------------------------ InfoNCE


def test_info_nce_known_value_with_same_performer_excluded() -> None:
    # z (unit vectors): 0 = (1,0), 1 = (0.6,0.8), 2 = (0,1), 3 = (-1,0), 4 = (1,0) with unknown piece.
    z = t([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [-1.0, 0.0], [1.0, 0.0]])
    piece = L([0, 0, 1, 0, -1])
    performer = L([0, 1, 2, 0, 5])
    tau = 0.5
    cos = {(0, 1): 0.6, (0, 2): 0.0, (1, 2): 0.8, (1, 3): -0.6, (2, 3): 0.0}
    s = {**{k: v / tau for k, v in cos.items()}, **{(b, a): v / tau for (a, b), v in cos.items()}}
    e = {k: math.exp(v) for k, v in s.items()}
    # anchor 0: positive 1 (3 shares piece AND performer 0 -> out of the denominator), candidates {1, 2}
    l0 = -math.log(e[0, 1] / (e[0, 1] + e[0, 2]))
    # anchor 1: positives {0, 3}, candidates {0, 2, 3}
    d1 = e[1, 0] + e[1, 2] + e[1, 3]
    l1 = (-math.log(e[1, 0] / d1) - math.log(e[1, 3] / d1)) / 2
    # anchor 3: positive 1 (0 is the same performer), candidates {1, 2}; anchor 2 has no positive;
    # sample 4 (piece -1) is nowhere.
    l3 = -math.log(e[3, 1] / (e[3, 1] + e[3, 2]))
    loss = info_nce_loss(z, piece, performer, temperature=tau)
    assert loss.item() == pytest.approx((l0 + l1 + l3) / 3, rel=1e-5)


def test_info_nce_unknown_performers_are_positives_and_scale_free() -> None:
    z = t([[2.0, 0.0], [0.0, 3.0], [5.0, 0.0]])  # cosine, so the norms do not matter
    loss = info_nce_loss(z, L([0, 0, 1]), L([-1, -1, 4]), temperature=1.0)
    # anchor 0: s01 = 0, s02 = 1 -> log(1 + e); anchor 1: s10 = 0, s12 = 0 -> log 2
    assert loss.item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-6)


def test_info_nce_no_positive_is_zero_with_grad() -> None:
    z = torch.randn(3, 4, requires_grad=True)
    loss = info_nce_loss(z, L([0, 0, 1]), L([5, 5, 6]))  # same piece but the same performer
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(z.grad).all()


def test_info_nce_gradient_is_finite_with_masked_entries() -> None:
    z = torch.randn(6, 8, requires_grad=True)
    loss = info_nce_loss(z, L([0, 0, 0, 1, 1, -1]), L([1, 2, 1, 3, 4, -1]))
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


# ------------------------------------------------------------------------------------------ invariance


def test_invariance_known_value_counts_each_pair_once() -> None:
    z = t([[0.0, 0.0], [1.0, 2.0], [3.0, 3.0], [3.0, 5.0]])
    # pairs {0,1} (listed twice) and {2,3} (listed once): squared diffs 1, 4, 0, 4 -> 9 / 4
    assert invariance_loss(z, L([1, 0, 3, -1])).item() == pytest.approx(2.25)


def test_invariance_rejects_out_of_range_pair() -> None:
    with pytest.raises(ValueError, match="pair"):
        invariance_loss(torch.zeros(2, 3), L([5, -1]))


def test_invariance_no_pair_is_zero_with_grad() -> None:
    z = torch.ones(2, 3, requires_grad=True)
    loss = invariance_loss(z, L([-1, -1]))
    assert loss.item() == 0.0 and loss.requires_grad


# ------------------------------------------------------------------------------------------ multitask


def mixed_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, Batch]:
    """Nine samples over the four tiers, with traps: fields set on samples whose tier must ignore them."""
    tier = L([1, 1, 2, 2, 3, 3, 4, 4, 3])
    labels = t([[0.2], [0.8], [0], [0], [1.0], [0], [0], [0], [0]])
    has_labels = torch.tensor([True, True, False, False, True, False, False, False, False])  # 4: trap
    rank_target = t([[0.2], [0.8], [1.0], [0.0], [0.5], [0], [0], [0], [0]])
    rank_group = L([0, 0, 1, 1, 0, -1, 1, -1, -1])  # 4 (T3) and 6 (T4): traps
    piece = L([7, -1, -1, -1, 7, 7, 7, -1, 9])  # 0 (T1) and 6 (T4): traps
    performer = L([3, -1, -1, -1, 1, 2, 4, -1, 1])
    pair = L([1, 0, -1, -1, -1, -1, 7, 6, -1])  # 0/1 (T1): trap
    ids = [f"s{i}" for i in range(9)]
    batch = Batch(ids, tier, labels, has_labels, rank_target, rank_group, piece, performer, pair)
    regression = t([[0.5], [0.8], [0], [0], [0.0], [0], [0], [0], [0]])
    scores = t([[0.0], [1.0], [0.0], [0.0], [5.0], [0], [0], [0], [0]])
    z = t([[1, 0], [0, 3], [1, 1], [1, 1], [1, 0], [0, 1], [0, 0], [1, 1], [1, 0]])
    return regression, scores, z, batch


REG = 0.09 / 2  # samples 0, 1: (0.5 - 0.2)^2 and 0
RANK = (softplus(-1.0) + math.log(2)) / 2  # (0,1): d = +1; (2,3): tied scores, d = 0
CON = (math.log(1 + math.e**2) + math.log(2)) / 2  # tau 0.5: anchors 4 (s48 = 2) and 5 (s58 = 0)
INV = 1.0  # (6, 7): z (0,0) vs (1,1)


def test_multitask_known_value_and_tier_masks() -> None:
    regression, scores, z, batch = mixed_batch()
    z.requires_grad_()
    cfg = LossConfig(lambda_rank=2.0, lambda_contrastive=0.5, lambda_invariance=3.0, temperature=0.5)
    total, parts = multitask_loss(regression, scores, z, batch, cfg)
    assert parts["regression"].item() == pytest.approx(REG, rel=1e-6)
    assert parts["ranking"].item() == pytest.approx(RANK, rel=1e-6)
    assert parts["contrastive"].item() == pytest.approx(CON, rel=1e-5)
    assert parts["invariance"].item() == pytest.approx(INV, rel=1e-6)
    expected = REG + 2 * RANK + 0.5 * CON + 3 * INV
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert parts["total"].item() == pytest.approx(expected, rel=1e-5)
    assert all(not v.requires_grad for v in parts.values())
    total.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_multitask_terms_restrict_and_zero_lambda_is_reported_not_added() -> None:
    regression, scores, z, batch = mixed_batch()
    cfg = LossConfig(lambda_contrastive=0.5, lambda_invariance=0.0, temperature=0.5)
    total, parts = multitask_loss(regression, scores, z, batch, cfg, terms={"contrastive", "invariance"})
    assert set(parts) == {"contrastive", "invariance", "total"}
    assert parts["invariance"].item() == pytest.approx(INV)
    assert total.item() == pytest.approx(0.5 * CON, rel=1e-5)


def test_multitask_rejects_unknown_term() -> None:
    regression, scores, z, batch = mixed_batch()
    with pytest.raises(ValueError, match="supervised"):
        multitask_loss(regression, scores, z, batch, LossConfig(), terms={"supervised"})


def test_multitask_margin_kind_comes_from_config() -> None:
    regression, scores, z, batch = mixed_batch()
    cfg = LossConfig(ranking="margin", margin=0.1)
    _, parts = multitask_loss(regression, scores, z, batch, cfg, terms={"ranking"})
    # (0,1): relu(0.1 - 1) = 0; (2,3): relu(0.1 - 0) = 0.1
    assert parts["ranking"].item() == pytest.approx(0.05, rel=1e-6)
