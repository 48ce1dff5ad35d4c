"""``pianoray predict``: an exported model on new performances.

Inputs: MIDI files (and folders of them), for a model that reads MIDI; or a pianoray cache folder
(``corpus.json``: ``pianoray extract``'s output from recordings, with its MIDI when a fusion needs both), whose
T1 segments are all scored. Each input is scored whole by the artifact's mean ensemble.

Per input: the score of each dimension (the regression head: on the labels' [0, 1] scale), their mean, and, where
several inputs are performances of one passage, each dimension's rank among them (by the ranking heads, what
pairwise accuracy measures; 1 = best). Inputs are the same passage when their music is: loose MIDI files are
grouped by the rule that groups music (``pianoray.data.music``: half of the shorter one's 16-pitch runs in the
other), or all put in one passage with ``passage=`` (``--passage``: the rule needs passages long enough to hold
runs that survive a performer's chord order and slips; the demo's 20-note passages are not); a cache's segments
by its manifest's passage.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from pianoray.data.tiers import Tier
from pianoray.errors import InputError, MissingInputError
from pianoray.inference.artifact import ModelArtifact

MIDI_SUFFIXES = (".mid", ".midi")


@dataclass
class Prediction:
    """One scored input: ``scores`` and ``ranks`` per dimension (ranks None when it is alone in its passage;
    "r/n" otherwise), their mean, the passage group it was ranked in, and ``difficulty``: the piece's difficulty
    grade by the model's difficulty head, on its training corpus's scale (None for a model without one)."""

    input: str
    segment_id: str
    passage: str
    scores: dict[str, float]
    ranks: dict[str, str] | None
    mean: float
    difficulty: float | None = None

    def summary(self) -> str:
        best = max(self.scores, key=self.scores.get)
        worst = min(self.scores, key=self.scores.get)
        rank = ""
        if self.ranks:
            n = int(next(iter(self.ranks.values())).split("/")[1])
            firsts = sum(r.startswith("1/") for r in self.ranks.values())
            rank = f"; first of {n} performances of its passage on {firsts} of {len(self.ranks)} dimensions"
        grade = f"; difficulty grade {self.difficulty:.1f}" if self.difficulty is not None else ""
        return (f"{self.input}: mean {self.mean:.2f}, strongest {best} {self.scores[best]:.2f}, "
                f"weakest {worst} {self.scores[worst]:.2f}{rank}{grade}")

    def to_json(self) -> dict[str, Any]:
        return {"input": self.input, "segment_id": self.segment_id, "passage": self.passage, "scores": self.scores,
                "ranks": self.ranks, "mean": self.mean, "difficulty": self.difficulty, "summary": self.summary()}


def expand_inputs(inputs: Sequence[str | Path]) -> tuple[list[Path], list[Path]]:
    """(MIDI files, cache folders): a folder with ``corpus.json`` is a cache; another folder gives its MIDI
    files (sorted, not recursive); a file must be MIDI. A missing path, an empty folder or another kind of file
    is one error naming it."""
    from pianoray.data.corpus import CORPUS_FILE

    midi: list[Path] = []
    caches: list[Path] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            raise MissingInputError(f"{p}: no such file or folder")
        if p.is_dir():
            if (p / CORPUS_FILE).is_file():
                caches.append(p)
                continue
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in MIDI_SUFFIXES)
            if not found:
                raise InputError(f"{p}: no MIDI files here, and not a pianoray cache (no {CORPUS_FILE})")
            midi.extend(found)
        elif p.suffix.lower() in MIDI_SUFFIXES:
            midi.append(p)
        else:
            raise InputError(f"{p}: not a MIDI file (.mid, .midi) or a pianoray cache folder")
    return midi, caches


def _same_music(corpus: Any, ids: list[str]) -> dict[str, str]:
    """segment -> passage group (named by its first input), by the music rule on the performance MIDI."""
    from pianoray.data.fingerprints import midi_fingerprint, seen_share
    from pianoray.data.music import THRESHOLD, SharedPair, components

    table = corpus.manifest(Tier.T1).set_index("segment_id")
    prints = {s: midi_fingerprint(corpus.path(table.at[s, "perf_midi"])) for s in ids}
    pairs = []
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            small, large = (prints[a], prints[b]) if prints[a].size <= prints[b].size else (prints[b], prints[a])
            share = seen_share(small, large)
            if share >= THRESHOLD:
                pairs.append(SharedPair(a, b, share, "performance"))
    return components(ids, pairs)


def _ranks(values: np.ndarray) -> np.ndarray:
    """[K, N] -> [K, N] int ranks per column, 1 = highest."""
    order = np.argsort(-values, axis=0, kind="stable")
    ranks = np.empty_like(order)
    for d in range(values.shape[1]):
        ranks[order[:, d], d] = np.arange(1, values.shape[0] + 1)
    return ranks


def predict_inputs(art: ModelArtifact, inputs: Sequence[str | Path], passage: str | None = None) -> list[Prediction]:
    """Score every input (see the module docstring); in input order. ``passage``: the MIDI inputs are all
    performances of this one passage (ranked together), instead of grouping them by their music."""
    from pianoray.data.corpus import open_cache, open_midi_files

    midi, caches = expand_inputs(inputs)
    batches: list[tuple[Any, list[str], dict[str, str], dict[str, str]]] = []
    if midi:
        corpus = open_midi_files(midi)
        art.check_inputs(corpus, ", ".join(map(str, midi[:3])) + (" ..." if len(midi) > 3 else ""))
        ids = list(corpus.manifest(Tier.T1)["segment_id"])
        groups = {s: passage for s in ids} if passage is not None else _same_music(corpus, ids)
        batches.append((corpus, ids, groups, dict(zip(ids, map(str, midi)))))
    for folder in caches:
        corpus = open_cache(folder)
        art.check_inputs(corpus, str(folder))
        t1 = corpus.manifest(Tier.T1)
        ids = list(t1["segment_id"])
        passages = {s: str(p) if p is not None else s for s, p in zip(ids, t1["passage"])}
        batches.append((corpus, ids, passages, {s: f"{folder}:{s}" for s in ids}))
    out: list[Prediction] = []
    names = art.label_names
    for corpus, ids, passage, label in batches:
        pred = art.predict(corpus, ids)
        rows = {s: i for i, s in enumerate(pred.segment_ids)}
        groups: dict[str, list[str]] = {}
        for s in ids:
            groups.setdefault(passage[s], []).append(s)
        ranks: dict[str, np.ndarray] = {}
        for members in groups.values():
            if len(members) > 1:
                r = _ranks(pred.scores[[rows[s] for s in members]])
                ranks.update({s: r[i] for i, s in enumerate(members)})
        grades = art.grade(pred.difficulty) if pred.difficulty is not None else None
        for s in ids:
            reg = pred.regression[rows[s]]
            n = len(groups[passage[s]])
            out.append(Prediction(
                label[s], s, passage[s], {d: float(v) for d, v in zip(names, reg)},
                {d: f"{int(r)}/{n}" for d, r in zip(names, ranks[s])} if s in ranks else None, float(reg.mean()),
                float(grades[rows[s]]) if grades is not None else None))
    return out


def definitions(art: ModelArtifact) -> dict[str, str | None]:
    """dimension -> its definition (the composite taxonomy's; None for the 19 PercePiano dimensions)."""
    info = art.manifest.labels
    found = {d["name"]: d.get("definition") for d in (info.taxonomy or {}).get("dimensions", [])
             if info.set == "composite"}
    return {n: found.get(n) for n in art.label_names}


def csv_text(predictions: list[Prediction], names: list[str]) -> str:
    """One row per input: input, passage, each dimension's score, mean, each dimension's rank, then the difficulty
    grade (a column only for a model with a difficulty head)."""
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    graded = any(p.difficulty is not None for p in predictions)
    w.writerow(["input", "passage", *names, "mean", *(f"rank_{n}" for n in names), *(["difficulty"] if graded else [])])
    for p in predictions:
        w.writerow([p.input, p.passage, *(f"{p.scores[n]:.4f}" for n in names), f"{p.mean:.4f}",
                    *((p.ranks or {}).get(n, "") for n in names),
                    *([f"{p.difficulty:.2f}" if p.difficulty is not None else ""] if graded else [])])
    return buf.getvalue()
