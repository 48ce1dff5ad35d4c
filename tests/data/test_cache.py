"""The cache format: write/read round trip, sharding, memory mapping, and rejection of bad frames."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pianoray.data.cache import (
    COMMON_COLUMNS,
    FORMAT_VERSION,
    CacheError,
    CacheWriter,
    FrameStore,
)


def _row(sid: str, passage: str = "pa", **extra) -> dict:
    return {"segment_id": sid, "piece": "p", "passage": passage, "performer": sid[-1], **extra}


def _frames(n: int, width: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, width)).astype(np.float32)


def test_round_trip_with_several_shards(tmp_path):
    # 4 rows of width 8 in fp16 = 64 bytes per shard: segments of 4 rows force one shard each.
    w = CacheWriter(tmp_path, width=8, window_frames=4, shard_bytes=64, name="t")
    written = {}
    for i in range(3):
        f = _frames(4 * (i + 1), seed=i)
        written[f"a{i}"] = f
        w.add("T1", _row(f"a{i}", labels19=[0.5] * 19), f)
    w.add("T3", _row("c0", group="p"), _frames(4, seed=9))
    root = w.close()

    meta = json.loads((root / "corpus.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["width"] == 8 and meta["window_frames"] == 4 and meta["frame_rate"] == 25 and meta["muq_layer"] == 8
    assert meta["tiers"]["T1"] == {"segments": 3, "frames": 24, "shards": 3}
    assert "T1/frames-00002.npy" in meta["hashes"]
    m = pd.read_parquet(root / "T1" / "manifest.parquet")
    assert list(m.columns[: len(COMMON_COLUMNS)]) == list(COMMON_COLUMNS)
    assert m["shard"].tolist() == [0, 1, 2] and m["offset"].tolist() == [0, 0, 0]
    store = FrameStore(root / "T1", width=8)
    for _, r in m.iterrows():
        got = store.get(r.shard, r.offset, r.n_frames)
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, written[r.segment_id].astype(np.float16))
    assert json.loads((root / "labels" / "percepiano19.json").read_text())["a0"] == [0.5] * 19
    assert not list(root.rglob(".*tmp*")), "temporary files left behind"


def test_segments_share_a_shard_when_they_fit(tmp_path):
    w = CacheWriter(tmp_path, width=8, window_frames=4)
    w.add("T2", _row("b0", placement=1, round_id="r", placement_score=1.0), _frames(8))
    w.add("T2", _row("b1", placement=2, round_id="r", placement_score=0.0), _frames(4, seed=1))
    w.close()
    m = pd.read_parquet(tmp_path / "T2" / "manifest.parquet")
    assert m["shard"].tolist() == [0, 0] and m["offset"].tolist() == [0, 8]


def test_frame_store_maps_instead_of_loading(tmp_path):
    w = CacheWriter(tmp_path, width=8, window_frames=4)
    w.add("T1", _row("a"), _frames(8))
    w.close()
    store = FrameStore(tmp_path / "T1", width=8)
    x = store.get(0, 4, 4)
    assert isinstance(x, np.memmap)  # a view into the mapped file, not a loaded copy
    assert not x.flags.writeable
    with pytest.raises(CacheError, match="frames-00000.npy.*outside"):
        store.get(0, 6, 4)
    with pytest.raises(CacheError, match="frames-00003.npy: frame shard not found"):
        store.get(3, 0, 1)
    import pickle

    assert pickle.loads(pickle.dumps(store))._maps == {}  # workers re-open maps lazily


@pytest.mark.parametrize(
    "frames, match",
    [
        (np.full((4, 8), np.nan, dtype=np.float32), "NaN/Inf"),
        (np.full((4, 8), np.inf, dtype=np.float32), "NaN/Inf"),
        (np.full((4, 8), 1e6, dtype=np.float32), "float16 range"),
        (np.zeros((4, 7), dtype=np.float32), r"shape \(4, 7\), expected \[n, 8\]"),
        (np.zeros((6, 8), dtype=np.float32), "multiple of window_frames=4"),
        (np.zeros((8,), dtype=np.float32), "shape"),
    ],
)
def test_bad_frames_are_rejected_naming_the_segment(tmp_path, frames, match):
    w = CacheWriter(tmp_path, width=8, window_frames=4)
    with pytest.raises(CacheError, match=f"segment 'bad'.*{match}"):
        w.add("T1", _row("bad"), frames)


def test_rows_are_validated(tmp_path):
    w = CacheWriter(tmp_path, width=8, window_frames=4)
    w.add("T1", _row("a"), _frames(4))
    with pytest.raises(CacheError, match="duplicate"):
        w.add("T1", _row("a"), _frames(4))
    with pytest.raises(CacheError, match=r"unknown columns \['clean_id'\]"):
        w.add("T1", _row("b", clean_id="a"), _frames(4))
    with pytest.raises(CacheError, match="labels19"):
        w.add("T1", _row("c", labels19=[2.0] * 19), _frames(4))


def test_segments_without_frames(tmp_path):
    w = CacheWriter(tmp_path, width=8, window_frames=4)
    w.add("T1", _row("a"), None)
    w.close()
    m = pd.read_parquet(tmp_path / "T1" / "manifest.parquet")
    assert m.iloc[0][["n_frames", "shard", "offset"]].tolist() == [0, -1, -1]


def test_existing_cache_is_not_overwritten_by_default(tmp_path):
    CacheWriter(tmp_path, width=8, window_frames=4).close()
    with pytest.raises(CacheError, match="already exists"):
        CacheWriter(tmp_path, width=8, window_frames=4)
    CacheWriter(tmp_path, width=8, window_frames=4, overwrite=True).close()
