"""Build, before a run, the symbolic feature cache the configured experiments will read.

``ensure_symbolic_cache`` is called by ``pianoray.validation.prepare_data`` (so by ``pianoray run`` and
``pianoray pretrain``) with the views the enabled encoders read; the data layer never looks at models.
When any of those views is symbolic, every performance MIDI the corpus names (all tiers) is built into
``symbolic_cache_dir(data_cfg, corpus.root)`` by content hash. The build is incremental, so a second call on an
unchanged corpus computes nothing; ``open_corpus`` then attaches the folder as ``corpus.symbolic_cache``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pianoray.data.corpus import Corpus, open_corpus, symbolic_cache_dir
from pianoray.data.symbolic.cache import FEATURE_KINDS, SymbolicCacheReport, build_symbolic_cache
from pianoray.feedback import Feedback, or_default

SYMBOLIC_VIEWS = frozenset(FEATURE_KINDS)  # each cached feature kind is the view of the same name


def corpus_midi_files(corpus: Corpus) -> list[Path]:
    """Every distinct performance MIDI named by the corpus's manifests (all tiers; a manifest without a
    perf_midi column names none), sorted."""
    files: set[Path] = set()
    for tier in corpus.tiers:
        m = corpus.manifest(tier)
        for rel in m["perf_midi"] if "perf_midi" in m else ():
            path = corpus.path(rel)
            if path is not None:
                files.add(path)
    return sorted(files)


def ensure_symbolic_cache(
    data_cfg: Any,
    needed_views: Iterable[str],
    corpus: Corpus | None = None,
    *,
    feedback: Feedback | None = None,
    workers: int | None = None,
) -> SymbolicCacheReport | None:
    """Build the symbolic cache of ``data_cfg``'s corpus when ``needed_views`` holds a symbolic view.

    data_cfg: a ``pianoray.config.DataConfig`` (its ``symbolic_cache`` picks the folder).
    needed_views: the views the enabled experiments' encoders read.
    corpus: the opened corpus (opened from ``data_cfg`` when None).
    feedback: where the progress bar, the one-line summary and skipped files go (None: logged).
    workers: build processes (default: every core).
    Returns the build report, or None when no symbolic view is needed (nothing is built).
    """
    wanted = sorted(SYMBOLIC_VIEWS & set(needed_views))
    if not wanted:
        return None
    corpus = corpus if corpus is not None else open_corpus(data_cfg)
    folder = symbolic_cache_dir(data_cfg, corpus.root)
    files = corpus_midi_files(corpus)
    feedback = or_default(feedback)
    report = build_symbolic_cache(files, folder, workers=workers or os.cpu_count() or 1, feedback=feedback)
    feedback.say(f"symbolic cache {folder} ({', '.join(wanted)}): {report.n_files} MIDI files, "
                 f"{report.computed} computed, {report.reused} reused, {len(report.failed)} failed")
    for _path, reason in report.failed[:10]:  # the views will raise on these too, naming the file
        feedback.warn(f"skipped: {reason}")
    return report
