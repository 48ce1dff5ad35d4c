"""From a corpus to batches: the ``frames`` and ``notes`` views, per-tier datasets, splits, a tier-mixed
batch sampler and the collate function that builds a :class:`pianoray.data.batch.Batch`.

Randomness (crops, order) depends only on the loader's seed: the sampler hands each sample its own
seed, so a resumed run, or a run with worker processes, sees exactly the same batches.

Training draws one random crop per segment. Evaluation covers whole segments: the loader yields one sample
per evaluation window (``SegmentDataset.windows``), tagged with its window index and weight in
``batch.meta``, and ``pianoray.training.evaluate.predict`` merges them back into one prediction per segment.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from dataclasses import dataclass
from functools import partial
from itertools import accumulate, groupby
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier, parse_tier
from pianoray.data.views import SegmentContext, View, consecutive_windows, get_view, register_view
from pianoray.errors import InputError, UnknownNameError

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------------------ views


def crop_start(n: int, max_len: int, train: bool, rng: np.random.Generator, align: int = 1) -> int:
    """Start of a ``max_len`` crop of an ``n``-long sequence: random in training, centred in evaluation.

    Starts are multiples of ``align`` (MuQ windows) when the sequence is longer than the crop, so a
    crop never begins mid-window.
    """
    if n <= max_len:
        return 0
    align = max(1, align)
    last = (n - max_len) // align  # last aligned start that still fits
    if train:
        return int(rng.integers(0, last + 1)) * align
    return ((n - max_len) // 2 // align) * align


def pad_sequences(items: Sequence[np.ndarray], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """[L_i, F] arrays -> (padded [B, T, F] float32, mask [B, T] bool); T = max L_i (at least 1)."""
    t = max([len(x) for x in items] + [1])
    out = torch.zeros(len(items), t, width, dtype=torch.float32)
    mask = torch.zeros(len(items), t, dtype=torch.bool)
    for i, x in enumerate(items):
        if len(x):
            out[i, : len(x)] = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            mask[i, : len(x)] = True
    return out, mask


def _load_frames(ctx: SegmentContext) -> np.ndarray:
    """[T, D] float32 (T <= max_len): the segment's cached frames, cropped (or the window ``ctx.span``)."""
    corpus = ctx.corpus
    frames = corpus.frames(ctx.row["tier"], ctx.row)
    if ctx.span is not None:
        start, stop = ctx.span
    else:
        start = crop_start(frames.shape[0], ctx.max_len, ctx.train, ctx.rng, corpus.meta.window_frames)
        stop = start + ctx.max_len
    return np.array(frames[start:stop], dtype=np.float32)  # copy out of the mmap


def _frame_windows(ctx: SegmentContext) -> list[tuple[int, int]]:
    """Consecutive max_len windows of the segment's frames, starting on the MuQ window grid."""
    n = ctx.corpus.frames(ctx.row["tier"], ctx.row).shape[0]
    return consecutive_windows(n, ctx.max_len, ctx.corpus.meta.window_frames)


def _collate_frames(items: list[np.ndarray]) -> dict[str, torch.Tensor]:
    width = items[0].shape[1] if items else 0
    x, mask = pad_sequences(items, width)
    return {"frames": x, "frames_mask": mask}


class NoteTableCache:
    """Per-process LRU of parsed NoteTables keyed by the MIDI's sha256, so epochs never re-parse MIDI."""

    def __init__(self, maxsize: int = 8192) -> None:
        self.maxsize = maxsize
        self._items: OrderedDict[str, Any] = OrderedDict()
        self.misses = 0

    def get(self, path: Any, sha: str | None) -> Any:
        from pianoray.data.midi import load_notes

        key = sha or str(path)
        table = self._items.get(key)
        if table is None:
            self.misses += 1
            table = load_notes(path)
            self._items[key] = table
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return table

    def clear(self) -> None:
        self._items.clear()
        self.misses = 0


NOTE_TABLES = NoteTableCache()

# The per-note features of the ``notes`` view, in column order (F = 6):
NOTE_FEATURES: tuple[str, ...] = (
    "pitch",  # MIDI pitch / 127
    "velocity",  # velocity / 127
    "log_duration",  # ln(duration in s), duration floored at 1 ms
    "ioi",  # seconds since the previous note's onset (0 for the first), capped at 4 s
    "position",  # onset within the segment: (onset - first onset) / (last onset - first onset), in [0, 1]
    "pedal",  # 1 if the sustain pedal is down at the note's onset
)


