"""Group k-fold: no leakage (passage or performer), coverage, disjointness, determinism, JSON round trip,
and load() rejecting hand-corrupted files. Real-data tests run on the PercePiano subset."""

from __future__ import annotations

import json
from collections import Counter

import pandas as pd
import pytest

from pianoray.data.folds import FoldError, FoldSet, check_folds, groups_for, make_folds
from pianoray.data.percepiano import load_percepiano


@pytest.fixture(scope="module")
def pp(percepiano_dir) -> pd.DataFrame:
    return load_percepiano(percepiano_dir, hash_files=False)


def _toy(n_groups=12, sizes=(1, 2, 3, 5)):
    keys, groups = [], []
    for g in range(n_groups):
        for j in range(sizes[g % len(sizes)]):
            keys.append(f"g{g}_k{j}")
            groups.append(f"g{g}")
    return keys, groups


def _assert_sound(fs: FoldSet, groups: dict[str, str]):
    assert check_folds(fs, groups) == []
    tests = [set(f.test) for f in fs.folds]
    assert sum(map(len, tests)) == len(groups) and set().union(*tests) == set(groups)  # disjoint + cover
    for f in fs.folds:
        parts = [set(f.train), set(f.val), set(f.test)]
        assert set().union(*parts) == set(groups) and sum(map(len, parts)) == len(groups)
        assert f.val and f.train
        owner = {}
        for i, part in enumerate(parts):
            for k in part:
                assert owner.setdefault(groups[k], i) == i, f"group {groups[k]} in two lists of one fold"
    test_fold = {}
    for i, f in enumerate(fs.folds):
        for k in f.test:
            assert test_fold.setdefault(groups[k], i) == i, f"group {groups[k]} in two test folds"


def test_toy_folds_are_sound_and_balanced():
    keys, groups = _toy()
    fs = make_folds(keys, groups, k=4)
    _assert_sound(fs, dict(zip(keys, groups)))
    sizes = [len(f.test) for f in fs.folds]
    assert max(sizes) - min(sizes) <= 5  # greedy largest-first: within one (largest) group


def test_val_fraction_is_respected_by_whole_groups():
    keys, groups = _toy(n_groups=40, sizes=(2,))
    fs = make_folds(keys, groups, k=4, val_fraction=0.25)
    for f in fs.folds:
        assert len(f.val) == pytest.approx(0.25 * (len(f.train) + len(f.val)), abs=2)


def test_strata_spread_across_folds():
    # 4 pieces x 8 passages of 3 keys: every piece must land in every test fold.
    keys, groups, strata = [], [], []
    for piece in "ABCD":
        for p in range(8):
            for j in range(3):
                keys.append(f"{piece}{p}_{j}")
                groups.append(f"{piece}{p}")
                strata.append(piece)
    fs = make_folds(keys, groups, k=4, strata=strata)
    piece_of = dict(zip(keys, strata))
    for f in fs.folds:
        assert Counter(piece_of[k] for k in f.test) == {p: 6 for p in "ABCD"}


def test_strata_must_be_constant_within_a_group():
    with pytest.raises(ValueError, match="spans strata"):
        make_folds(["a", "b", "c", "d", "e", "f"], ["x", "x", "y", "z", "w", "v"], k=2, strata=list("ABCDEF"))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"k": 1}, "k >= 2"), ({"k": 50}, "at least k groups"), ({"val_fraction": 1.0}, "val_fraction"),
     ({"unit": "piece"}, "unit")],
)
def test_bad_arguments(kwargs, match):
    keys, groups = _toy()
    with pytest.raises(ValueError, match=match):
        make_folds(keys, groups, **kwargs)


def test_duplicate_keys_rejected():
    with pytest.raises(ValueError, match="duplicate key 'a'"):
        make_folds(["a", "a", "b", "c"], ["x", "y", "z", "w"], k=2)


def test_deterministic_by_seed_and_input_order():
    keys, groups = _toy(n_groups=30)
    a = make_folds(keys, groups, seed=7)
    b = make_folds(list(reversed(keys)), list(reversed(groups)), seed=7)
    c = make_folds(keys, groups, seed=8)
    assert a.to_json() == b.to_json()
    assert a.to_json()["folds"] != c.to_json()["folds"]


