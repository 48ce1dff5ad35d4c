"""Views (frames, notes), datasets, splits without leakage, the tier-mixed sampler and collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pianoray.config import DataConfig
from pianoray.data.cache import CacheWriter
from pianoray.data.corpus import open_corpus
from pianoray.data.loaders import (
    NOTE_FEATURES,
    NOTE_TABLES,
    SegmentDataset,
    TierMixedBatchSampler,
    assign_ranks,
    augmented_twins,
    build_split,
    collate,
    crop_start,
    make_loader,
    note_features,
)
from pianoray.data.midi import NoteTable
from pianoray.data.tiers import Tier

WIDTH, WINDOW = 4, 4


def _ramp(n: int, base: float) -> np.ndarray:
    """Frames whose first column is base + row index: a crop's start can be read back."""
    x = np.zeros((n, WIDTH), dtype=np.float32)
    x[:, 0] = base + np.arange(n)
    return x


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Two pieces; T1 passages pa0/pa1 (piece A), pb0 (piece B); T2/T3/T4 rows touching each."""
    root = tmp_path_factory.mktemp("cache")
    w = CacheWriter(root, width=WIDTH, window_frames=WINDOW)
    notes = NoteTable.from_arrays(np.arange(60, 80), np.arange(20) * 0.1, np.arange(20) * 0.1 + 0.3,
                                  np.full(20, 80), [[0.0, 0.95]])
    midi, sha = w.write_midi(notes, "midi/perf/x.mid")
    k = 0
    for passage, piece in (("pa0", "A"), ("pa1", "A"), ("pb0", "B")):
        for perf in range(4):
            n = 8 if perf == 0 else 20  # one short segment per passage, the rest longer than crops
            w.add("T1", {"segment_id": f"{passage}-{perf}", "piece": piece, "passage": passage, "performer": f"q{perf}",
                         "perf_midi": midi, "perf_midi_sha": sha, "labels19": np.full(19, perf / 4)},
                  _ramp(n if n % WINDOW == 0 else 8, 100 * k))
            k += 1
    for passage, piece in (("pa0", "A"), ("px", "X")):
        for perf in range(3):
            w.add("T2", {"segment_id": f"r-{passage}-{perf}", "piece": piece, "passage": passage, "performer": f"q{perf}",
                         "perf_midi": midi, "perf_midi_sha": sha, "round_id": f"round-{passage}",
                         "placement": perf + 1, "placement_score": 1 - perf / 2}, _ramp(8, 0))
    for piece in ("A", "X"):
        for perf in range(2):
            w.add("T3", {"segment_id": f"m-{piece}-{perf}", "piece": piece, "passage": f"{piece}-m", "performer": f"q{perf}",
                         "perf_midi": midi, "perf_midi_sha": sha, "group": piece}, _ramp(8, 0))
    for clean in ("pa0-1", "pa1-1", "pb0-2", "m-X-0"):
        passage = clean.split("-")[0] if not clean.startswith("m-") else "X-m"
        w.add("T4", {"segment_id": f"{clean}~aug", "piece": "A", "passage": passage, "performer": "q",
                     "perf_midi": midi, "perf_midi_sha": sha, "clean_id": clean, "augmentation": "noise"},
              _ramp(20 if not clean.startswith("m-") else 8, 1500))
    w.close()
    return open_corpus(DataConfig(root=root))


def _labels(corpus):
    return corpus.labels("percepiano19")[1]


def test_crop_start():
    rng = np.random.default_rng(0)
    assert crop_start(10, 16, True, rng, 4) == 0
    starts = {crop_start(40, 16, True, rng, 4) for _ in range(200)}
    assert starts == {0, 4, 8, 12, 16, 20, 24}
    assert crop_start(40, 16, False, rng, 4) == 12  # centre (12) on the window grid
    assert crop_start(41, 16, False, rng, 1) == 12


def test_frames_view_crops_and_masks(corpus):
    ds = SegmentDataset(corpus, "T1", ["pa0-0", "pa0-1"], ["frames"], _labels(corpus), train=True, max_frames=12)
    starts = set()
    for seed in range(30):
        batch = collate([ds[(0, seed, True)], ds[(1, seed, True)]], ["frames"])
        x, mask = batch.inputs["frames"], batch.inputs["frames_mask"]
        assert x.dtype == torch.float32 and x.shape == (2, 12, WIDTH)
        assert mask[0].sum() == 8 and mask[1].all()  # the 8-frame segment is padded, masked
        assert (x[0, 8:] == 0).all()
        start = int(x[1, 0, 0].item()) - 100  # pa0-1 is the 2nd segment written: base 100
        assert start % WINDOW == 0 and 0 <= start <= 8
        assert torch.equal(x[1, :, 0], torch.arange(start, start + 12, dtype=torch.float32) + 100)
        starts.add(start)
    assert len(starts) > 1
    ev = SegmentDataset(corpus, "T1", ["pa0-1"], ["frames"], _labels(corpus), train=False, max_frames=12)
    assert {int(collate([ev[(0, s, False)]], ["frames"]).inputs["frames"][0, 0, 0]) for s in range(5)} == {104}


def test_notes_view_features_crop_and_cache(corpus):
    NOTE_TABLES.clear()
    ds = SegmentDataset(corpus, "T1", ["pa0-0", "pa0-1", "pa1-1"], ["notes"], _labels(corpus), train=False, max_notes=8)
    b = collate([ds[i] for i in range(3)], ["notes"])
    assert b.inputs["notes"].shape == (3, 8, len(NOTE_FEATURES)) and b.inputs["notes_mask"].all()
    assert NOTE_TABLES.misses == 1  # the three rows share one MIDI: parsed once
    f = note_features(NoteTable.from_arrays([60, 64], [0.0, 0.5], [0.25, 1.5], [127, 64], [[0.4, 2.0]]))
    np.testing.assert_allclose(f, [[60 / 127, 1.0, np.log(0.25), 0.0, 0.0, 0.0],
                                   [64 / 127, 64 / 127, 0.0, 0.5, 1.0, 1.0]], rtol=1e-6, atol=1e-6)
    # centre crop of 20 notes to 8: notes 6..13, whose pitch is 66..73
    assert torch.allclose(b.inputs["notes"][0, :, 0] * 127, torch.arange(66, 74, dtype=torch.float32))


def test_supervision_fields(corpus):
    labels = _labels(corpus)
    ds = build_split(corpus, {"train": ["pa0-1", "pa0-2", "pb0-1"], "val": [], "test": []}, "train",
                     tiers=["T1", "T2", "T3"], views=["frames"], labels=labels)
    items = [ds[i] for i in range(len(ds))]
    b = collate(items, ["frames"])
    t1 = b.tier == 1
    assert b.has_labels.tolist() == t1.tolist()
    assert torch.equal(b.rank_target[t1], b.labels[t1])
    g = b.rank_group.tolist()
    assert g[0] == g[1] != g[2]  # pa0-1, pa0-2 share a passage; pb0-1 does not
    t2 = (b.tier == 2).nonzero().flatten().tolist()
    assert b.rank_target[t2].tolist()[0] == [1.0] * 19  # placement score broadcast to every dimension
    rounds = {}
    for i in t2:
        rounds.setdefault(b.segment_ids[i].rsplit("-", 1)[0], set()).add(g[i])
    assert len(rounds) == 2 and all(len(codes) == 1 for codes in rounds.values())
    assert not {g[i] for i in t2} & set(g[:3])
    t3 = (b.tier == 3).nonzero().flatten().tolist()
    assert all(b.rank_group[i] == -1 for i in t3) and b.piece[t3[0]] >= 0
    assert b.meta["passage"][0] == "pa0"


def test_t4_twins_share_a_batch_with_pair_indices(corpus):
    ds = build_split(corpus, {"train": ["pa0-0"], "val": [], "test": []}, "train",
                     tiers=["T1", "T4"], views=["frames"], labels=_labels(corpus), max_frames=12)
    checked = 0
    for batch in make_loader(ds, batch_size=4, shuffle=True, seed=1):
        for i in range(batch.size):
            if batch.tier[i] == 4:
                checked += 1
                j = int(batch.pair[i])
                assert j >= 0 and int(batch.pair[j]) == i
                ids = {batch.segment_ids[i], batch.segment_ids[j]}
                clean = min(ids, key=len)
                assert ids == {clean, f"{clean}~aug"}
                # both twins cropped at the same place: the ramps differ only by their bases
                assert torch.equal(batch.inputs["frames_mask"][i], batch.inputs["frames_mask"][j])
                real = batch.inputs["frames_mask"][i]
                di = (batch.inputs["frames"][i, :, 0] - batch.inputs["frames"][j, :, 0])[real]
                assert torch.allclose(di, di[0].expand_as(di))
            else:
                assert batch.pair[i] == -1
    assert checked >= 8  # every one of the 4 pairs, clean and augmented


def test_build_split_excludes_anything_that_leaks(corpus):
    fold = {"train": ["pa1-0", "pa1-1", "pa1-2", "pa1-3"], "val": ["pb0-0", "pb0-1"], "test": ["pa0-1", "pa0-2"]}
    ds = build_split(corpus, fold, "train", tiers=["T1", "T2", "T3", "T4"], views=["frames"], labels=_labels(corpus))
    ids = set(ds.segment_ids)
    assert {s for s in ids if s.startswith("pa")} == set(fold["train"]) | {"pa1-1~aug"}
    assert not any(s.startswith("r-pa0") for s in ids)  # T2 round on a held-out passage
    assert {"r-px-0", "r-px-1", "r-px-2"} <= ids
    assert not any(s.startswith("m-A") for s in ids)  # T3 group of a held-out piece (A)
    assert {"m-X-0", "m-X-1", "m-X-0~aug"} <= ids
    assert "pb0-2~aug" not in ids  # twin whose passage is held out
    for split in ("val", "test"):
        v = build_split(corpus, fold, split, tiers=["T1", "T2", "T3", "T4"], views=["frames"], labels=_labels(corpus))
        assert v.segment_ids == fold[split]
    tw = augmented_twins(corpus, ["pb0-1", "pb0-2"], ["frames"])
    assert [r["segment_id"] for r in tw.rows] == ["pb0-2~aug"] and not tw.train


def test_loader_is_deterministic_and_mixes_tiers(corpus):
    fold = {"train": [f"{p}-{i}" for p in ("pa0", "pa1", "pb0") for i in range(4)], "val": [], "test": []}
    ds = build_split(corpus, fold, "train", tiers=["T1", "T2", "T3", "T4"], views=["frames"], labels=_labels(corpus))

    def run(seed):
        return [(b.segment_ids, b.inputs["frames"]) for b in make_loader(ds, batch_size=8, shuffle=True, seed=seed)]

    a, b, c = run(5), run(5), run(6)
    assert [x[0] for x in a] == [x[0] for x in b]
    assert all(torch.equal(x[1], y[1]) for x, y in zip(a, b))
    assert [x[0] for x in a] != [x[0] for x in c]
    seen = {s for ids, _ in a for s in ids}
    assert {"pa0-1", "r-px-0", "m-X-1", "pa0-1~aug"} <= seen
    tiers_per_batch = [set(x.tier.tolist()) for x in make_loader(ds, batch_size=8, shuffle=True, seed=5)]
    assert sum(len(t) >= 3 for t in tiers_per_batch) >= len(tiers_per_batch) // 2
    assert all(len(ids) == 8 for ids, _ in a)  # exact batch size, T4 pairs included
    # T1 group members travel together: most batches with T1 samples hold a ranking pair
    batches = list(make_loader(ds, batch_size=8, shuffle=True, seed=5))
    with_pairs = [b for b in batches if (b.rank_group[b.tier == 1].unique(return_counts=True)[1] > 1).any()]
    assert len(with_pairs) >= len([b for b in batches if (b.tier == 1).sum() > 1]) * 0.7


def test_eval_loader_visits_each_item_once_in_order(corpus):
    ds = build_split(corpus, {"train": [], "val": ["pb0-0", "pa0-0", "pa1-2"], "test": []}, "val",
                     tiers=["T1"], views=["frames", "notes"], labels=_labels(corpus))
    batches = list(make_loader(ds, batch_size=2, shuffle=False))
    assert [s for b in batches for s in b.segment_ids] == ["pb0-0", "pa0-0", "pa1-2"]
    assert batches[0].inputs["frames"].shape[0] == 2 and "notes_mask" in batches[0].inputs


def test_loader_with_a_worker_matches_in_process(corpus):
    fold = {"train": [f"pa0-{i}" for i in range(4)], "val": [], "test": []}
    ds = build_split(corpus, fold, "train", tiers=["T1", "T4"], views=["frames"], labels=_labels(corpus))
    a = [b.inputs["frames"] for b in make_loader(ds, 4, shuffle=True, seed=2)]
    b = [b.inputs["frames"] for b in make_loader(ds, 4, shuffle=True, seed=2, num_workers=1)]
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


# ------------------------------------------------------------------------------ whole-segment evaluation


def _val_split(corpus, ids, views, **kw):
    return build_split(corpus, {"train": [], "val": list(ids), "test": []}, "val", tiers=["T1"], views=views,
                       labels=_labels(corpus), **kw)


@pytest.mark.parametrize("max_frames, spans", [(12, [(0, 12), (12, 20)]), (10, [(0, 8), (8, 16), (16, 20)])])
def test_frame_windows_cover_the_segment_once_on_the_window_grid(corpus, max_frames, spans):
    ds = _val_split(corpus, ["pa0-0", "pa0-1"], ["frames"], max_frames=max_frames)
    assert [w.spans["frames"] for w in ds.windows(0)] == [(0, 8)]  # shorter than a window: one, whole
    assert [w.spans["frames"] for w in ds.windows(1)] == spans
    assert [w.weight for w in ds.windows(1)] == [b - a for a, b in spans]
    batches = list(make_loader(ds, batch_size=2, shuffle=False))
    ids = [s for b in batches for s in b.segment_ids]
    assert ids == ["pa0-0"] + ["pa0-1"] * len(spans)  # a segment's windows are consecutive
    assert [k for b in batches for k in b.meta["window"]] == [0] + list(range(len(spans)))
    assert [w for b in batches for w in b.meta["weight"]] == [8.0] + [b - a for a, b in spans]
    seen = [b.inputs["frames"][i, b.inputs["frames_mask"][i], 0] for b in batches for i in range(b.size)]
    assert torch.equal(seen[0], torch.arange(0, 8.0))
    assert torch.equal(torch.cat(seen[1:]), torch.arange(100, 120.0))  # every frame of pa0-1, once, in order
    assert all(b.inputs["frames"].shape[1] <= max_frames for b in batches)  # memory bounded by windows


def test_note_windows_cover_the_segment_once(corpus):
    ds = _val_split(corpus, ["pa0-1"], ["notes"], max_notes=8)
    batches = list(make_loader(ds, batch_size=2, shuffle=False))
    notes = [b.inputs["notes"][i, b.inputs["notes_mask"][i]] for b in batches for i in range(b.size)]
    assert [len(n) for n in notes] == [8, 8, 4]
    pitch = torch.cat([n[:, 0] for n in notes]) * 127
    assert torch.allclose(pitch, torch.arange(60, 80, dtype=torch.float32))
    position = torch.cat([n[:, NOTE_FEATURES.index("position")] for n in notes])
    assert torch.allclose(position, torch.linspace(0, 1, 20))  # the place in the whole segment, not the window


def test_crop_mode_keeps_the_single_evaluation_crop(corpus):
    ds = _val_split(corpus, ["pa0-0", "pa0-1"], ["frames"], max_frames=12)
    batches = list(make_loader(ds, batch_size=4, shuffle=False, windows="crop"))
    assert len(batches) == 1 and batches[0].segment_ids == ["pa0-0", "pa0-1"]
    assert batches[0].inputs["frames"][1, 0, 0] == 104  # centred on the window grid, as before windows
    with pytest.raises(ValueError, match="windows"):
        make_loader(ds, batch_size=4, shuffle=False, windows="first")


def test_training_crops_draw_as_before(corpus):
    """Training ignores windows: crop starts come from the same per-sample generator as before (bit-identical
    seeded training)."""
    ds = build_split(corpus, {"train": ["pa0-1", "pa1-1"], "val": [], "test": []}, "train", views=["frames"],
                     labels=_labels(corpus), max_frames=12)
    for batch_seed in range(3):
        for keys in make_loader(ds, batch_size=2, shuffle=True, seed=batch_seed).batch_sampler:
            batch = collate([ds[k] for k in keys], ["frames"])
            for (g, seed, train), x in zip(keys, batch.inputs["frames"]):
                assert train and batch.meta["window"] == [0, 0] and batch.meta["weight"] == [1.0, 1.0]
                rng = np.random.default_rng(np.random.SeedSequence([seed, g]))
                start = crop_start(20, 12, True, rng, WINDOW)
                assert x[0, 0] % 100 == start


def test_twins_stay_single_and_paired_in_evaluation(corpus):
    tw = augmented_twins(corpus, ["pa0-1", "pa1-1"], ["frames"], max_frames=12)
    assert all(len(tw.windows(i)) == 1 for i in range(len(tw)))
    batches = list(make_loader(tw, batch_size=1, shuffle=False))
    assert [b.segment_ids for b in batches] == [["pa0-1", "pa0-1~aug"], ["pa1-1", "pa1-1~aug"]]
    assert all(b.pair.tolist() == [1, 0] for b in batches)
    assert all(b.inputs["frames"].shape[1] == 12 for b in batches)


def test_windows_of_several_views_follow_the_longest():
    from pianoray.data.loaders import combine_windows

    w = combine_windows({"frames": [(0, 12), (12, 20)], "notes": [(0, 8), (8, 16), (16, 20)]})
    assert [x.spans for x in w] == [{"frames": (0, 12), "notes": (0, 8)}, {"frames": (0, 12), "notes": (8, 16)},
                                    {"frames": (12, 20), "notes": (16, 20)}]
    assert [x.weight for x in w] == [8.0, 8.0, 4.0]
    assert [x.weight for x in combine_windows({"notes": [(0, 0)]})] == [1.0]  # an empty segment still counts


def test_predict_over_windows_sees_the_whole_segment(corpus):
    """A model that mean-pools frames, scored window by window and merged by ``predict``, gives exactly the
    mean over all the segment's frames: windows cover it once and weigh by length."""
    from types import SimpleNamespace

    from pianoray.training.evaluate import predict

    class MeanPool(torch.nn.Module):
        def forward(self, b):
            x, m = b.inputs["frames"], b.inputs["frames_mask"]
            mean = (x * m[..., None]).sum(1) / m.sum(1, keepdim=True)
            return SimpleNamespace(scores=mean, regression=mean, z=mean, difficulty=None)

    ids = ["pa0-0", "pa0-1", "pb0-1"]
    ds = _val_split(corpus, ids, ["frames"], max_frames=8)
    pred = predict(MeanPool(), make_loader(ds, batch_size=3, shuffle=False), torch.device("cpu"))
    assert pred.segment_ids == ids and len(pred.scores) == 3
    full = [np.asarray(corpus.frames("T1", corpus.locate(s)[1])).mean(0) for s in ids]
    np.testing.assert_allclose(pred.scores, np.stack(full), rtol=1e-5)
    assert pred.groups.tolist() == ["T1:pa0", "T1:pa0", "T1:pb0"]
    np.testing.assert_allclose(pred.labels, np.stack([_labels(corpus)[s] for s in ids]))