def note_features(notes: Any) -> np.ndarray:
    """NoteTable with L notes -> [L, len(NOTE_FEATURES)] float32."""
    onset = notes.onset
    ioi = np.diff(onset, prepend=onset[:1]) if len(onset) else onset
    span = float(onset[-1] - onset[0]) if len(onset) > 1 else 0.0
    pos = (onset - onset[0]) / span if span > 0 else np.zeros_like(onset)
    return np.stack(
        [
            notes.pitch / 127.0,
            notes.velocity / 127.0,
            np.log(np.maximum(notes.offset - notes.onset, 1e-3)),
            np.minimum(ioi, 4.0),
            pos,
            notes.pedal.astype(np.float64),
        ],
        axis=1,
    ).astype(np.float32)


def _note_table(ctx: SegmentContext) -> Any:
    row = ctx.row
    path = ctx.corpus.path(row.get("perf_midi"))
    if path is None:
        raise InputError(f"segment {row['segment_id']!r}: the notes view needs perf_midi, but it is empty")
    return NOTE_TABLES.get(path, row.get("perf_midi_sha"))


def _load_notes(ctx: SegmentContext) -> np.ndarray:
    """[L, F] float32 (L <= max_len): features of the performance MIDI's notes, cropped to max_len notes
    (or the window ``ctx.span``). Features are computed on the whole segment first, so ``position`` stays
    the note's place in the segment."""
    feats = note_features(_note_table(ctx))
    if ctx.span is not None:
        return feats[ctx.span[0] : ctx.span[1]]
    start = crop_start(len(feats), ctx.max_len, ctx.train, ctx.rng)
    return feats[start : start + ctx.max_len]


def _note_windows(ctx: SegmentContext) -> list[tuple[int, int]]:
    return consecutive_windows(len(_note_table(ctx).onset), ctx.max_len)


def _collate_notes(items: list[np.ndarray]) -> dict[str, torch.Tensor]:
    x, mask = pad_sequences(items, len(NOTE_FEATURES))
    return {"notes": x, "notes_mask": mask}


register_view(View("frames", _load_frames, _collate_frames, needs="frames", windows=_frame_windows))
register_view(View("notes", _load_notes, _collate_notes, needs="perf_midi", windows=_note_windows))


# ------------------------------------------------------------------------------------ samples


@dataclass
class Sample:
    """One sample before collation. Group keys are strings, turned into per-batch codes by ``collate``."""

    segment_id: str
    tier: Tier
    inputs: dict[str, Any]
    labels: np.ndarray | None = None  # [N] (T1 with labels)
    rank_target: np.ndarray | None = None  # [N] (T1: labels; T2: placement score broadcast)
    rank_group: str | None = None  # "T1:<passage>" / "T2:<round_id>"
    piece: str | None = None
    performer: str | None = None
    passage: str | None = None
    twin: str | None = None  # T4: clean and augmented samples share this key
    window: int = 0  # evaluation: the window's index within its segment
    weight: float = 1.0  # evaluation: the window's weight in its segment's prediction (items it holds)
    difficulty: float | None = None  # the piece's scaled grade, where the split carries grades (training)


EVAL_WINDOWS = ("all", "crop")  # make_loader(windows=...): whole segments, or the single pre-window crop


@dataclass(frozen=True)
class Window:
    """One evaluation window of a segment.

    spans: view -> [start, stop) in that view's unit (``View.windows``); None for a view without windows
        (it loads its single evaluation crop). weight: the number of items in the window, what the segment's
        prediction is weighted by (``pianoray.training.evaluate.segment_mean``); at least 1.
    """

    spans: dict[str, tuple[int, int] | None]
    weight: float


def combine_windows(per_view: Mapping[str, Sequence[tuple[int, int] | None]]) -> list[Window]:
    """Each view's windows -> the segment's windows.

    One view (every encoder today): its windows, each weighted by its item count. Several views (a fusion
    input): as many windows as the view with the most (the first declared on ties), whose item counts are the
    weights; window k shows each other view v its window floor(k * n_v / W), so every item of every view is
    seen. An empty window (only an empty segment has one) weighs 1.
    """
    lead = max(per_view, key=lambda v: len(per_view[v]))
    n = len(per_view[lead])
    out = []
    for k in range(n):
        spans = {v: w[k * len(w) // n] for v, w in per_view.items()}
        span = spans[lead]
        out.append(Window(spans, float(max(1, span[1] - span[0])) if span is not None else 1.0))
    return out


def _seed_for(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, index]))