def test_real_passage_folds_never_split_a_passage(pp):
    fs = make_folds(pp.segment_id, groups_for(pp, "passage"), k=4, unit="passage", strata=list(pp.piece))
    groups = dict(zip(pp.segment_id, pp.passage))
    _assert_sound(fs, groups)
    assert all(220 <= len(f.test) <= 260 for f in fs.folds)  # 961 / 4 = 240
    # the three multi-passage pieces are spread over every test fold
    for piece in ("Schubert_D960_mv3", "Schubert_D960_mv2", "Schubert_D935_no.3"):
        ids = set(pp.segment_id[pp.piece == piece])
        assert all(ids & set(f.test) for f in fs.folds)


def test_real_performer_folds_never_split_a_performer(pp):
    fs = make_folds(pp.segment_id, groups_for(pp, "performer"), k=4, unit="performer")
    performer = dict(zip(pp.segment_id, pp.performer))
    _assert_sound(fs, performer)
    test_performers = [{performer[k] for k in f.test} for f in fs.folds]
    assert sum(map(len, test_performers)) == pp.performer.nunique()


def test_real_folds_round_trip_and_determinism(pp, tmp_path):
    fs = make_folds(pp.segment_id, groups_for(pp, "passage"), unit="passage", seed=42)
    path = tmp_path / "folds.json"
    fs.save(path)
    assert FoldSet.load(path) == fs
    assert make_folds(pp.segment_id, groups_for(pp, "passage"), unit="passage", seed=42) == fs
    data = json.loads(path.read_text())
    assert {k: data[k] for k in ("version", "k", "unit", "seed", "val_fraction")} == {
        "version": 1, "k": 4, "unit": "passage", "seed": 42, "val_fraction": 0.2}
    assert not list(tmp_path.glob(".*tmp*"))  # the temporary file was renamed away


def _corrupt(fs: FoldSet, how: str) -> dict:
    data = fs.to_json()
    f0, f1 = data["folds"][0], data["folds"][1]
    if how == "passage_split":  # move one key of a fold-0 passage into fold 1's test set
        key = f0["test"].pop()
        f1["test"].append(key)
        f1["train"].remove(key) if key in f1["train"] else f1["val"].remove(key)
        f0["train"].append(key)
    elif how == "two_test_sets":
        f1["test"].append(f0["test"][0])
    elif how == "train_test_overlap":
        f0["train"].append(f0["test"][0])
    elif how == "bad_version":
        data["version"] = 2
    elif how == "missing_field":
        del data["groups"]
    return data


@pytest.mark.parametrize(
    "how, match",
    [("passage_split", "split across"), ("two_test_sets", "test sets of folds 0 and 1"),
     ("train_test_overlap", "in both train and test"), ("bad_version", "version 2"),
     ("missing_field", "missing field 'groups'")],
)
def test_load_rejects_corrupted_json(pp, tmp_path, how, match):
    fs = make_folds(pp.segment_id, groups_for(pp, "passage"))
    path = tmp_path / "folds.json"
    path.write_text(json.dumps(_corrupt(fs, how)))
    with pytest.raises(FoldError, match=match) as e:
        FoldSet.load(path)
    assert str(path) in str(e.value)


def test_load_rejects_bad_json_and_missing_file(tmp_path):
    path = tmp_path / "folds.json"
    path.write_text("{not json")
    with pytest.raises(FoldError, match="not valid JSON"):
        FoldSet.load(path)
    with pytest.raises(FoldError, match="file not found"):
        FoldSet.load(tmp_path / "absent.json")


def test_check_folds_against_other_data():
    keys, groups = _toy()
    fs = make_folds(keys, groups)
    other = dict(zip(keys, groups))
    other["new_key"] = "g0"
    del other[keys[0]]
    other[keys[1]] = "elsewhere"
    problems = check_folds(fs, other)
    assert any("not in the folds" in p for p in problems)
    assert any("not in the data" in p for p in problems)
    assert any("changed group" in p for p in problems)


def test_groups_for_tables():
    asap = pd.DataFrame({"piece": ["Bach/Fugue/bwv_846", "Bach/Fugue/bwv_846"], "performer": ["Shi05M", "X"]})
    assert groups_for(asap, "passage") == ["Bach/Fugue/bwv_846"] * 2  # ASAP/MAESTRO: passage = piece
    assert groups_for(asap, "performer") == ["Shi05M", "X"]
    with pytest.raises(KeyError, match="performer"):
        groups_for(asap.drop(columns="performer"), "performer")
