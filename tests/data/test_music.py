"""Music groups: the pitch-run rule on hand-made sequences, the performer fallback, connected components,
the content-hash cache; on real PercePiano, the groups the data README counts and folds that never separate
music, checked with a signal the grouping does not use (one pianist's takes found inside each other)."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pandas as pd
import pytest

from pianoray.data.folds import check_folds, corpus_folds, make_folds, music_leaks
from pianoray.data.midi import NoteTable, load_notes, write_midi
from pianoray.data.music import (
    RUN_LENGTH,
    MusicGroupsUnavailable,
    Renditions,
    SharedPair,
    corpus_music_groups,
    group_passages,
    music_groups,
    overlap,
    pitch_runs,
)
from pianoray.data.tiers import Tier


def _runs(pitches, n=RUN_LENGTH):
    pitches = np.asarray(pitches)
    return pitch_runs(np.arange(len(pitches), dtype=float), pitches, n)


def test_pitch_runs_known_values():
    assert _runs([60, 62, 64, 65], n=2) == {bytes([60, 62]), bytes([62, 64]), bytes([64, 65])}
    assert _runs([60, 62, 60, 62], n=2) == {bytes([60, 62]), bytes([62, 60])}  # distinct runs
    assert _runs([60, 62], n=4) == {bytes([60, 62])}  # shorter than a run: one run
    # chord notes (same onset) are read low to high, whatever order the file lists them in
    assert pitch_runs(np.array([0.0, 0.0, 1.0]), np.array([67, 60, 64]), 3) == {bytes([60, 67, 64])}


def test_overlap_is_share_of_the_smaller_set():
    a, b = {b"x", b"y"}, {b"x", b"y", b"z", b"w"}
    assert overlap(a, b) == overlap(b, a) == 1.0
    assert overlap({b"x", b"q"}, b) == 0.5
    assert overlap(set(), b) == 0.0


def _phrase(seed, n=40):
    return np.random.default_rng(seed).integers(40, 90, n)


def test_group_passages_joins_shared_music_transitively_and_nothing_else():
    p, q, r = _phrase(1), _phrase(2), _phrase(3)
    renditions = {
        "A_16bars_1": Renditions(_runs(np.concatenate([p, q])), {}),  # contains B and C
        "B_8bars_1": Renditions(_runs(p), {}),
        "C_8bars_2": Renditions(_runs(q), {}),
        "D_8bars_3": Renditions(_runs(r), {}),  # other music
        "E_8bars_4": Renditions(_runs(np.concatenate([p[:10], r[:10]])), {}),  # too little of either
    }
    g = group_passages(renditions)
    assert g.group_of == {"A_16bars_1": "A_16bars_1", "B_8bars_1": "A_16bars_1", "C_8bars_2": "A_16bars_1",
                          "D_8bars_3": "D_8bars_3", "E_8bars_4": "E_8bars_4"}
    assert {(x.a, x.b, x.via) for x in g.pairs} == {("A_16bars_1", "B_8bars_1", "score"),
                                                    ("A_16bars_1", "C_8bars_2", "score")}
    assert g.members()["A_16bars_1"] == ["A_16bars_1", "B_8bars_1", "C_8bars_2"]


def test_without_a_score_the_same_pianists_takes_decide():
    p, q = _phrase(4), _phrase(5)
    take = _runs(np.concatenate([p, q]))
    renditions = {
        "long": Renditions(None, {"7": take, "8": _runs(q)}),
        "cut": Renditions(None, {"7": _runs(p), "9": _runs(p)}),  # pianist 7's take, cut
        "other": Renditions(None, {"8": _runs(_phrase(6))}),
    }
    g = group_passages(renditions)
    assert g.group_of["cut"] == g.group_of["long"] == "cut" and g.group_of["other"] == "other"
    assert g.pairs == (SharedPair("cut", "long", 1.0, "performer:7"),)


def _write(path, pitches):
    onset = np.arange(len(pitches)) * 0.25
    write_midi(NoteTable.from_arrays(pitches, onset, onset + 0.2, np.full(len(pitches), 64)), path)
    return str(path)


def test_music_groups_from_a_manifest_and_its_cache(tmp_path, monkeypatch):
    p, q = _phrase(7), _phrase(8)
    rows = []
    for passage, music in (("A", np.concatenate([p, q])), ("B", p), ("C", _phrase(9))):
        score = _write(tmp_path / f"{passage}_score.mid", music)
        for who in ("1", "2"):
            rows.append({"segment_id": f"{passage}_{who}", "passage": passage, "performer": who,
                         "perf_midi": _write(tmp_path / f"{passage}_{who}.mid", music), "score_midi": score})
    manifest = pd.DataFrame(rows)
    cache = tmp_path / "cache"
    g = music_groups(manifest, lambda rel: tmp_path / rel, cache_dir=cache)
    assert g.group_of == {"A": "A", "B": "A", "C": "C"}
    assert len(list(cache.glob("*.json"))) == 1
    # a cache hit reads the stored result without parsing any MIDI; changed content misses it
    import pianoray.data.midi as midi

    real_load = midi.load_notes
    monkeypatch.setattr(midi, "load_notes", lambda path: pytest.fail(f"parsed {path} despite the cache"))
    assert music_groups(manifest, lambda rel: tmp_path / rel, cache_dir=cache) == g
    monkeypatch.setattr(midi, "load_notes", real_load)
    _write(tmp_path / "A_score.mid", _phrase(10))
    assert music_groups(manifest, lambda rel: tmp_path / rel, cache_dir=cache).group_of["B"] == "B"


def test_no_midi_says_why():
    manifest = pd.DataFrame({"segment_id": ["a"], "passage": ["P"], "performer": ["1"]})
    with pytest.raises(MusicGroupsUnavailable, match="no MIDI"):
        music_groups(manifest, lambda rel: None, cache_dir=None)


def test_music_leaks_names_both_passages():
    keys = ["a1", "a2", "b1", "b2", "c1", "c2", "d1", "d2", "e1", "e2"]
    passage_of = {k: k[0].upper() for k in keys}
    fs = make_folds(keys, [passage_of[k] for k in keys], k=2, unit="passage", seed=0)
    part = {passage_of[k]: name for name in ("train", "val", "test") for k in getattr(fs.folds[0], name)}
    a, b = sorted(p for p in part if part[p] == "test")[0], sorted(p for p in part if part[p] == "train")[0]
    lines = music_leaks(fs, passage_of, [SharedPair(a, b, 0.75, "score")])
    assert lines and lines[0].startswith("fold 0 separates music") and repr(a) in lines[0] and repr(b) in lines[0]
    assert music_leaks(fs, passage_of, [SharedPair(a, a, 1.0, "score")]) == []


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def corpus(percepiano_dir):
    from pianoray.config import DataConfig
    from pianoray.data.corpus import open_corpus

    return open_corpus(DataConfig(root=percepiano_dir, source="percepiano", demo=None))


@pytest.mark.realdata
def test_real_music_groups_match_the_data_readme(corpus):
    g = corpus_music_groups(corpus, cache_dir=None)
    members = g.members()
    assert len(g.group_of) == 79 and len(g.pairs) == 49 and len(members) == 45
    assert max(map(len, members.values())) == 11
    # the README's example: pianist 1's 8-bar segment 02 is cut from the same take as 16-bar segment 01
    assert g.group_of["Schubert_D960_mv2_8bars_02"] == g.group_of["Schubert_D960_mv2_16bars_01"]
    # nothing merges different pieces: every group lies within one piece
    piece = dict(zip(corpus.manifest(Tier.T1)["passage"], corpus.manifest(Tier.T1)["piece"]))
    assert all(len({piece[p] for p in ps}) == 1 for ps in members.values())


def _takes_inside_each_other(corpus, n=8, share=0.9) -> list[tuple[str, str]]:
    """Independent of the score-based rule: per pianist, pairs of performance segments of different
    passages where >= 90% of one's runs of n (pitch, velocity) notes occur in the other (the same take,
    cut twice, or a repeat played identically)."""
    m = corpus.manifest(Tier.T1)
    by_pianist = defaultdict(list)
    for r in m.itertuples():
        if r.performer.startswith("Score"):  # deadpan renderings: the same for every repeat by design
            continue
        notes = load_notes(r.perf_midi)
        order = np.lexsort((notes.pitch, notes.onset))
        seq = list(zip(notes.pitch[order].tolist(), notes.velocity[order].tolist()))
        grams = {tuple(seq[i:i + n]) for i in range(max(1, len(seq) - n + 1))}
        by_pianist[r.performer].append((r.segment_id, r.passage, grams))
    pairs = []
    for segs in by_pianist.values():
        for i, (a, pa, ga) in enumerate(segs):
            for b, pb, gb in segs[i + 1:]:
                small, large = (ga, gb) if len(ga) <= len(gb) else (gb, ga)
                if pa != pb and len(small & large) >= share * len(small):
                    pairs.append((a, b))
    return pairs


def _crossing(fs, pairs):
    out = []
    for i, f in enumerate(fs.folds):
        part = {k: name for name in ("train", "val", "test") for k in getattr(f, name)}
        out += [(i, a, b) for a, b in pairs if part[a] != part[b]]
    return out


@pytest.mark.realdata
def test_real_folds_never_separate_one_pianists_shared_takes(corpus):
    """The default folds of the PercePiano config (unit music) keep every such pair on one side in every
    fold; passage folds do not (so the check has teeth)."""
    from pianoray.config import load_config
    from pianoray.settings import PROJECT_ROOT
    from pianoray.training.data import ExperimentData

    pairs = _takes_inside_each_other(corpus)
    assert len(pairs) >= 100  # 120 on the shared subset: 8-bar cuts inside 16-bar takes, repeats
    cfg = load_config(PROJECT_ROOT / "experiments" / "percepiano.yaml")
    fs = ExperimentData.from_config(cfg).folds
    assert fs.unit == "music"
    assert _crossing(fs, pairs) == []
    assert check_folds(fs) == []
    tests = [len(f.test) for f in fs.folds]
    assert max(abs(t / np.mean(tests) - 1) for t in tests) <= 0.15
    leaky = corpus_folds(corpus, k=4, unit="passage", seed=cfg.seed)
    assert len(_crossing(leaky, pairs)) > 10