def _str_or_none(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return str(v)


class SegmentDataset:
    """The segments of one tier, as samples with the supervision fields that tier carries.

    Item ``i`` -> list[Sample]: one sample, or for T4 two (the clean twin first, then the augmented
    one), so that both land in the same batch. Indexing with ``(i, seed, train)`` (what the sampler
    yields) makes crops reproducible; plain ``i`` uses the dataset's own seed and mode.

    max_frames crops the ``frames`` view; max_notes crops every other (symbolic) view. ``grades`` (piece ->
    scaled grade, :func:`scaled_grades`): the difficulty targets its samples carry (a piece without one: none).
    """

    def __init__(
        self,
        corpus: Any,
        tier: str | Tier,
        segment_ids: Iterable[str] | None,
        views: Iterable[str],
        labels: Mapping[str, np.ndarray] | None = None,
        train: bool = False,
        max_frames: int = 64,
        max_notes: int = 512,
        seed: int = 0,
        n_dims: int | None = None,
        grades: Mapping[str, float] | None = None,
    ) -> None:
        self.corpus = corpus
        self.tier = parse_tier(tier)
        self.grades = dict(grades) if grades is not None else None
        self.views = tuple(views)
        for v in self.views:
            get_view(v)  # fail now, naming the view, not in a worker
        self.labels = dict(labels) if labels is not None else None
        self.train = train
        self.max_frames = max_frames
        self.max_notes = max_notes
        self.seed = seed
        if n_dims is None:
            n_dims = len(next(iter(self.labels.values()))) if self.labels else 0
        self.n_dims = n_dims
        m = corpus.manifest(self.tier)
        if segment_ids is not None:
            ids = list(segment_ids)
            pos = {sid: i for i, sid in enumerate(m["segment_id"])}
            missing = [s for s in ids if s not in pos]
            if missing:
                raise UnknownNameError(f"{corpus.root}: tier {self.tier.name} has no segments {missing[:5]}")
            m = m.iloc[[pos[s] for s in ids]]
        self.rows: list[dict[str, Any]] = [dict(r, tier=self.tier) for r in m.to_dict("records")]
        self._windows: dict[int, list[Window]] = {}
        if self.tier is Tier.T1 and self.labels is not None:
            unlabeled = [r["segment_id"] for r in self.rows if r["segment_id"] not in self.labels]
            if unlabeled:
                raise UnknownNameError(f"{corpus.root}: T1 segments without labels: {unlabeled[:5]}")

    def __len__(self) -> int:
        return len(self.rows)

    def group_key(self, i: int) -> str:
        """The key the sampler keeps together: passage (T1), round (T2), piece (T3), clean segment (T4)."""
        r = self.rows[i]
        col = {Tier.T1: "passage", Tier.T2: "round_id", Tier.T3: "group", Tier.T4: "clean_id"}[self.tier]
        return str(r.get(col) if r.get(col) is not None else r["segment_id"])

    def samples_per_item(self) -> int:
        return 2 if self.tier is Tier.T4 else 1

    def _context(self, row: dict[str, Any], v: str, train: bool, rng: np.random.Generator,
                 span: tuple[int, int] | None = None) -> SegmentContext:
        max_len = self.max_frames if v == "frames" else self.max_notes
        return SegmentContext(row, self.corpus, train, rng, max_len, span=span)

    def _inputs(self, row: dict[str, Any], rng_seed: tuple[int, int], train: bool,
                spans: Mapping[str, tuple[int, int] | None] | None = None) -> dict[str, Any]:
        out = {}
        for v in self.views:
            # A fresh generator per view from the same seed: the twin of a T4 pair crops identically.
            rng = _seed_for(*rng_seed)
            out[v] = get_view(v).load(self._context(row, v, train, rng, spans.get(v) if spans else None))
        return out

    def windows(self, i: int) -> list[Window]:
        """The evaluation windows of item ``i``, covering its whole segment (memoised: computing them reads
        the segment's features once). T4 items keep one window, the single evaluation crop, shared by the
        clean and augmented twins: they may differ in length (time stretch), and robustness compares the
        two on the same crop."""
        if self.tier is Tier.T4:
            return [Window({v: None for v in self.views}, 1.0)]
        if i not in self._windows:
            row, rng = self.rows[i], np.random.default_rng(0)  # windows draw nothing
            per_view = {}
            for v in self.views:
                plan = get_view(v).windows
                per_view[v] = plan(self._context(row, v, False, rng)) if plan is not None else [None]
            self._windows[i] = combine_windows(per_view)
        return self._windows[i]

    def __getitem__(self, key: int | tuple[int, int, bool] | tuple[int, int, bool, int]) -> list[Sample]:
        """``i`` or ``(i, seed, train)``: the item with its single crop; ``(i, seed, False, k)``: its
        evaluation window ``k`` (see ``windows``)."""
        k: int | None = None
        if isinstance(key, tuple):
            i, seed, train, *rest = key
            k = rest[0] if rest else None
        else:
            i, seed, train = int(key), self.seed, self.train
        row = self.rows[i]
        rng_seed = (seed, i)
        window = self.windows(i)[k] if k is not None else None
        spans = window.spans if window is not None else None
        base = dict(
            piece=_str_or_none(row.get("piece")),
            performer=_str_or_none(row.get("performer")),
            passage=_str_or_none(row.get("passage")),
        )
        if window is not None:
            base.update(window=k, weight=window.weight)
        if self.grades is not None:
            base["difficulty"] = self.grades.get(str(row.get("piece")))
        sid = row["segment_id"]
        if self.tier is Tier.T1:
            y = self.labels.get(sid) if self.labels is not None else None
            y = None if y is None else np.asarray(y, dtype=np.float32)
            return [Sample(sid, Tier.T1, self._inputs(row, rng_seed, train, spans), labels=y, rank_target=y,
                           rank_group=f"T1:{row['passage']}" if y is not None else None, **base)]
        if self.tier is Tier.T2:
            score = float(row["placement_score"])
            target = np.full(self.n_dims, score, dtype=np.float32)
            return [Sample(sid, Tier.T2, self._inputs(row, rng_seed, train, spans), rank_target=target,
                           rank_group=f"T2:{row['round_id']}", **base)]
        if self.tier is Tier.T3:
            base["piece"] = _str_or_none(row.get("group")) or base["piece"]
            return [Sample(sid, Tier.T3, self._inputs(row, rng_seed, train, spans), **base)]
        # T4: the clean twin (from whichever tier holds it) and the augmented segment, same crops.
        clean_tier, clean_row = self.corpus.locate(row["clean_id"])
        clean_row = dict(clean_row, tier=clean_tier)
        twin = f"{row['clean_id']}|{sid}"
        clean = Sample(str(row["clean_id"]), Tier.T4, self._inputs(clean_row, rng_seed, train, spans), twin=twin,
                       **base)
        aug = Sample(sid, Tier.T4, self._inputs(row, rng_seed, train, spans), twin=twin, **base)
        return [clean, aug]


class SplitDataset:
    """Several tiers' datasets behind one flat index: item ``g`` is part ``k``'s item ``g - start_k``."""

    def __init__(self, parts: Mapping[Tier, SegmentDataset]) -> None:
        self.parts: dict[Tier, SegmentDataset] = {t: p for t, p in sorted(parts.items()) if len(p)}
        self.starts: dict[Tier, int] = {}
        n = 0
        for t, p in self.parts.items():
            self.starts[t] = n
            n += len(p)
        self._len = n
        first = next(iter(self.parts.values()), None)
        self.views = first.views if first is not None else ()
        self.train = first.train if first is not None else False
        self.seed = first.seed if first is not None else 0

    def __len__(self) -> int:
        return self._len

    def locate(self, g: int) -> tuple[Tier, int]:
        for t in reversed(list(self.parts)):
            if g >= self.starts[t]:
                return t, g - self.starts[t]
        raise IndexError(g)

    def windows(self, g: int) -> list[Window]:
        t, i = self.locate(g)
        return self.parts[t].windows(i)

    def __getitem__(self, key: int | tuple) -> list[Sample]:
        if isinstance(key, tuple):
            t, i = self.locate(key[0])
            return self.parts[t][(i, *key[1:])]
        t, i = self.locate(int(key))
        return self.parts[t][i]

    @property
    def segment_ids(self) -> list[str]:
        return [r["segment_id"] for p in self.parts.values() for r in p.rows]


# ------------------------------------------------------------------------------------- splits


def build_split(
    corpus: Any,
    fold: Mapping[str, Sequence[str]],
    split: str,
    tiers: Iterable[str | Tier] = (Tier.T1,),
    views: Iterable[str] = ("frames",),
    labels: Mapping[str, np.ndarray] | None = None,
    max_frames: int = 64,
    max_notes: int = 512,
    seed: int = 0,
    grades: Mapping[str, float] | None = None,
) -> SplitDataset:
    """The dataset of one split of one fold.

    fold: {"train": [...], "val": [...], "test": [...]} T1 segment ids, and optionally "held_rounds": the
    competition rounds the fold holds out. val/test are T1 only. For "train", the other tiers join, minus
    anything that would leak the fold's held-out (val + test) segments: T2/T4 rows of a held-out passage,
    T2 rows of a held-out round, T3 rows of a held-out piece, T4 twins of a held-out segment.
    ``grades`` (training only): the difficulty targets, of pieces the held-out parts do not hold
    (:func:`training_grades`).
    """
    if split not in ("train", "val", "test"):
        raise ValueError(f"split {split!r}: expected train, val or test")
    tiers = sorted({parse_tier(t) for t in tiers} | {Tier.T1})
    train = split == "train"
    n_dims = len(next(iter(labels.values()))) if labels else None
    common = dict(views=views, labels=labels, train=train, max_frames=max_frames, max_notes=max_notes,
                  seed=seed, n_dims=n_dims, grades=grades if train else None)
    parts = {Tier.T1: SegmentDataset(corpus, Tier.T1, list(fold[split]), **common)}
    if train:
        held = set(fold.get("val", ())) | set(fold.get("test", ()))
        t1 = corpus.manifest(Tier.T1)
        held_rows = t1[t1["segment_id"].isin(held)]
        held_passages, held_pieces = set(held_rows["passage"]), set(held_rows["piece"])
        for tier in tiers:
            if tier is Tier.T1 or tier not in corpus.tiers:
                continue
            m = corpus.manifest(tier)
            keep = ~m["passage"].isin(held_passages)
            if tier is Tier.T3:
                keep &= ~m["piece"].isin(held_pieces) & ~m["group"].isin(held_pieces)
            if tier is Tier.T2:
                keep &= ~m["round_id"].astype(str).isin(set(fold.get("held_rounds", ())))
            if tier is Tier.T4:
                keep &= ~m["clean_id"].isin(held)
            parts[tier] = SegmentDataset(corpus, tier, m.loc[keep, "segment_id"].tolist(), **common)
    return SplitDataset(parts)


def grade_range(difficulty: Mapping[str, float] | None) -> tuple[float, float] | None:
    """(lowest, highest) of the corpus's difficulty grades, the scale of the difficulty head's targets; None with
    fewer than two distinct grades (nothing to scale, or to learn)."""
    grades = [float(g) for g in (difficulty or {}).values()]
    return (min(grades), max(grades)) if len(set(grades)) > 1 else None


def scaled_grades(difficulty: Mapping[str, float]) -> dict[str, float]:
    """piece -> its difficulty grade scaled to [0, 1] over the corpus's grades ((g - min) / (max - min),
    :func:`grade_range`): what the difficulty head predicts; {} for fewer than two distinct grades."""
    if (scale := grade_range(difficulty)) is None:
        return {}
    lo, hi = scale
    return {str(p): (float(g) - lo) / (hi - lo) for p, g in difficulty.items()}


def held_pieces(corpus: Any, fold: Mapping[str, Sequence[str]]) -> set[str]:
    """The pieces of a fold's held-out (val + test) T1 segments. Folds keep a passage's music together, not a
    piece's: a piece may have passages on both sides, so its grade is held out with it."""
    t1 = corpus.manifest(Tier.T1).set_index("segment_id")
    held = [s for split in ("val", "test") for s in fold.get(split, ())]
    return set(t1.loc[held, "piece"].astype(str))


def training_grades(corpus: Any, fold: Mapping[str, Sequence[str]]) -> dict[str, float]:
    """The difficulty head's training targets on a fold: the scaled grades (:func:`scaled_grades`) of the pieces
    it does not hold out (:func:`held_pieces`), so that no grade of a held-out piece is trained on."""
    held = held_pieces(corpus, fold)
    return {p: g for p, g in scaled_grades(getattr(corpus, "difficulty", None) or {}).items() if p not in held}


def augmented_twins(
    corpus: Any,
    segment_ids: Iterable[str],
    views: Iterable[str],
    max_frames: int = 64,
    max_notes: int = 512,
) -> SegmentDataset:
    """The T4 pairs whose clean segment is one of ``segment_ids`` (e.g. a fold's T1 validation set),
    for measuring robustness on held-out segments. Evaluation mode: one window per pair, the single
    evaluation crop (centred for frames), the same for both twins."""
    m = corpus.manifest(Tier.T4)
    ids = m.loc[m["clean_id"].isin(set(segment_ids)), "segment_id"].tolist()
    return SegmentDataset(corpus, Tier.T4, ids, views, train=False, max_frames=max_frames, max_notes=max_notes)


def segments_without_score(corpus: Any, tiers: Iterable[str | Tier] | None = None) -> list[str]:
    """The segments of ``tiers`` (default: every tier of the corpus) whose manifest row has no score MIDI, the
    ones a score view (``score:<view>``) cannot load, in tier then manifest order."""
    out: list[str] = []
    for tier in (corpus.tiers if tiers is None else [parse_tier(t) for t in tiers]):
        if tier not in corpus.tiers:
            continue
        m = corpus.manifest(tier)
        score = m["score_midi"] if "score_midi" in m.columns else pd.Series([None] * len(m), index=m.index)
        out += m.loc[score.isna() | (score.astype(str) == ""), "segment_id"].astype(str).tolist()
    return out


# ------------------------------------------------------------------------------------ sampling


Key = tuple[int, int, bool]  # (index, sample_seed, train): what a training batch sampler yields per item
Slice = tuple[list[Key], int]  # consecutive members of one chunk in one batch, and each member's samples


def _check_rank(rank: int, world_size: int) -> None:
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank}, world_size={world_size}: expected 0 <= rank < world_size")


