"""Opening corpora (cache and PercePiano), content hashing, and check() finding each kind of problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pianoray.config import DataConfig
from pianoray.data.cache import CacheError
from pianoray.data.corpus import open_corpus
from pianoray.data.demo import generate_demo
from pianoray.data.tiers import Tier


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "corpus", seed=3, scale=0.1)


@pytest.fixture
def copy(demo_root, tmp_path) -> Path:
    dst = tmp_path / "corpus"
    shutil.copytree(demo_root, dst)
    return dst


def _open(root: Path):
    return open_corpus(DataConfig(root=root))


def test_open_cache(demo_root):
    c = _open(demo_root)
    assert c.tiers == [Tier.T1, Tier.T2, Tier.T3, Tier.T4]
    assert c.meta.width == 128 and c.meta.window_frames == 16 and c.has_frames()
    t1 = c.manifest("T1")
    assert set(c.labels19) == set(t1["segment_id"])
    row = t1.iloc[0].to_dict()
    assert c.frames(Tier.T1, row).shape == (row["n_frames"], 128)
    assert c.path(row["perf_midi"]).is_file()
    assert c.check() == []
    tier, r = c.locate(c.manifest("T4").iloc[0]["clean_id"])
    assert tier in (Tier.T1, Tier.T3)


def test_labels_delegate_to_label_sets(demo_root):
    c = _open(demo_root)
    names, values = c.labels("percepiano19")
    assert len(names) == 19 and set(values) == set(c.manifest("T1")["segment_id"])
    names, values = c.labels("composite")
    from pianoray.data.taxonomy import Taxonomy

    assert names == Taxonomy.default().names
    v = np.stack(list(values.values()))
    assert v.shape[1] == len(names) and v.min() >= 0 and v.max() <= 1


def test_hash_is_stable_and_content_sensitive(copy):
    h = _open(copy).hash()
    assert _open(copy).hash() == h
    path = copy / "T2" / "manifest.parquet"
    m = pd.read_parquet(path)
    m.loc[0, "placement_score"] = 0.123
    m.to_parquet(path, index=False)
    assert _open(copy).hash() != h


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda r: (r / "corpus.json").unlink(), "corpus.json.*not found"),
        (lambda r: (r / "T3" / "manifest.parquet").unlink(), r"T3/manifest.parquet: manifest not found"),
        (lambda r: (r / "T3" / "manifest.parquet").write_bytes(b"junk"), "T3/manifest.parquet: not a readable"),
        (lambda r: (r / "corpus.json").write_text(json.dumps({**json.loads((r / "corpus.json").read_text()), "format_version": 99})),
         "format_version 99 is not supported"),
        (lambda r: (r / "corpus.json").write_text(json.dumps({**json.loads((r / "corpus.json").read_text()), "width": "wide"})),
         "corpus.json: width"),
    ],
)
def test_open_errors_name_the_file(copy, damage, match):
    damage(copy)
    with pytest.raises(CacheError, match=match):
        _open(copy)


def test_open_missing_folder(tmp_path):
    with pytest.raises(CacheError, match="corpus folder not found"):
        _open(tmp_path / "absent")


def test_check_missing_shard(copy):
    (copy / "T2" / "frames-00000.npy").unlink()
    assert any("T2/frames-00000.npy: frame shard not found" in p for p in _open(copy).check())


def test_check_nan_frames_names_the_segment(copy):
    c = _open(copy)
    row = c.manifest("T3").iloc[2]
    arr = np.load(copy / "T3" / "frames-00000.npy", mmap_mode="r+")
    arr[row["offset"] + 1, 5] = np.nan
    arr.flush()
    del arr
    problems = _open(copy).check()
    assert any("T3/frames-00000.npy: NaN/Inf in 1 frame rows" in p and row["segment_id"] in p for p in problems)


def test_check_wrong_width(copy):
    np.save(copy / "T2" / "frames-00000.npy", np.zeros((10, 7), dtype=np.float16))
    assert any("T2/frames-00000.npy: shape (10, 7), expected [rows, 128]" in p for p in _open(copy).check())


def test_check_label_keys_and_data_mismatch(copy):
    path = copy / "labels" / "percepiano19.json"
    labels = json.loads(path.read_text())
    dropped = sorted(labels)[0]
    del labels[dropped]
    labels["ghost_segment"] = [0.5] * 19
    path.write_text(json.dumps(labels))
    problems = _open(copy).check()
    assert any(p.endswith("label key without data: ghost_segment") for p in problems)
    assert any(p.endswith(f"data without labels: {dropped}") for p in problems)


def test_check_empty_tier(copy):
    path = copy / "T2" / "manifest.parquet"
    pd.read_parquet(path).iloc[:0].to_parquet(path, index=False)
    assert any("T2/manifest.parquet: tier T2 is empty" in p for p in _open(copy).check())


def test_check_corrupt_and_missing_midi(copy):
    c = _open(copy)
    rows = c.manifest("T1")
    c.path(rows.iloc[0]["perf_midi"]).write_bytes(b"not midi at all")
    c.path(rows.iloc[1]["perf_midi"]).unlink()
    problems = _open(copy).check()
    assert any(rows.iloc[0]["segment_id"] in p and "not a readable MIDI file" in p for p in problems)
    assert any(rows.iloc[1]["segment_id"] in p and "no such file" in p for p in problems)


def test_percepiano_source(percepiano_dir):
    c = open_corpus(DataConfig(root=percepiano_dir, source="percepiano"))
    assert c.tiers == [Tier.T1] and not c.has_frames()
    m = c.manifest("T1")
    assert len(m) > 100 and m["passage"].nunique() < len(m)
    assert Path(m.iloc[0]["perf_midi"]).is_file()
    names, values = c.labels("percepiano19")
    assert len(names) == 19 and len(values) == len(m)
    assert len(c.hash()) == 64
