"""ensure_symbolic_cache / prepare_data: the symbolic cache is built before a run and attached on open."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pianoray.config import DataConfig, load_config
from pianoray.data.corpus import open_corpus, symbolic_cache_dir
from pianoray.data.demo import generate_demo
from pianoray.data.midi import file_sha256
from pianoray.data.symbolic import SymbolicCache, symbolic_arrays
from pianoray.data.symbolic.prepare import corpus_midi_files, ensure_symbolic_cache
from pianoray.data.tiers import Tier
from pianoray.data.views import SegmentContext, get_view


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("demo")
    generate_demo(root, seed=1, scale=0.2)
    return root


def _ctx(corpus, row: dict) -> SegmentContext:
    return SegmentContext(row, corpus, False, np.random.default_rng(0), 10_000)


def test_prepare_builds_attaches_and_reuses(demo_root: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = DataConfig(root=demo_root, symbolic_cache=tmp_path / "sym")
    assert open_corpus(cfg).symbolic_cache is None  # nothing built yet: views compute

    corpus = open_corpus(cfg)
    files = corpus_midi_files(corpus)
    assert len(files) > 1 and len(files) == len(set(files))
    report = ensure_symbolic_cache(cfg, {"remi", "frames"}, corpus, workers=1)
    assert report is not None and report.failed == []
    assert report.n_files == len(files) and report.computed >= 1
    assert report.computed + report.reused == len(files)

    opened = open_corpus(cfg)
    assert isinstance(opened.symbolic_cache, SymbolicCache)
    assert opened.symbolic_cache.out_dir == tmp_path / "sym"
    # Every tier's performance MIDI is in the cache under the manifest's content hash.
    for tier in opened.tiers:
        for sha in opened.manifest(tier)["perf_midi_sha"]:
            assert opened.symbolic_cache.has(sha)

    # A remi view load reads the cache (not the per-process memo) and matches computing from the MIDI.
    row = opened.manifest(Tier.T1).iloc[0].to_dict()
    assert row["perf_midi_sha"] == file_sha256(opened.path(row["perf_midi"]))
    reads: list[tuple[str, str]] = []
    real_get = SymbolicCache.get_arrays

    def spy(self, sha, kind):
        reads.append((sha, kind))
        return real_get(self, sha, kind)

    monkeypatch.setattr(SymbolicCache, "get_arrays", spy)
    ids = get_view("remi").load(_ctx(opened, row))
    assert reads == [(row["perf_midi_sha"], "remi")]
    computed = symbolic_arrays(_ctx(open_corpus(DataConfig(root=demo_root, symbolic_cache=tmp_path / "none")), row), "remi")
    assert np.array_equal(ids, computed)

    again = ensure_symbolic_cache(cfg, ["remi"], workers=1)
    assert again is not None and again.computed == 0 and again.reused == len(files)


def test_frame_only_experiments_build_nothing(demo_root: Path, tmp_path: Path) -> None:
    cfg = DataConfig(root=demo_root, symbolic_cache=tmp_path / "sym")
    assert ensure_symbolic_cache(cfg, {"frames"}, workers=1) is None
    assert ensure_symbolic_cache(cfg, set(), workers=1) is None
    assert not (tmp_path / "sym").exists()
    assert open_corpus(cfg).symbolic_cache is None


def test_default_folders(tmp_path: Path) -> None:
    assert symbolic_cache_dir(DataConfig(root=tmp_path / "c")) == tmp_path / "c" / "symbolic"
    pp = symbolic_cache_dir(DataConfig(root=tmp_path / "pp", source="percepiano"))
    assert pp == Path("~/.cache/pianoray/symbolic").expanduser()
    assert symbolic_cache_dir(DataConfig(root=tmp_path, symbolic_cache=tmp_path / "x")) == tmp_path / "x"
    # A remote root's default lives in its local mirror (the opened corpus's root).
    assert symbolic_cache_dir(DataConfig(root=tmp_path / "c"), tmp_path / "mirror") == tmp_path / "mirror" / "symbolic"


def test_prepare_data_follows_enabled_encoders(tmp_path: Path, monkeypatch) -> None:
    """prepare_data generates the demo, then builds <root>/symbolic only when a symbolic encoder is enabled."""
    from pianoray.validation import needed_views, prepare_data

    yaml_path = tmp_path / "exp.yaml"
    yaml_path.write_text(
        "data: {root: demo, symbolic_cache: sym, demo: {seed: 1, scale: 0.2}}\n"
        "experiments: {A3: {}, S1: {enabled: false}}\n"
    )
    frames_only = load_config(yaml_path)
    assert frames_only.data.symbolic_cache == tmp_path / "sym"  # relative to the YAML
    assert needed_views(frames_only) == {"frames"}
    prepare_data(frames_only)
    assert (tmp_path / "demo" / "corpus.json").is_file() and not (tmp_path / "sym").exists()

    with_s1 = load_config(yaml_path, {"experiments": {"S1": {"enabled": True}}})
    assert "remi" in needed_views(with_s1)
    import pianoray.data.symbolic.prepare as prep

    real_build = prep.build_symbolic_cache  # one process: this machine's cores are shared
    monkeypatch.setattr(prep, "build_symbolic_cache", lambda files, out, **kw: real_build(files, out, **{**kw, "workers": 1}))
    prepare_data(with_s1)
    assert isinstance(open_corpus(with_s1.data).symbolic_cache, SymbolicCache)