def assign_ranks(slices: Sequence[tuple[int, int]], world_size: int, capacity: int) -> list[int]:
    """The rank of each item of a global batch, given as chunk-slices (n items, samples per item) in order.

    Greedy: slices of two-sample items (T4 pairs) first, then larger slices first, each into the rank with the
    most room left (the lowest on ties); a slice is split only when it fits nowhere, filling that rank and
    carrying on with the rest. Pairs go first because only single samples can fill an odd gap: so every rank
    gets exactly ``capacity`` samples whenever that is possible. It is not when ``capacity`` is odd and the
    batch holds fewer single samples than ranks; a pair that fits nowhere then goes to the rank with the most
    room, which ends one sample over while another ends one under (two ranks and a T4-only batch of 2: one
    rank's batch is empty). Being greedy, it may split a chunk that an exhaustive packing would keep whole
    (slices 3, 3, 2, 2, 2 into two ranks of 6).
    """
    starts = list(accumulate((n for n, _ in slices), initial=0))
    owner = [0] * starts[-1]
    room = [capacity] * world_size
    for s in sorted(range(len(slices)), key=lambda s: (-slices[s][1], -slices[s][0])):
        n, w = slices[s]
        pos, end = starts[s], starts[s] + n
        while pos < end:
            r = max(range(world_size), key=room.__getitem__)
            k = min(end - pos, max(1, room[r] // w))
            owner[pos : pos + k] = [r] * k
            room[r] -= k * w
            pos += k
    return owner


class TierMixedBatchSampler:
    """Batches that mix the dataset's tiers in proportion, keeping group members together.

    Each tier's items are ordered by: groups shuffled, each group's members shuffled and cut into
    chunks of at most ``group_chunk`` (balanced, so no lone member when a group has >= 2), chunks
    shuffled. A batch takes its quota of items from each tier's stream in order, so a batch holds
    whole chunks: several members of one passage/round, hence ranking pairs. ``weights`` (tier ->
    share of samples) default to the tiers' sizes; a T4 item counts as two samples.

    Data parallel (``world_size`` W > 1, e.g. DDP): ``batch_size`` is the global batch. Every rank builds the
    same global batches, exactly those of W = 1 (same seed, order, sample seeds), and yields only its part,
    batch_size / W samples (``assign_ranks`` says when that cannot be), so every rank runs ``len(self)``
    steps and the results do not depend on W: with equal rank batches, DDP's gradient average is the
    single-worker gradient of a loss that is a mean over samples. Batch-coupled losses (ranking pairs within
    a passage or round, InfoNCE negatives) only see pairs inside one rank's batch, which is why chunks are
    kept whole on one rank.

    Yields lists of (index, sample_seed, train). Deterministic given ``seed`` (set a new one per epoch).
    """

    def __init__(
        self,
        dataset: SplitDataset | SegmentDataset,
        batch_size: int,
        seed: int = 0,
        train: bool = True,
        weights: Mapping[str | Tier, float] | None = None,
        group_chunk: int = 4,
        *,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_rank(rank, world_size)
        if batch_size % world_size:
            raise ValueError(f"batch_size={batch_size} is not divisible by world_size={world_size}: the global "
                             "batch must split into equal rank batches")
        self.dataset = dataset if isinstance(dataset, SplitDataset) else SplitDataset({dataset.tier: dataset})
        self.batch_size = batch_size
        self.seed = seed
        self.train = train
        self.group_chunk = max(1, group_chunk)
        self.rank, self.world_size = rank, world_size
        parts = self.dataset.parts
        sizes = {t: len(p) * p.samples_per_item() for t, p in parts.items()}
        w = {parse_tier(k): float(v) for k, v in (weights or {}).items()} if weights else dict(sizes)
        w = {t: w.get(t, 0.0) for t in parts}
        total_w = sum(w.values())
        if total_w <= 0:
            raise ValueError("tier weights must give some tier a positive share")
        self.shares = {t: w[t] / total_w for t in parts}
        self.n_batches = max(1, math.ceil(sum(sizes.values()) / batch_size)) if len(self.dataset) else 0

    def __len__(self) -> int:
        return self.n_batches

    def _stream(self, tier: Tier, rng: np.random.Generator) -> list[list[int]]:
        part = self.dataset.parts[tier]
        groups: dict[str, list[int]] = {}
        for i in range(len(part)):
            groups.setdefault(part.group_key(i), []).append(i)
        chunks: list[list[int]] = []
        for key in sorted(groups):
            members = [groups[key][j] for j in rng.permutation(len(groups[key]))]
            n_chunks = math.ceil(len(members) / self.group_chunk)
            chunks += [list(c) for c in np.array_split(members, n_chunks)]
        return [chunks[j] for j in rng.permutation(len(chunks))]

    def _quotas(self, rng: np.random.Generator) -> dict[Tier, int]:
        """Items per tier for one batch of exactly ``batch_size`` samples (a T4 item is two): floors of the
        expected sample counts, the remaining slots drawn by the fractional parts (shares hold on average)."""
        tiers = list(self.shares)
        expected = np.array([self.shares[t] * self.batch_size for t in tiers])
        slots = np.floor(expected).astype(int)
        frac = expected - slots
        left = self.batch_size - int(slots.sum())
        if left > 0 and frac.sum() > 0:
            slots[rng.choice(len(tiers), size=left, replace=False, p=frac / frac.sum())] += 1
        out = {t: int(s) for t, s in zip(tiers, slots)}
        if Tier.T4 in out and out[Tier.T4] % 2:
            others = [t for t in tiers if t is not Tier.T4 and self.shares[t] > 0]
            out[Tier.T4] -= 1  # a pair needs two slots: the odd one goes to the largest other tier
            if others:
                out[max(others, key=self.shares.get)] += 1
        if Tier.T4 in out:
            out[Tier.T4] //= 2
        if sum(out.values()) == 0:  # tiny batch sizes: give the batch to the largest share
            out[max(self.shares, key=self.shares.get)] = 1
        return out

    def global_batches(self) -> Iterator[list[Slice]]:
        """The W = 1 batches, as the chunk-slices they are made of: pending items carry their chunk's number,
        and a batch's members of one chunk are consecutive (a chunk may straddle two batches)."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed & 0xFFFFFFFF, 7919]))
        streams = {t: self._stream(t, rng) for t in self.dataset.parts}
        pending: dict[Tier, list[tuple[int, int]]] = {t: [] for t in streams}  # (item, chunk number)
        n_chunks = 0
        for _ in range(self.n_batches):
            batch: list[Slice] = []
            for t, q in self._quotas(rng).items():
                start, weight = self.dataset.starts[t], self.dataset.parts[t].samples_per_item()
                while len(pending[t]) < q:
                    if not streams[t]:
                        streams[t] = self._stream(t, rng)  # the tier cycles: a new epoch of its own
                    pending[t] += [(i, n_chunks) for i in streams[t].pop(0)]
                    n_chunks += 1
                take, pending[t] = pending[t][:q], pending[t][q:]
                tagged = [((start + i, int(rng.integers(2**31)), self.train), c) for i, c in take]
                batch += [([k for k, _ in run], weight) for _, run in groupby(tagged, key=lambda kc: kc[1])]
            yield batch

    def __iter__(self) -> Iterator[list[Key]]:
        capacity = self.batch_size // self.world_size
        uneven = False
        for batch in self.global_batches():
            keys = [k for ks, _ in batch for k in ks]
            if self.world_size == 1:
                yield keys
                continue
            slices = [(len(ks), w) for ks, w in batch]
            owner = assign_ranks(slices, self.world_size, capacity)
            if not uneven:
                weights = [w for n, w in slices for _ in range(n)]
                mine = sum(w for w, r in zip(weights, owner) if r == self.rank)
                if mine != capacity:  # T4 pairs that fit no rank's odd room: said once per epoch
                    uneven = True
                    log.warning("rank %d of %d: a batch of %d samples instead of %d (T4 pairs cannot split an "
                                "odd per-rank batch; see assign_ranks)", self.rank, self.world_size, mine, capacity)
            yield [k for k, r in zip(keys, owner) if r == self.rank]  # in global-batch order


class SequentialBatchSampler:
    """Every item once, in index order, with its single crop; sample seeds fixed by ``seed``. The pre-window
    evaluation order (``make_loader(windows="crop")``)."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, train: bool = False) -> None:
        self.n, self.batch_size, self.seed, self.train = n, batch_size, seed, train

    def __len__(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, bool]]]:
        for s in range(0, self.n, self.batch_size):
            yield [(i, self.seed, self.train) for i in range(s, min(s + self.batch_size, self.n))]


class WindowBatchSampler:
    """Evaluation order over whole segments: every window of every item (``SplitDataset.windows``), items in
    index order and each item's windows in order, so a segment's windows are consecutive.

    A batch holds ``batch_size`` windows (a T4 item: its pair), so memory is bounded by the window length,
    never by a segment's. Yields lists of (index, seed, False, window index).
    """

    def __init__(self, dataset: SplitDataset, batch_size: int, seed: int = 0) -> None:
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self._keys: list[tuple[int, int]] | None = None

    def keys(self) -> list[tuple[int, int]]:
        """(item, window) pairs, computed once (planning reads every segment's features)."""
        if self._keys is None:
            self._keys = [(g, k) for g in range(len(self.dataset)) for k in range(len(self.dataset.windows(g)))]
        return self._keys

    def __len__(self) -> int:
        return math.ceil(len(self.keys()) / self.batch_size)

    def __iter__(self) -> Iterator[list[tuple[int, int, bool, int]]]:
        keys = self.keys()
        for s in range(0, len(keys), self.batch_size):
            yield [(g, self.seed, False, k) for g, k in keys[s : s + self.batch_size]]


# ------------------------------------------------------------------------------------- collate


def _codes(keys: Sequence[str | None]) -> torch.Tensor:
    """Per-batch integer codes in order of first appearance; None -> -1."""
    table: dict[str, int] = {}
    out = [(-1 if k is None else table.setdefault(k, len(table))) for k in keys]
    return torch.tensor(out, dtype=torch.long)


def collate(items: Sequence[Sample | list[Sample]], views: Sequence[str], n_dims: int | None = None) -> Batch:
    """Samples (or the lists a dataset item returns) -> one Batch. String keys become per-batch codes."""
    samples: list[Sample] = [s for it in items for s in (it if isinstance(it, list) else [it])]
    b = len(samples)
    if n_dims is None:
        n_dims = next((len(s.labels if s.labels is not None else s.rank_target) for s in samples
                       if s.labels is not None or s.rank_target is not None), 0)
    labels = torch.zeros(b, n_dims)
    rank_target = torch.zeros(b, n_dims)
    has_labels = torch.zeros(b, dtype=torch.bool)
    for i, s in enumerate(samples):
        if s.labels is not None:
            labels[i] = torch.from_numpy(np.asarray(s.labels, dtype=np.float32))
            has_labels[i] = True
        if s.rank_target is not None:
            rank_target[i] = torch.from_numpy(np.asarray(s.rank_target, dtype=np.float32))
    pair = torch.full((b,), -1, dtype=torch.long)
    twins: dict[str, list[int]] = {}
    for i, s in enumerate(samples):
        if s.twin is not None:
            twins.setdefault(s.twin, []).append(i)
    for members in twins.values():
        if len(members) == 2:
            pair[members[0]], pair[members[1]] = members[1], members[0]
    graded = [s.difficulty is not None for s in samples]
    inputs: dict[str, Any] = {}
    for v in views:
        inputs.update(get_view(v).collate([s.inputs[v] for s in samples]))
    return Batch(
        segment_ids=[s.segment_id for s in samples],
        tier=torch.tensor([int(s.tier) for s in samples], dtype=torch.long),
        labels=labels,
        has_labels=has_labels,
        rank_target=rank_target,
        rank_group=_codes([s.rank_group for s in samples]),
        piece=_codes([s.piece for s in samples]),
        performer=_codes([s.performer for s in samples]),
        pair=pair,
        inputs=inputs,
        meta={
            "rank_group_keys": [s.rank_group for s in samples],
            "passage": [s.passage for s in samples],
            "piece": [s.piece for s in samples],
            "performer": [s.performer for s in samples],
            "window": [s.window for s in samples],  # index of the window within its segment
            "weight": [s.weight for s in samples],  # the window's weight in its segment's prediction
        },
        difficulty=torch.tensor([s.difficulty or 0.0 for s in samples], dtype=torch.float32) if any(graded) else None,
        has_difficulty=torch.tensor(graded, dtype=torch.bool) if any(graded) else None,
    )


def make_loader(
    dataset: SplitDataset | SegmentDataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    train: bool | None = None,
    weights: Mapping[str | Tier, float] | None = None,
    group_chunk: int = 4,
    windows: str = "all",
    *,
    rank: int = 0,
    world_size: int = 1,
) -> torch.utils.data.DataLoader:
    """A DataLoader yielding Batch. shuffle=True: tier-mixed, group-keeping batches; False: index order.

    train (default: the dataset's mode) picks random crops (True) or evaluation (False). Evaluation in index
    order covers whole segments, one sample per window (``windows="all"``); ``windows="crop"`` gives the
    single pre-window crop per segment instead (first max_len items of symbolic views, centre of frames and
    notes), kept only to measure what whole segments change. Deterministic given ``seed``, with or without
    workers.

    rank, world_size: data-parallel training. ``batch_size`` is the global batch and the loader yields this
    rank's part of each, batch_size / world_size samples (``TierMixedBatchSampler``). Only shuffled (training)
    batches are sharded: index-order (evaluation) loaders ignore both and yield the whole set, so validation is
    computed on the full validation set, on every rank or on rank 0 alone, as the training loop decides.
    """
    _check_rank(rank, world_size)
    if windows not in EVAL_WINDOWS:
        raise ValueError(f"windows={windows!r}: expected one of {', '.join(EVAL_WINDOWS)}")
    ds = dataset if isinstance(dataset, SplitDataset) else SplitDataset({dataset.tier: dataset})
    train = ds.train if train is None else train
    if shuffle:
        sampler: Any = TierMixedBatchSampler(ds, batch_size, seed=seed, train=train, weights=weights,
                                             group_chunk=group_chunk, rank=rank, world_size=world_size)
    elif train or windows == "crop":
        sampler = SequentialBatchSampler(len(ds), batch_size, seed=seed, train=train)
    else:
        sampler = WindowBatchSampler(ds, batch_size, seed=seed)
    n_dims = next((p.n_dims for p in ds.parts.values()), None)
    return torch.utils.data.DataLoader(
        ds,
        batch_sampler=sampler,
        collate_fn=partial(collate, views=ds.views, n_dims=n_dims),
        num_workers=num_workers,
        persistent_workers=False,
    )
