"""Known-value tests for the metrics suite (expected numbers worked out by hand in the comments)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score, roc_auc_score

from pianoray.objectives import metrics
from pianoray.objectives.bootstrap import paired_bootstrap_gap, resample_weights

# Passage a: 3 performances, b: 2, c: 1 (no pair). Two dimensions.
TARGET = np.array([[0.1, 0.5], [0.5, 0.5], [0.3, 0.9], [0.2, 0.1], [0.22, 0.9], [0.7, 0.7]])
PRED = np.array([[0.0, 3.0], [1.0, 2.0], [1.0, 1.0], [0.5, 1.0], [0.4, 0.0], [9.0, 9.0]])
GROUP = np.array(["a", "a", "a", "b", "b", "c"], dtype=object)
# dim 0, threshold 0.05: a(0,1) right, a(0,2) right, a(1,2) tied pred -> 0.5; b gap 0.02 left out -> 2.5/3
# dim 1: a(0,1) equal labels left out, a(0,2) wrong, a(1,2) wrong, b wrong -> 0/3


def test_pairwise_accuracy_known_value() -> None:
    r = metrics.pairwise_accuracy(PRED, TARGET, GROUP, n_boot=0)
    assert r.per_dim.tolist() == pytest.approx([2.5 / 3, 0.0])
    assert r.mean == pytest.approx(2.5 / 6)
    assert r.n == 6 and r.n_groups == 2 and r.extra["n_pairs"] == 4  # c has no pair: not a group


def test_pairwise_accuracy_threshold_zero_keeps_small_gaps_not_ties() -> None:
    r = metrics.pairwise_accuracy(PRED, TARGET, GROUP, threshold=0.0, n_boot=0)
    # dim 0 gains b (gap -0.02, pred +0.1: wrong) -> 2.5/4; dim 1 still skips the equal labels
    assert r.per_dim.tolist() == pytest.approx([2.5 / 4, 0.0])
    assert r.mean == pytest.approx(2.5 / 8)


def test_constant_model_scores_exactly_half_and_oracle_one() -> None:
    rng = np.random.default_rng(0)
    target = rng.random((60, 5))
    group = np.repeat(np.arange(12), 5)
    assert metrics.pairwise_accuracy(np.zeros((60, 5)), target, group, n_boot=20).mean == 0.5
    assert metrics.pairwise_accuracy(target, target, group, n_boot=20).mean == 1.0
    assert metrics.pairwise_accuracy(-target, target, group, n_boot=20).mean == 0.0


def test_pairwise_threshold_boundary_and_torch_input() -> None:
    target = torch.tensor([[0.50], [0.55]], dtype=torch.float32)  # gap 0.0499999 in float32: kept
    pred = torch.tensor([[0.0], [1.0]], dtype=torch.bfloat16)
    r = metrics.pairwise_accuracy(pred, target, torch.tensor([4, 4]), n_boot=0)
    assert r.mean == 1.0 and r.n == 1


def test_dimension_without_pairs_is_nan_and_left_out_of_mean() -> None:
    target = np.array([[0.1, 0.5], [0.9, 0.5]])
    r = metrics.pairwise_accuracy(np.array([[0.0, 0.0], [1.0, 1.0]]), target, [0, 0], n_boot=0)
    assert r.per_dim[0] == 1.0 and np.isnan(r.per_dim[1]) and r.mean == 1.0
    assert r.to_dict()["per_dim"] == [1.0, None]


def test_negative_int_group_joins_no_pair() -> None:
    target = np.array([[0.1], [0.9], [0.5]])
    r = metrics.pairwise_accuracy(np.array([[0.0], [1.0], [-5.0]]), target, np.array([0, 0, -1]), n_boot=0)
    assert r.mean == 1.0 and r.n == 1


def test_pairwise_bootstrap_matches_explicit_resampling() -> None:
    """weights @ group sums must equal scoring a data set built by repeating the drawn passages."""
    rng = np.random.default_rng(3)
    m, n = 40, 3
    group = rng.integers(0, 8, size=m)
    target, pred = rng.random((m, n)), rng.random((m, n))
    out = metrics.pair_outcomes(pred, target, group)
    s, c = out.group_sums()
    w = resample_weights(out.pairs.n_groups, 5, seed=11)
    fast = np.nanmean((w @ s) / (w @ c), axis=1)
    keys = np.unique(group)[np.bincount(group, minlength=8)[np.unique(group)] >= 2]  # groups with a pair
    for b in range(5):
        rows, new_group = [], []
        for code, times in enumerate(w[b].astype(int)):
            for copy in range(times):  # each copy is its own passage: no pairs across copies
                members = np.flatnonzero(group == keys[code])
                rows.extend(members)
                new_group.extend([f"{code}-{copy}"] * len(members))
        slow = metrics.pairwise_accuracy(pred[rows], target[rows], np.array(new_group), n_boot=0).mean
        assert fast[b] == pytest.approx(slow)


def test_pairwise_ci_brackets_mean_and_is_fast() -> None:
    rng = np.random.default_rng(0)
    group = np.repeat(np.arange(200), 6)
    target = rng.random((1200, 19))
    pred = target + rng.normal(0, 0.3, target.shape)
    metrics.pairwise_accuracy(pred, target, group, n_boot=10)  # warm-up
    start = time.perf_counter()
    r = metrics.pairwise_accuracy(pred, target, group, n_boot=1000)
    assert time.perf_counter() - start < 0.5  # pair enumeration + 1000 resamples
    assert r.ci[0] < r.mean < r.ci[1] and r.ci[1] - r.ci[0] < 0.05


def test_pair_outcomes_feed_the_paired_gap() -> None:
    target = TARGET[:5]
    oa = metrics.pair_outcomes(target, target, GROUP[:5])  # oracle: right everywhere
    ob = metrics.pair_outcomes(np.zeros_like(target), target, GROUP[:5])  # constant: 0.5 everywhere
    ca, ga, da = oa.flat()
    cb, gb, db = ob.flat()
    assert np.array_equal(ga, gb) and np.array_equal(da, db) and ca.size == 6
    assert paired_bootstrap_gap(ca, cb, ga, dims=da, n_boot=200) == (0.5, 0.5)


def test_r2_known_value_and_matches_sklearn() -> None:
    target = np.array([[1.0, 0.0], [2.0, 1.0], [3.0, 2.0]])
    pred = np.array([[1.0, 1.0], [2.0, 1.0], [4.0, 1.0]])
    # dim 0: SS_res 1, SS_tot 2 -> 0.5; dim 1: SS_res 2, SS_tot 2 -> 0
    r = metrics.r2(pred, target, n_boot=0)
    assert r.per_dim.tolist() == pytest.approx([0.5, 0.0]) and r.mean == pytest.approx(0.25)


def test_r2_bootstrap_matches_sklearn_on_a_resample() -> None:
    rng = np.random.default_rng(5)
    group = np.repeat(np.arange(10), 4)
    target = rng.random((40, 3))
    pred = target + rng.normal(0, 0.2, target.shape)
    r = metrics.r2(pred, target, group, n_boot=400)
    assert r.mean == pytest.approx(r2_score(target, pred))
    assert r.ci[0] < r.mean < r.ci[1]
    # Every resample value is sklearn's R2 on the repeated rows: check the whole distribution's bounds
    # against a slow loop over the same weights.
    w = resample_weights(10, 400, seed=0)
    slow = []
    for row in w.astype(int):
        rows = np.concatenate([np.flatnonzero(group == g) for g in range(10) for _ in range(row[g])])
        slow.append(r2_score(target[rows], pred[rows]))
    assert r.ci == pytest.approx(tuple(np.percentile(slow, [2.5, 97.5])))


def test_spearman_difficulty_known_value() -> None:
    # ranks (1,2,3,4) vs (1,2,4,3): sum d^2 = 2 -> rho = 1 - 6*2 / (4*15) = 0.8
    r = metrics.spearman_difficulty([1.0, 2.0, 3.0, 4.0], [10, 20, 40, 30], n_boot=100)
    assert r.mean == pytest.approx(0.8) and r.n == 4 and r.per_dim is None
    assert -1.0 <= r.ci[0] <= r.ci[1] <= 1.0


def test_robustness_known_value() -> None:
    target = np.array([[0.1], [0.2], [0.3], [0.4]])
    clean = np.array([[1.0], [2.0], [3.0], [4.0]])  # all 6 pairs right
    aug = np.array([[1.0], [2.0], [4.0], [3.0]])  # pair (2,3) flipped: 5/6
    r = metrics.robustness(clean, aug, target, ["p"] * 4, n_boot=50)
    assert r.clean.mean == 1.0 and r.augmented.mean == pytest.approx(5 / 6)
    assert r.drop.mean == pytest.approx(1 / 6)  # (1 - 5/6) / 1
    # Pearson of x=(1,2,3,4), y=(1,2,4,3): cov sum 4, var sums 5 and 5 -> 0.8
    assert r.pearson.mean == pytest.approx(0.8) and r.pearson.per_dim.tolist() == pytest.approx([0.8])
    assert r.drop.ci == pytest.approx((1 / 6, 1 / 6))  # one group: every resample is the same data
    json.dumps(r.to_dict(), allow_nan=False)


def test_robustness_pearson_flattens_dimensions() -> None:
    rng = np.random.default_rng(2)
    clean = rng.random((30, 3))
    aug = clean + rng.normal(0, 0.1, clean.shape)
    r = metrics.robustness(clean, aug, rng.random((30, 3)), np.repeat(np.arange(6), 5), n_boot=200)
    assert r.pearson.mean == pytest.approx(np.corrcoef(clean.ravel(), aug.ravel())[0, 1])
    for d in range(3):
        assert r.pearson.per_dim[d] == pytest.approx(np.corrcoef(clean[:, d], aug[:, d])[0, 1])
    assert r.pearson.ci[0] <= r.pearson.mean <= r.pearson.ci[1]


def test_competition_spearman_known_value() -> None:
    score = [3.0, 2.0, 1.0, 1.0, 2.0, 3.0, 5.0]
    placement = [1, 2, 3, 1, 2, 3, 1]
    rounds = ["final", "final", "final", "semi", "semi", "semi", "solo"]
    r = metrics.competition_spearman(score, placement, rounds, n_boot=0)
    # final: winner scored highest -> +1; semi: winner scored lowest -> -1; solo: one entry, undefined
    assert r.extra["per_round"] == {"final": 1.0, "semi": -1.0, "solo": None}
    assert r.mean == 0.0 and r.n == 2


def test_stop_auc_known_value_and_matches_sklearn_with_ties() -> None:
    r = metrics.stop_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1], n_boot=100)
    assert r.mean == pytest.approx(0.75)
    rng = np.random.default_rng(1)
    score = rng.integers(0, 5, 50).astype(float)  # many ties
    y = rng.integers(0, 2, 50)
    assert metrics.stop_auc(score, y, n_boot=0).mean == pytest.approx(roc_auc_score(y, score))
    assert np.isnan(metrics.stop_auc([0.1, 0.2], [1, 1]).mean)
    with pytest.raises(ValueError, match="binary"):
        metrics.stop_auc([0.1, 0.2], [0, 2])


def test_evaluate_bundle_is_json_serialisable() -> None:
    out = metrics.evaluate(PRED, -PRED, TARGET, GROUP, n_boot=50)
    assert set(out) == {"pairwise_accuracy", "pairwise_accuracy_regression", "pairwise_accuracy_t0", "r2"}
    assert out["pairwise_accuracy"].mean == pytest.approx(metrics.pairwise_accuracy(-PRED, TARGET, GROUP).mean)
    assert out["pairwise_accuracy_regression"].mean == pytest.approx(2.5 / 6)
    text = json.dumps(metrics.evaluation_to_dict(out), allow_nan=False)
    assert json.loads(text)["r2"]["mean"] == pytest.approx(r2_score(TARGET, PRED))


def test_shape_mismatch_names_the_argument() -> None:
    with pytest.raises(ValueError, match="group has 2 entries"):
        metrics.pairwise_accuracy(PRED, TARGET, ["a", "b"])
    with pytest.raises(ValueError, match="pred has shape"):
        metrics.r2(PRED[:, :1], TARGET)


# ------------------------------------------------------------------------------- pair counts and the gap


def test_pair_counts_known_values_and_accuracy():
    from pianoray.objectives.metrics import pair_counts

    # passage "p": 3 performances, dim 0 labels 0.1/0.5/0.9 (3 pairs), dim 1 labels 0.5/0.5/0.9 (2 pairs)
    # passage "q": 2 performances, dim 0 gap 0.02 < threshold (no pair), dim 1 one pair
    target = np.array([[0.1, 0.5], [0.5, 0.5], [0.9, 0.9], [0.3, 0.2], [0.32, 0.8]])
    pred = np.array([[0.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    groups = np.array(["p", "p", "p", "q", "q"])
    c = pair_counts(pred, target, groups, threshold=0.05)
    assert c.groups == ("p", "q")
    # p dim 0: all three ordered right; p dim 1: (0,2) and (1,2) both wrong -> 0; q dim 1: right
    np.testing.assert_array_equal(c.correct, [[3.0, 0.0], [0.0, 1.0]])
    np.testing.assert_array_equal(c.total, [[3.0, 2.0], [0.0, 1.0]])
    assert c.accuracy() == pytest.approx((3 / 3 + 1 / 3) / 2)
    assert c.accuracy() == pytest.approx(metrics.pairwise_accuracy(pred, target, groups, n_boot=0).mean)
    # a passage with one performance has no pair: it gets no row, and the others keep their names
    solo = pair_counts(np.array([0.1, 0.9, 0.5]), np.array([0.0, 1.0, 0.2]), np.array(["q", "q", "a"]))
    assert solo.groups == ("q",) and solo.correct.shape == (1, 1) and solo.correct[0, 0] == 1.0


def test_paired_accuracy_gap_point_equals_accuracy_difference_and_ci_covers_it():
    from pianoray.objectives.metrics import PairCounts, paired_accuracy_gap

    rng = np.random.default_rng(0)
    total = rng.integers(1, 10, size=(30, 3)).astype(float)
    a = PairCounts(tuple(f"g{i:02d}" for i in range(30)), np.floor(total * 0.8), total)
    b = PairCounts(a.groups, np.floor(total * 0.6), total)
    gap, (lo, hi) = paired_accuracy_gap([(a, b)], n_boot=500, seed=1)
    assert gap == pytest.approx(a.accuracy() - b.accuracy())
    assert lo <= gap <= hi and lo > 0
    # two sets: the gap is the mean of the per-set gaps; a model against itself has a zero-width CI at 0
    gap2, _ = paired_accuracy_gap([(a, b), (b, b)], n_boot=100)
    assert gap2 == pytest.approx(gap / 2)
    assert paired_accuracy_gap([(a, a)], n_boot=100) == (0.0, (0.0, 0.0))
    with pytest.raises(ValueError, match="same pairs"):
        paired_accuracy_gap([(a, PairCounts(a.groups, a.correct, total + 1))])
    assert PairCounts.from_json(a.to_json()).accuracy() == pytest.approx(a.accuracy())


def test_paired_r2_gap_known_value_shared_resamples_and_sets():
    from pianoray.objectives.metrics import paired_r2_gap, r2

    t = np.array([[0.0], [1.0], [2.0], [3.0]])
    group = np.array(["p", "p", "q", "q"])
    # A is exact (R2 = 1); B predicts 0: R2 = 1 - sum(t^2) / SS_tot = 1 - 14 / 5 = -1.8
    gap, (lo, hi) = paired_r2_gap([(t, t, np.zeros_like(t), group)], n_boot=300, seed=2)
    assert gap == pytest.approx(2.8)
    assert gap == pytest.approx(r2(t, t, n_boot=0).mean - r2(np.zeros_like(t), t, n_boot=0).mean)
    assert lo <= gap <= hi
    # the same model twice: the gap is 0 on every resample (both scored on the same one)
    noisy = t + np.array([[0.3], [-0.2], [0.1], [0.4]])
    assert paired_r2_gap([(t, noisy, noisy, group)], n_boot=200) == (0.0, (0.0, 0.0))
    # several sets: the mean of the per-set gaps
    two, _ = paired_r2_gap([(t, t, np.zeros_like(t), group), (t, noisy, noisy, group)], n_boot=0)
    assert two == pytest.approx(1.4)
    with pytest.raises(ValueError, match="shapes"):
        paired_r2_gap([(t, t, np.zeros((4, 2)), group)])


def test_error_correlation_known_values_per_dimension():
    from pianoray.objectives.metrics import error_correlation

    e = np.array([[1.0, 1.0, 5.0], [2.0, 3.0, 5.0], [3.0, 2.0, 5.0]])
    other = np.array([[2.0, 1.0, 1.0], [4.0, 2.0, 2.0], [6.0, 3.0, 3.0]])
    r = error_correlation(e, other, n_boot=0)
    # dim 0: perfectly correlated; dim 1: x=[1,3,2] vs y=[1,2,3] -> r = 0.5; dim 2: constant errors -> NaN
    assert r.per_dim[0] == pytest.approx(1.0) and r.per_dim[1] == pytest.approx(0.5) and np.isnan(r.per_dim[2])
    assert r.mean == pytest.approx(0.75)
    assert error_correlation(e[:, :1], -e[:, :1], n_boot=0).mean == pytest.approx(-1.0)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 2))
    b = 0.8 * a + 0.6 * rng.normal(size=(60, 2))
    ci = error_correlation(a, b, np.repeat(np.arange(20), 3), n_boot=300).ci
    assert ci[0] < error_correlation(a, b, n_boot=0).mean < ci[1]


def test_planted_outcomes_known_values() -> None:
    np.testing.assert_array_equal(metrics.planted_outcomes([2.0, 1.0, 3.0], [1.0, 1.0, 4.0]), [1.0, 0.5, 0.0])
    with pytest.raises(ValueError, match="expressive has 2 entries, wrong 1"):
        metrics.planted_outcomes([1.0, 2.0], [1.0])


def test_planted_accuracy_known_value_and_passage_bootstrap() -> None:
    r = metrics.planted_accuracy([1.5, 2.0, 0.0], [2, 2, 1], n_boot=2000, seed=0)
    assert r.mean == pytest.approx(3.5 / 5) and (r.n, r.n_groups) == (5, 3)
    # resampling passages: the lowest resample is the 0/1 passage alone, the highest the 2/2 one alone
    assert 0.0 <= r.ci[0] < 0.7 < r.ci[1] <= 1.0
    weights = resample_weights(3, 2000, 0)
    stats = (weights @ np.array([1.5, 2.0, 0.0])) / (weights @ np.array([2.0, 2.0, 1.0]))
    assert r.ci == pytest.approx(tuple(np.percentile(stats, [2.5, 97.5])))
    every = metrics.planted_accuracy([2.0, 2.0], [2, 2], n_boot=200)
    assert every.mean == 1.0 and every.ci == (1.0, 1.0)
    with pytest.raises(ValueError, match="0 <= correct <= pairs"):
        metrics.planted_accuracy([3.0], [2])
