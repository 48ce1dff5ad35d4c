"""The demo corpus: deterministic, fast, coherent, in the cache format, with the planted structure."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from pianoray.config import DataConfig
from pianoray.data.cache import CacheError, CacheWriter
from pianoray.data.corpus import open_corpus
from pianoray.data.demo import generate_demo
from pianoray.data.tiers import Tier


def test_tiny_demo_is_fast_valid_and_complete(tmp_path):
    t0 = time.perf_counter()
    root = generate_demo(tmp_path / "d", seed=1, scale=0.1)
    assert time.perf_counter() - t0 < 5.0
    c = open_corpus(DataConfig(root=root))
    assert c.tiers == [Tier.T1, Tier.T2, Tier.T3, Tier.T4]
    assert c.check() == []
    assert c.meta.width == 128 and c.meta.window_frames == 16 and c.meta.created_by["tool"] == "pianoray.demo"
    t1 = c.manifest("T1")
    assert (t1["n_frames"] <= 64).all() and (t1["n_frames"] % 16 == 0).all()
    assert t1.groupby("passage").size().between(6, 10).all()
    assert t1["score_midi"].notna().all()
    y = np.stack([c.labels19[s] for s in t1["segment_id"]])
    assert y.shape[1] == 19 and y.min() >= 0 and y.max() <= 1
    assert set(c.stop) == set(t1["segment_id"]) and set(c.stop.values()) <= {0, 1}
    assert set(c.difficulty) == set().union(*(set(c.manifest(t)["piece"]) for t in c.tiers))
    assert all(0 <= g <= 10 for g in c.difficulty.values())
    t2 = c.manifest("T2")
    for _, r in t2.groupby("round_id"):
        assert sorted(r["placement"]) == list(range(1, len(r) + 1))
        assert r.loc[r["placement"] == 1, "placement_score"].item() == 1.0
    t4 = c.manifest("T4")
    assert t4["clean_id"].isin(t1["segment_id"]).any() and t4["clean_id"].isin(c.manifest("T3")["segment_id"]).any()
    assert set(c.manifest("T3")["group"]) == set(c.manifest("T3")["piece"])


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    hashes = []
    for name, seed in (("a", 4), ("b", 4), ("c", 5)):
        root = generate_demo(tmp_path / name, seed=seed, scale=0.1)
        hashes.append(json.loads((root / "corpus.json").read_text())["hashes"])
    assert hashes[0] == hashes[1]
    assert hashes[0]["T1/frames-00000.npy"] != hashes[2]["T1/frames-00000.npy"]
    a = open_corpus(DataConfig(root=tmp_path / "a"))
    assert a.hash() == open_corpus(DataConfig(root=tmp_path / "b")).hash()
    assert (tmp_path / "a" / "midi").is_dir()
    mids = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "midi").rglob("*.mid"))
    for rel in mids[:20]:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()


def test_regenerating_over_a_demo_is_allowed_but_not_over_other_caches(tmp_path):
    generate_demo(tmp_path / "d", seed=0, scale=0.05)
    generate_demo(tmp_path / "d", seed=0, scale=0.05)  # same folder again: replaced
    CacheWriter(tmp_path / "other", width=8, window_frames=4, created_by={"tool": "pianoray extract"}).close()
    with pytest.raises(CacheError, match="not a demo corpus"):
        generate_demo(tmp_path / "other")


def test_ensure_demo_regenerates_only_an_absent_or_outdated_demo(tmp_path):
    from pianoray.data.demo import DEMO_VERSION, ensure_demo

    d = tmp_path / "d"
    assert ensure_demo(d, seed=2, scale=0.05).startswith("generated")
    assert ensure_demo(d, seed=2, scale=0.05) is None
    assert ensure_demo(d, seed=3, scale=0.1) is None  # a current demo of another size (e.g. --data) is kept
    meta = json.loads((d / "corpus.json").read_text())
    meta["created_by"]["version"] = DEMO_VERSION - 1
    (d / "corpus.json").write_text(json.dumps(meta))
    assert "stale" in ensure_demo(d, seed=0, scale=1.0)  # regenerated with the seed and scale it recorded
    made = json.loads((d / "corpus.json").read_text())["created_by"]
    assert (made["version"], made["seed"], made["scale"]) == (DEMO_VERSION, 2, 0.05)
    other = tmp_path / "other"
    CacheWriter(other, width=8, window_frames=4, created_by={"tool": "pianoray extract", "version": 0}).close()
    before = (other / "corpus.json").read_bytes()
    assert ensure_demo(other) is None and (other / "corpus.json").read_bytes() == before


def test_scale_one_world_is_coherent(tmp_path):
    """Default size and the planted structure: passage identity explains ~40% of label variance; timbre
    dimensions are predictable from the frames but not from the MIDI."""
    t0 = time.perf_counter()
    root = generate_demo(tmp_path / "d", seed=0, scale=1.0)
    assert time.perf_counter() - t0 < 30
    c = open_corpus(DataConfig(root=root))
    sizes = {t.name: len(c.manifest(t)) for t in c.tiers}
    assert 300 <= sizes["T1"] <= 500 and all(100 <= sizes[t] <= 400 for t in ("T2", "T3", "T4"))
    t1 = c.manifest("T1")
    y = np.stack([c.labels19[s] for s in t1["segment_id"]])
    g = t1["passage"].to_numpy()
    means = {p: y[g == p].mean(0) for p in set(g)}
    fit = np.stack([means[p] for p in g])
    share = 1 - ((y - fit) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert 0.25 < share < 0.6

    # Linear probes, passage-grouped CV: Timbre_Shallow_Rich (dim 6) from frame statistics vs. from MIDI.
    from sklearn.linear_model import Ridge
    from sklearn.model_selection import GroupKFold, cross_val_predict

    from pianoray.data.loaders import NOTE_TABLES, note_features

    frames, notes = [], []
    for r in t1.to_dict("records"):
        f = np.asarray(c.frames(Tier.T1, r), dtype=np.float32)
        frames.append(np.r_[f.mean(0), f.std(0)])
        n = note_features(NOTE_TABLES.get(c.path(r["perf_midi"]), r["perf_midi_sha"]))
        notes.append(np.r_[n.mean(0), n.std(0)])

    def r2(x: np.ndarray, d: int) -> float:
        p = cross_val_predict(Ridge(alpha=10.0), x, y[:, d], groups=g, cv=GroupKFold(4))
        return 1 - ((y[:, d] - p) ** 2).sum() / ((y[:, d] - y[:, d].mean()) ** 2).sum()

    assert r2(np.array(frames), 6) > r2(np.array(notes), 6) + 0.2


def _within(x: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """x minus its passage mean: what a within-passage ranking sees."""
    x = np.asarray(x, dtype=float).copy()
    for g in set(groups):
        x[groups == g] -= x[groups == g].mean()
    return x


def _onset_residual(notes) -> float:
    """Seconds of onset scatter around a smooth tempo curve, from the performance MIDI alone: the median
    inter-onset interval above 80 ms is the grid step, each onset gets its step index, and a quadratic fit
    of onset on index (tempo and a ritardando) leaves the timing noise."""
    on = notes.onset
    ioi = np.diff(on)
    if (ioi > 0.08).sum() < 2:
        return 0.0
    k = np.round((on - on[0]) / np.median(ioi[ioi > 0.08]))
    a = np.c_[np.ones_like(k), k, k**2]
    coef, *_ = np.linalg.lstsq(a, on, rcond=None)
    return float(np.std(on - a @ coef))


def test_planted_symbolic_signal_is_measurable_in_the_performance_midi(tmp_path):
    """What drives the labels a symbolic encoder must rank is in the performance MIDI: within a passage,
    a statistic of the notes alone tracks the label it drives (docs/data-format.md, "Demo")."""
    from scipy.stats import spearmanr

    from pianoray.data.loaders import NOTE_TABLES
    from pianoray.data.percepiano import PERCEPIANO_DIMS

    root = generate_demo(tmp_path / "d", seed=0, scale=0.3)
    c = open_corpus(DataConfig(root=root))
    t1 = c.manifest("T1")
    y = np.stack([c.labels19[s] for s in t1["segment_id"]])
    g = t1["passage"].to_numpy()
    notes = [NOTE_TABLES.get(c.path(r["perf_midi"]), r["perf_midi_sha"]) for r in t1.to_dict("records")]
    measures = {  # label it drives: (statistic of the performance notes, sign)
        "Dynamic_Little_dynamic_range_Large_dynamic_range": ([np.std(n.velocity) for n in notes], 1),
        "Articulation_Short_Long": ([np.mean(np.log(n.offset - n.onset)) for n in notes], 1),
        # late pedal releases: the first notes of the next harmony start under the old pedal
        "Pedal_Clean_Blurred": ([n.pedal.mean() for n in notes], 1),
        "Timing_Stable_Unstable": ([_onset_residual(n) for n in notes], 1),
    }
    dims = list(PERCEPIANO_DIMS)
    rho = {d: sign * spearmanr(_within(x, g), _within(y[:, dims.index(d)], g))[0] for d, (x, sign) in measures.items()}
    assert all(r > 0.45 for r in rho.values()), rho
    # The unsteady players' timing noise is above the REMI grid (20.8 ms), so REMI keeps it too.
    resid = np.array([_onset_residual(n) for n in notes])
    assert np.percentile(resid, 75) > 0.0208, np.percentile(resid, [25, 50, 75])


def _file_hashes(root, skip=()):
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*"))
            if p.is_file() and not p.relative_to(root).parts[0] in skip}


def test_the_planted_pairs_leave_the_corpus_byte_for_byte_as_it_was(tmp_path, monkeypatch):
    """The planted set draws from its own stream after the corpus is written: a demo made without it has the
    same bytes, file for file; a current demo without it gets it added (the same set) and nothing else moved."""
    import pianoray.data.demo as demo

    generate_demo(tmp_path / "with", seed=1, scale=0.1)
    with_planted = _file_hashes(tmp_path / "with")
    with monkeypatch.context() as m:
        m.setattr(demo, "write_planted", lambda *a, **k: None)
        generate_demo(tmp_path / "without", seed=1, scale=0.1)
    assert not (tmp_path / "without" / demo.PLANTED_DIR).exists()
    assert _file_hashes(tmp_path / "with", skip=(demo.PLANTED_DIR,)) == _file_hashes(tmp_path / "without")
    assert demo.ensure_demo(tmp_path / "without", seed=9, scale=9.0).startswith("added the planted")
    assert _file_hashes(tmp_path / "without") == with_planted
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # the replay's folder is gone


def test_planted_pairs_are_right_notes_against_wrong_ones_of_each_passage(tmp_path):
    from collections import Counter

    from pianoray.data.demo import PLANTED_PER_PASSAGE, open_planted
    from pianoray.data.midi import load_notes

    root = generate_demo(tmp_path / "d", seed=2, scale=0.1)
    assert open_planted(tmp_path / "elsewhere") is None
    planted = open_planted(root)
    passages = sorted(set(open_corpus(DataConfig(root=root)).manifest("T1")["passage"]))
    assert Counter(p["passage"] for p in planted.pairs) == {p: PLANTED_PER_PASSAGE for p in passages}
    assert planted.of_passages(passages[:1]) == planted.pairs[:PLANTED_PER_PASSAGE]
    m = planted.corpus.manifest("T1").set_index("segment_id")
    assert len(m) == 2 * len(planted.pairs) and m["n_frames"].between(16, 64).all()
    strays, fewer = [], []
    for pair in planted.pairs:
        rows = {k: m.loc[pair[k]] for k in ("expressive", "wrong")}
        assert rows["expressive"]["score_midi_sha"] == rows["wrong"]["score_midi_sha"]
        score = Counter(load_notes(planted.corpus.path(rows["expressive"]["score_midi"])).pitch.tolist())
        notes = {k: load_notes(planted.corpus.path(r["perf_midi"])) for k, r in rows.items()}
        assert not Counter(notes["expressive"].pitch.tolist()) - score  # every note right
        assert len(notes["wrong"]) < sum(score.values())  # missing notes
        fewer.append(len(notes["wrong"]) < len(notes["expressive"]))
        strays.append(bool(Counter(notes["wrong"].pitch.tolist()) - score))  # pitches the score does not have
    assert np.mean(strays) > 0.8 and np.mean(fewer) > 0.8
