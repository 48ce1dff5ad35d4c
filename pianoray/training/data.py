"""What one experiment trains on: the corpus, the chosen label set, the folds, and loaders per split.

Folds come from ``data.folds`` when given, else they are generated (by ``data.fold_unit``, music groups by
default; piece-stratified, seeded) from the labelled T1 segments, so every run of a config sees the same folds.
The music groups of ``data.holdout_groups`` are left out of every fold (``held_out``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable

import numpy as np

from pianoray.config import ProtocolConfig
from pianoray.data.tiers import Tier
from pianoray.models.registry import DataSpec


@dataclass
class ExperimentData:
    corpus: Any  # pianoray.data.corpus.Corpus
    label_names: list[str]
    labels: dict[str, np.ndarray]
    folds: Any  # pianoray.data.folds.FoldSet
    max_frames: int
    max_notes: int
    # Labelled segments of data.holdout_groups: in no fold (never trained, validated or tested on).
    held_out: tuple[str, ...] = ()
    # Evaluation loaders: "all" = whole segments in windows (what every figure uses); "crop" = the single
    # pre-window crop, only to measure what whole segments change (see ``make_loader``).
    eval_windows: str = "all"
    _datasets: dict[tuple, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_config(cls, cfg: ProtocolConfig) -> "ExperimentData":
        from pianoray.data.corpus import open_corpus
        from pianoray.data.folds import FoldError, FoldSet, corpus_folds, holdout_segments, with_competition_rounds
        from pianoray.data.taxonomy import Taxonomy

        corpus = open_corpus(cfg.data)
        taxonomy = Taxonomy.load(cfg.data.taxonomy) if cfg.data.taxonomy else Taxonomy.default()
        names, labels = corpus.labels(cfg.data.labels, taxonomy)
        held = holdout_segments(corpus, labels, cfg.data.holdout_groups)
        if cfg.data.folds is not None:
            folds = with_competition_rounds(FoldSet.load(cfg.data.folds), corpus)
            inside = sorted(held & {k for f in folds.folds for k in (*f.train, *f.val, *f.test)})
            if inside:
                raise FoldError(cfg.data.folds, [f"{len(inside)} segments of data.holdout_groups are in the "
                                                 f"folds, e.g. {inside[0]!r}"])
        else:
            folds = corpus_folds(corpus, [k for k in labels if k not in held], k=cfg.data.k,
                                 unit=cfg.data.fold_unit, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
        return cls(corpus, list(names), labels, folds, cfg.data.max_frames, cfg.data.max_notes,
                   held_out=tuple(sorted(held)))

    @cached_property
    def planted(self) -> Any:
        """The corpus's planted score-conditioned pairs (``pianoray.data.demo.PlantedPairs``: the demo's
        ``planted/``), or None (every other corpus)."""
        from pianoray.data.demo import open_planted

        return open_planted(self.corpus.root)

    def data_spec(self) -> DataSpec:
        width = self.corpus.meta.width if self.corpus.has_frames() else None
        return DataSpec(n_dims=len(self.label_names), frame_width=width)

    def fold(self, index: int) -> dict[str, list[str]]:
        """T1 segment ids per split, and ``held_rounds``: the competition (T2) rounds this fold never trains
        on, the only ones its competition Spearman is computed on."""
        f = self.folds.folds[index]
        rounds = self.folds.competition_rounds
        return {"train": list(f.train), "val": list(f.val), "test": list(f.test),
                "held_rounds": list(rounds[index]) if rounds is not None else []}

    def dataset(self, fold: int, split: str, tiers: Iterable[Tier], views: Iterable[str]) -> Any:
        from pianoray.data.loaders import build_split, training_grades

        key = (fold, split, tuple(sorted(tiers)), tuple(views))
        if key not in self._datasets:
            self._datasets[key] = build_split(
                self.corpus,
                self.fold(fold),
                split,
                tiers=list(key[2]),
                views=list(key[3]),
                labels=self.labels,
                max_frames=self.max_frames,
                max_notes=self.max_notes,
                grades=training_grades(self.corpus, self.fold(fold)) if split == "train" else None,
            )
        return self._datasets[key]

    def loader(
        self,
        fold: int,
        split: str,
        tiers: Iterable[Tier],
        views: Iterable[str],
        batch_size: int,
        *,
        epoch: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> Any:
        """Batches of one split. Training order and crops depend only on (seed, epoch), so a resumed run
        sees exactly the batches an uninterrupted one would.

        rank, world_size: a data-parallel worker's place, given by the caller. Training yields this rank's
        batch_size / world_size part of each single-worker batch of ``batch_size``, so results do not depend on
        the number of workers; evaluation splits are not sharded (see ``make_loader``)."""
        from pianoray.data.loaders import make_loader

        ds = self.dataset(fold, split, tiers, views)
        train = split == "train"
        return make_loader(ds, batch_size=batch_size, shuffle=train, seed=seed * 100_003 + epoch, train=train,
                           windows=self.eval_windows, rank=rank, world_size=world_size)

    def eval_loader(self, fold: int, split: str, views: Iterable[str], batch_size: int) -> Any:
        """The T1 segments of a split in a fixed order, whole (one sample per window; for scoring, any split)."""
        from pianoray.data.loaders import make_loader

        return make_loader(self.dataset(fold, split, (Tier.T1,), views), batch_size=batch_size, shuffle=False,
                           train=False, windows=self.eval_windows)

    def twin_loader(self, fold: int, split: str, views: Iterable[str], batch_size: int) -> Any | None:
        """Clean/augmented twins (T4) of a split's T1 segments, each pair in one batch and one crop (not
        windowed: a twin may be time-stretched); None if there are none."""
        from pianoray.data.loaders import augmented_twins, make_loader

        if Tier.T4 not in self.corpus.tiers:
            return None
        ds = augmented_twins(self.corpus, self.fold(fold)[split], views, self.max_frames, self.max_notes)
        if len(ds) == 0:
            return None
        return make_loader(ds, batch_size=batch_size, shuffle=False, train=False)