# ------------------------------------------------------------------------------------------ data parallel

TRAIN_ALL = [f"{p}-{i}" for p in ("pa0", "pa1", "pb0") for i in range(4)]


def _train_split(corpus, ids, tiers):
    return build_split(corpus, {"train": list(ids), "val": [], "test": []}, "train", tiers=tiers, views=["frames"],
                       labels=_labels(corpus))


def _recorded(corpus):
    """(dataset, sampler arguments, batches): what TierMixedBatchSampler yielded before it knew about ranks."""
    for case in json.loads((Path(__file__).parent / "fixtures" / "tier_mixed_batches.json").read_text()):
        kw = {k: case[k] for k in ("batch_size", "seed", "weights", "group_chunk")}
        yield _train_split(corpus, case["train"], case["tiers"]), kw, [[tuple(k) for k in b] for b in case["batches"]]


def _rank_batches(ds, world_size, **kw):
    """Per rank, its sampler's batches."""
    return [list(TierMixedBatchSampler(ds, rank=r, world_size=world_size, **kw)) for r in range(world_size)]


def _samples(ds, keys):
    return sum(2 if ds.locate(g)[0] is Tier.T4 else 1 for g, *_ in keys)


def test_one_rank_gives_the_batches_of_before(corpus):
    for ds, kw, before in _recorded(corpus):
        assert list(TierMixedBatchSampler(ds, **kw)) == before
        assert list(make_loader(ds, shuffle=True, world_size=1, **kw).batch_sampler) == before


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_out_each_global_batch(corpus, world_size):
    cases = [c for c in _recorded(corpus) if c[1]["batch_size"] % world_size == 0]
    assert len(cases) >= 2
    for ds, kw, before in cases:
        ranks = _rank_batches(ds, world_size, **kw)
        lengths = [len(TierMixedBatchSampler(ds, rank=r, world_size=world_size, **kw)) for r in range(world_size)]
        assert lengths == [len(before)] * world_size
        assert all(len(batches) == len(before) for batches in ranks)
        for step, whole in enumerate(before):
            parts = [batches[step] for batches in ranks]
            assert sorted(k for part in parts for k in part) == sorted(whole)  # disjoint, and all of it
            assert [_samples(ds, part) for part in parts] == [kw["batch_size"] // world_size] * world_size
        epoch = sorted(k for batches in ranks for b in batches for k in b)
        assert epoch == sorted(k for b in before for k in b)


def test_chunks_stay_whole_on_one_rank(corpus):
    ds = _train_split(corpus, TRAIN_ALL, ["T1"])
    # passages of 4 cut into chunks of 2; a global batch of 4 is two whole chunks, one per rank
    kw = dict(batch_size=4, seed=1, group_chunk=2)
    whole = list(TierMixedBatchSampler(ds, **kw).global_batches())
    assert [[len(keys) for keys, _ in b] for b in whole] == [[2, 2]] * 3
    ranks = _rank_batches(ds, 2, **kw)
    for step, slices in enumerate(whole):
        assert sorted(sorted(keys) for keys, _ in slices) == sorted(sorted(batches[step]) for batches in ranks)
    assert all(len({ds[k][0].passage for k in b}) == 1 for batches in ranks for b in batches)  # a ranking pair each
    # a chunk of 4 cannot fit one rank's 2 samples: split, 2 and 2
    kw = dict(batch_size=4, seed=1, group_chunk=4)
    assert [[len(keys) for keys, _ in b] for b in TierMixedBatchSampler(ds, **kw).global_batches()] == [[4]] * 3
    assert all(len(b) == 2 for batches in _rank_batches(ds, 2, **kw) for b in batches)


def test_a_chunk_is_split_only_when_it_fits_nowhere():
    assert assign_ranks([(2, 1), (1, 1), (1, 1)], 2, 2) == [0, 0, 1, 1]  # largest first, all whole
    assert assign_ranks([(3, 1), (3, 1), (2, 1)], 2, 4) == [0, 0, 0, 1, 1, 1, 0, 1]  # the 2 has to split
    # pairs (2 samples) first, leaving the odd gaps to single samples: 3 samples per rank
    assert assign_ranks([(2, 1), (1, 2), (1, 2)], 2, 3) == [0, 1, 0, 1]
    # odd capacity without enough single samples: a pair lands where it overflows, 4 and 2 samples
    assert assign_ranks([(3, 2)], 2, 3) == [0, 1, 0]


def test_each_epoch_reorders_every_rank_and_evaluation_is_not_sharded(corpus):
    from types import SimpleNamespace

    from pianoray.training.data import ExperimentData

    fold = SimpleNamespace(train=TRAIN_ALL[:8], val=["pb0-0", "pb0-1"], test=[])
    names, labels = corpus.labels("percepiano19")
    data = ExperimentData(corpus, list(names), labels, SimpleNamespace(folds=[fold], competition_rounds=None), 12, 64)

    def ids(split, epoch, **shard):
        return [b.segment_ids for b in data.loader(0, split, (Tier.T1, Tier.T2), ["frames"], 4, epoch=epoch, **shard)]

    for rank in (0, 1):
        assert ids("train", 1, rank=rank, world_size=2) != ids("train", 2, rank=rank, world_size=2)
        assert all(len(b) == 2 for b in ids("train", 1, rank=rank, world_size=2))
    whole = ids("val", 0)
    assert {s for b in whole for s in b} == {"pb0-0", "pb0-1"}
    assert ids("val", 0, rank=0, world_size=2) == ids("val", 0, rank=1, world_size=2) == whole


def test_sharding_arguments_are_checked(corpus):
    ds = _train_split(corpus, TRAIN_ALL, ["T1"])
    with pytest.raises(ValueError, match="batch_size=6 is not divisible by world_size=4"):
        TierMixedBatchSampler(ds, 6, world_size=4)
    for rank, world_size in ((2, 2), (-1, 2), (0, 0)):
        with pytest.raises(ValueError, match=f"rank={rank}, world_size={world_size}"):
            make_loader(ds, 4, shuffle=True, rank=rank, world_size=world_size)
    with pytest.raises(ValueError, match="rank=3"):
        make_loader(ds, 4, shuffle=False, rank=3, world_size=2)  # checked even where nothing is sharded


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Two T1 segments of one passage: s-0 with a score MIDI of its own (12 notes, pitches 40..51, unlike its
    performance's 20 notes, 60..79), s-1 without a score."""
    root = tmp_path_factory.mktemp("scored")
    w = CacheWriter(root, width=WIDTH, window_frames=WINDOW)
    perf = NoteTable.from_arrays(np.arange(60, 80), np.arange(20) * 0.1, np.arange(20) * 0.1 + 0.3, np.full(20, 80))
    score = NoteTable.from_arrays(np.arange(40, 52), np.arange(12) * 0.2, np.arange(12) * 0.2 + 0.2, np.full(12, 64))
    midi, sha = w.write_midi(perf, "midi/perf/x.mid")
    score_midi, score_sha = w.write_midi(score, "midi/score/x.mid")
    for k, has_score in enumerate((True, False)):
        row = {"segment_id": f"s-{k}", "piece": "A", "passage": "pa", "performer": f"q{k}", "perf_midi": midi,
               "perf_midi_sha": sha, "labels19": np.full(19, k / 2)}
        if has_score:
            row.update(score_midi=score_midi, score_midi_sha=score_sha)
        w.add("T1", row, _ramp(8, 0))
    w.close()
    return open_corpus(DataConfig(root=root))


def test_a_score_view_is_its_view_on_the_score_midi(scored):
    """score:notes loads the score's notes the notes view's way, under score: keys; evaluation windows are
    planned on the score too, and the longer performance leads the segment's windows."""
    ds = SegmentDataset(scored, "T1", ["s-0"], ["notes", "score:notes"], _labels(scored), train=False, max_notes=8)
    b = collate([ds[0]], ["notes", "score:notes"])
    assert set(b.inputs) == {"notes", "notes_mask", "score:notes", "score:notes_mask"}
    centre = torch.arange(42, 50, dtype=torch.float32)  # the centre 8 of the score's 12 notes
    assert torch.allclose(b.inputs["score:notes"][0, :, 0] * 127, centre)
    assert torch.equal(b.score_batch().inputs["notes"], b.inputs["score:notes"])
    assert set(b.score_batch().inputs) == {"notes", "notes_mask"} and b.score_batch().segment_ids == ["s-0"]
    windows = ds.windows(0)
    assert [w.spans["notes"] for w in windows] == [(0, 8), (8, 16), (16, 20)]
    assert [w.spans["score:notes"] for w in windows] == [(0, 8), (0, 8), (8, 12)]
    with pytest.raises(KeyError, match="no score views"):
        collate([ds[0]], ["notes"]).score_batch()


def test_a_segment_without_a_score_has_no_score_view(scored):
    from pianoray.data.loaders import segments_without_score
    from pianoray.data.views import get_view
    from pianoray.errors import InputError, UnknownNameError

    assert segments_without_score(scored) == ["s-1"] and segments_without_score(scored, ["T2"]) == []
    ds = SegmentDataset(scored, "T1", ["s-1"], ["score:notes"], _labels(scored), train=False)
    with pytest.raises(InputError, match="'s-1': a score view needs score_midi"):
        ds[0]
    with pytest.raises(UnknownNameError, match="'frames' reads frames, not the performance MIDI"):
        get_view("score:frames")
    assert get_view("score:notes") is get_view("score:notes") and get_view("score:notes").needs == "score_midi"
