"""The symbolic cache: content-keyed, incremental, parallel, skipping and listing bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pianoray.data.midi import NoteTable, file_sha256, write_midi
from pianoray.data.symbolic.cache import (
    FEATURE_KINDS,
    SymbolicCache,
    SymbolicFeatureConfig,
    build_symbolic_cache,
    entry_dir,
)
from pianoray.data.symbolic.curves import CURVE_CHANNELS, CurveConfig


def make_midis(folder: Path, n: int) -> list[Path]:
    paths = []
    for i in range(n):
        rng = np.random.default_rng(i)
        k = 30 + i
        onset = np.sort(rng.uniform(0, 8, k))
        notes = NoteTable.from_arrays(rng.integers(40, 90, k), onset, onset + 0.3, rng.integers(20, 120, k))
        paths.append(folder / f"perf_{i}.mid")
        write_midi(notes, paths[-1])
    return paths


def test_build_is_incremental_and_lists_bad_files(tmp_path: Path) -> None:
    paths = make_midis(tmp_path / "midi", 3)
    bad = tmp_path / "midi" / "corrupt.mid"
    bad.write_bytes(b"MThd this is not midi")
    out = tmp_path / "cache"

    first = build_symbolic_cache(paths + [bad], out, workers=1)
    assert (first.computed, first.reused) == (3, 0)
    assert [p for p, _ in first.failed] == [str(bad)] and "corrupt.mid" in first.failed[0][1]
    assert first.notes_computed == 30 + 31 + 32
    assert all(first.seconds_by_kind[k] > 0 for k in FEATURE_KINDS)

    second = build_symbolic_cache(paths + [bad], out, workers=1)
    assert (second.computed, second.reused, second.notes_computed) == (0, 3, 0)
    assert len(second.failed) == 1

    # Rewriting one file with other notes changes its hash: only it is redone.
    make_midis(tmp_path / "other", 5)[4].replace(paths[1])
    third = build_symbolic_cache(paths, out, workers=1)
    assert (third.computed, third.reused) == (1, 2)


def test_a_damaged_entry_is_computed_again_not_trusted(tmp_path: Path) -> None:
    """An entry is keyed by its input's hash; its outputs are checked against the sizes its meta.json recorded,
    so a truncated file, a missing one or an unreadable meta.json gets the entry rebuilt on the next build."""
    paths = make_midis(tmp_path / "midi", 3)
    out = tmp_path / "cache"
    build_symbolic_cache(paths, out, workers=1)
    entries = [entry_dir(out, file_sha256(p)) for p in paths]
    pristine = {e: {f.name: f.read_bytes() for f in e.iterdir()} for e in entries}
    remi = entries[0] / "remi.npy"
    remi.write_bytes(remi.read_bytes()[:-8])  # truncated
    (entries[1] / "curves.npy").unlink()  # missing
    (entries[2] / "meta.json").write_text("{not json")
    again = build_symbolic_cache(paths, out, workers=1)
    assert (again.computed, again.reused, again.damaged) == (3, 0, 3)
    for e in entries:
        assert {f.name: f.read_bytes() for f in e.iterdir()} == pristine[e]
    assert build_symbolic_cache(paths, out, workers=1).reused == 3


def test_cache_reads_every_kind(tmp_path: Path) -> None:
    paths = make_midis(tmp_path, 2)
    report = build_symbolic_cache(paths, tmp_path / "cache", workers=1)
    cache = SymbolicCache(tmp_path / "cache")
    sha = file_sha256(paths[0])
    assert report.sha_by_path[str(paths[0])] == sha and cache.has(sha) and cache.n_notes(sha) == 30
    ids = cache.get(sha, "remi")
    assert ids.dtype == np.int64 and ids.max() < cache.tokenizer.vocab_size
    assert len(cache.tokenizer.decode(ids)) == 30
    g = cache.get(sha, "graph")
    assert g.x.shape == (30, 6) and g.edge_type.dtype == torch.long
    h = cache.get(sha, "hetero_graph")
    assert h["note"].x.shape == (30, 6) and ("note", "during", "note") in h.edge_types
    assert cache.get(sha, "curves").shape[1] == len(CURVE_CHANNELS)
    with pytest.raises(KeyError, match="no cached remi"):
        cache.get("0" * 64, "remi")
    assert not list((tmp_path / "cache" / "entries").rglob("*.tmp"))  # no leftovers of atomic writes


def test_other_config_is_refused(tmp_path: Path) -> None:
    paths = make_midis(tmp_path, 1)
    build_symbolic_cache(paths, tmp_path / "cache", workers=1)
    with pytest.raises(ValueError, match="cache.json"):
        build_symbolic_cache(
            paths, tmp_path / "cache", workers=1,
            config=SymbolicFeatureConfig(curves=CurveConfig(frame_rate=50.0)),
        )


def test_process_pool_matches_in_process(tmp_path: Path) -> None:
    paths = make_midis(tmp_path / "midi", 4)
    pooled = build_symbolic_cache(paths, tmp_path / "pooled", workers=2, chunksize=1)
    single = build_symbolic_cache(paths, tmp_path / "single", workers=1)
    assert pooled.computed == single.computed == 4 and not pooled.failed
    a, b = SymbolicCache(tmp_path / "pooled"), SymbolicCache(tmp_path / "single")
    for p in paths:
        sha = file_sha256(p)
        assert np.array_equal(a.get(sha, "remi"), b.get(sha, "remi"))
        assert np.array_equal(a.get(sha, "curves"), b.get(sha, "curves"))
