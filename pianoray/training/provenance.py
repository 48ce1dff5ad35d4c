"""What MIDI self-supervised pretraining read, relative to the folds an encoder is scored on.

Pretraining never reads labels, but with the corpus's own MIDI in its corpus it may have seen the
performances a fold later validates or tests on. This module measures that (by file content, so a
byte-identical copy under another name counts as seen), builds the record a run keeps in its ledger
(``pretrain`` events) and the one sentence per experiment that ``pianoray train`` prints and the report states.
No torch, no Ray: the report imports it.

A record (JSON)::

    {"experiment": "S2", "per_fold": false, "sources": ["/data/asap", "the corpus's performance MIDI"],
     "files": 600, "epochs": 3, "labels_used": false,
     "saw_eval_midi": true, "eval_midi": 1202, "eval_midi_seen": 310,
     "folds": {"0": {"files": 600, "left_out": 0, "eval_midi": 301, "eval_midi_seen": 80,
                     "saw_eval_midi": true, "key": "...", "path": "...", "cached": false}, ...}}

``files``: MIDI files read, distinct by content (per fold: by that fold's pretraining; top level: distinct over all of them);
``eval_midi``: distinct validation/test MIDI (by content) of the evaluated folds; ``eval_midi_seen``: how many of
them a fold's pretraining read (top level: summed over the folds as a set); ``left_out``: files removed from a
per-fold pretraining corpus because they are that fold's validation/test MIDI.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Mapping

CORPUS_SOURCE = "the corpus's performance MIDI"


def _midi_hashes(data: Any, segments: Iterable[str]) -> set[str]:
    """Content hashes of the performance MIDI of ``segments`` (T1 manifest); segments without MIDI are skipped."""
    from pianoray.data.midi import file_sha256
    from pianoray.data.tiers import Tier

    manifest = data.corpus.manifest(Tier.T1)
    if "perf_midi" not in manifest:
        return set()
    midi = manifest.set_index("segment_id")["perf_midi"].dropna()
    paths = (data.corpus.path(midi[s]) for s in segments if s in midi.index)
    return {file_sha256(p) for p in paths if p is not None}


def eval_midi(data: Any, folds: Iterable[int]) -> dict[int, set[str]]:
    """Fold -> content hashes of the performance MIDI of its validation and test segments (T1 manifest).

    data: a ``pianoray.training.data.ExperimentData`` (its corpus and folds). Segments without MIDI are skipped.
    """
    return {int(k): _midi_hashes(data, data.fold(int(k))["val"] + data.fold(int(k))["test"]) for k in folds}


def held_out_midi(data: Any) -> set[str]:
    """Content hashes of the performance MIDI of ``data.held_out`` (``data.holdout_groups``): no pretraining
    reads them, so that held-out music stays unseen by every weight of an exported model."""
    return _midi_hashes(data, data.held_out)


def pretraining_sources(cfg: Any) -> list[str]:
    """Where the pretraining corpus comes from, in words: the configured folders, then the corpus's MIDI."""
    sources = [str(Path(folder)) for folder in cfg.pretrain.midi]
    if cfg.pretrain.include_corpus_midi:
        sources.append(CORPUS_SOURCE)
    return sources


def fold_exposure(read: set[str], evaluated: set[str]) -> dict[str, Any]:
    """How much of one fold's validation/test MIDI (``evaluated``, hashes) a pretraining that read ``read`` saw."""
    seen = len(read & evaluated)
    return {"eval_midi": len(evaluated), "eval_midi_seen": seen, "saw_eval_midi": seen > 0}


def pretrain_record(cfg: Any, experiment: str, results: Mapping[int | None, Any],
                    evals: Mapping[int, set[str]]) -> dict[str, Any]:
    """The ledger record of one experiment's pretraining.

    results: fold -> ``PretrainResult`` under per-fold pretraining, else {None: the shared result}; each result
    carries ``read`` (hashes of the files it read) and ``left_out`` (how many the fold excluded).
    evals: fold -> hashes of that fold's validation/test MIDI (:func:`eval_midi`), for every evaluated fold.
    """
    per_fold = None not in results
    folds: dict[str, Any] = {}
    for k, ev in sorted(evals.items()):
        r = results[k] if per_fold else results[None]
        folds[str(k)] = {"files": len(r.read), "left_out": r.left_out, **fold_exposure(r.read, ev),
                         "key": r.key, "path": str(r.path), "cached": r.cached}
    every_eval = set().union(*evals.values()) if evals else set()
    every_read = set().union(*(r.read for r in results.values()))
    seen_any = {h for k, ev in evals.items() for h in ev & (results[k] if per_fold else results[None]).read}
    first = next(iter(results.values()))
    return {
        "experiment": experiment, "per_fold": per_fold, "sources": pretraining_sources(cfg),
        "files": len(every_read), "epochs": len(first.losses), "labels_used": False,
        "saw_eval_midi": bool(seen_any), "eval_midi": len(every_eval), "eval_midi_seen": len(seen_any),
        "folds": folds,
    }


def _fold_list(folds: Iterable[str]) -> str:
    ks = sorted(int(k) for k in folds)
    return ("fold " if len(ks) == 1 else "folds ") + ", ".join(map(str, ks))


def _file_counts(record: Mapping[str, Any]) -> str:
    counts = sorted({int(f["files"]) for f in (record.get("folds") or {}).values()}) or [record.get("files")]
    return str(counts[0]) if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


def describe(record: Mapping[str, Any]) -> str:
    """One sentence: whether the experiment's pretraining saw its evaluation folds' MIDI, and what it read."""
    name, folds = record.get("experiment", "?"), record.get("folds") or {}
    sources = " and ".join(record.get("sources") or []) or "no source recorded"
    if record.get("saw_eval_midi"):
        seen = (f"saw the evaluation folds' MIDI ({record.get('eval_midi_seen')} of the {record.get('eval_midi')} "
                f"validation/test MIDI files of {_fold_list(folds)})")
    else:
        seen = f"did not see the evaluation folds' MIDI (validation/test of {_fold_list(folds)})"
    how = ("one pretraining per fold, each without its fold's validation and test MIDI"
           if record.get("per_fold") else "one pretraining shared by every fold")
    return (f"{name}: self-supervised pretraining {seen}, never their labels; {how}, "
            f"{_file_counts(record)} MIDI files from {sources}.")
