"""``pianoray evaluate``: an exported model on a labelled dataset, split into the music it saw and the music it
did not, beside the hand-crafted reference it carries.

The dataset is a folder in a supported layout: a pianoray cache (``corpus.json``: the demo, ``pianoray extract``
output) or the real PercePiano layout. Every labelled segment is scored whole (windows merged per segment, as in
training), by the artifact's mean ensemble and by its reference, and split by the artifact's fingerprints
(``pianoray.data.fingerprints``) into ``unseen`` and ``seen`` music. Each part, and ``all``, gets pairwise
accuracy (pairs of segments of the same passage, the model's rank threshold) and R2, each as the mean over
dimensions with a 95% bootstrap CI over passages, and per dimension.

Label sets: the model's own; a model of the 19 PercePiano dimensions is also scored on the composite set, its
predictions mapped by the taxonomy it was exported with (the mapping is linear, as the labels' is). A composite
model cannot give the 19.

The JSON (``--json``; docs/export.md; pinned by ``tests/inference/test_assess.py``)::

    {label_set: {"unseen" | "seen" | "all": {"model" | "reference": {
        "pairwise_accuracy": {"mean", "ci": [lo, hi], "per_dim": {dimension: value}},
        "r2": {"mean", "ci": [lo, hi], "per_dim": {dimension: value}},
        "n_segments", "n_passages"}}}}

A part without segments is null; a reference block is null when the artifact has none. A figure that cannot be
computed (no pair in a part, one segment) is null.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from pianoray.data.tiers import Tier
from pianoray.errors import InputError, PianorayError
from pianoray.feedback import Feedback, or_default
from pianoray.inference.artifact import SYMBOLIC_VIEWS, ModelArtifact
from pianoray.objectives import metrics
from pianoray.records import finite

PARTS = ("unseen", "seen", "all")
ROLES = ("model", "reference")


def open_dataset(path: str | Path, views: list[str] | None = None, feedback: Feedback | None = None) -> Any:
    """The labelled dataset at ``path`` as a corpus (its layout detected), with its symbolic features cached
    when ``views`` reads any (as a run caches them)."""
    from pianoray.config import DataConfig
    from pianoray.data.corpus import CORPUS_FILE, attach_symbolic_cache, open_corpus
    from pianoray.data.symbolic.prepare import ensure_symbolic_cache

    path = Path(path)
    if not path.is_dir():
        raise InputError(f"{path}: --data must be a dataset folder")
    source = "cache" if (path / CORPUS_FILE).is_file() else "percepiano"
    cfg = DataConfig(root=path, source=source)
    try:
        corpus = open_corpus(cfg)
    except PianorayError as e:
        if source == "cache":
            raise
        raise InputError(f"{path}: not a pianoray cache (no {CORPUS_FILE}) nor a PercePiano folder ({e})") from None
    if views and any(v in SYMBOLIC_VIEWS for v in views):
        ensure_symbolic_cache(cfg, views, corpus, feedback=feedback)
        attach_symbolic_cache(corpus, cfg)
    return corpus


def label_sets(art: ModelArtifact, corpus: Any) -> dict[str, tuple[list[str], dict[str, np.ndarray],
                                                                   Callable[[np.ndarray], np.ndarray]]]:
    """label set -> (dimension names, {segment: labels}, the map from the model's outputs to that set)."""
    from pianoray.data.taxonomy import Taxonomy

    info = art.manifest.labels
    taxonomy = Taxonomy.from_dict(info.taxonomy) if info.taxonomy else Taxonomy.default()
    names, labels = corpus.labels(info.set, taxonomy)
    if list(names) != info.names:
        raise InputError(f"{corpus.root}: its {info.set} dimensions ({', '.join(names)}) are not the model's "
                         f"({', '.join(info.names)})")
    out = {info.set: (list(names), labels, lambda x: x)}
    if info.set == "percepiano19":
        comp_names, comp = corpus.labels("composite", taxonomy)
        out["composite"] = (list(comp_names), comp, taxonomy.composite)
    return out


def _interval(ci: Any) -> list[float | None]:
    return [finite(ci[0]), finite(ci[1])]


def score_block(scores: np.ndarray, regression: np.ndarray, labels: np.ndarray, passages: np.ndarray,
                names: list[str], *, threshold: float, n_boot: int, seed: int) -> dict[str, Any] | None:
    """One (part, model or reference) block of the JSON; None for no segments. scores, regression, labels:
    [M, N]; passages: [M] (pairs and the bootstrap's resampling unit)."""
    if len(labels) == 0:
        return None
    pw = metrics.pairwise_accuracy(scores, labels, passages, threshold=threshold, n_boot=n_boot, seed=seed)
    r2 = metrics.r2(regression, labels, passages, n_boot=n_boot, seed=seed)

    def figure(m: metrics.MetricResult) -> dict[str, Any]:
        per = m.per_dim if m.per_dim is not None else [None] * len(names)
        return {"mean": finite(m.mean), "ci": _interval(m.ci), "per_dim": {n: finite(v) for n, v in zip(names, per)}}

    return {"pairwise_accuracy": figure(pw), "r2": figure(r2), "n_segments": int(len(labels)),
            "n_passages": int(len(set(passages.tolist())))}


def seen_flags(art: ModelArtifact, corpus: Any, segment_ids: list[str]) -> np.ndarray | None:
    """[M] bool: which segments' music the model saw (its fingerprints); None when the artifact has none (a
    model trained without MIDI)."""
    from pianoray.data.fingerprints import midi_fingerprint

    if not art.manifest.fingerprints.get("available", True):
        return None
    table = corpus.manifest(Tier.T1).set_index("segment_id")
    memo: dict[str, np.ndarray] = {}

    def fingerprint(rel: Any) -> np.ndarray | None:
        path = corpus.path(rel)
        if path is None:
            return None
        if str(path) not in memo:
            memo[str(path)] = midi_fingerprint(path)
        return memo[str(path)]

    cols = [c for c in ("perf_midi", "score_midi") if c in table.columns]
    return np.array([art.fingerprints.is_seen(*(fingerprint(table.at[s, c]) for c in cols)) for s in segment_ids],
                    dtype=bool)


def evaluate_artifact(art: ModelArtifact, data: str | Path, *, n_boot: int = 1000, seed: int = 0,
                      feedback: Feedback | None = None) -> dict[str, Any]:
    """The JSON object of the module docstring for the labelled dataset at ``data``."""
    feedback = or_default(feedback)
    corpus = open_dataset(data, art.manifest.inputs.views, feedback)
    art.check_inputs(corpus, str(corpus.root))
    sets = label_sets(art, corpus)
    own = art.manifest.labels.set
    ids = sorted(sets[own][1])
    if not ids:
        raise InputError(f"{corpus.root}: no labelled segments")
    feedback.say(f"scoring {len(ids)} labelled segments of {corpus.root} with {art.manifest.experiment} "
                 f"({len(art.manifest.members)} members)")
    pred = art.predict(corpus, ids, sets[own][1])
    ids = pred.segment_ids
    t1 = corpus.manifest(Tier.T1).set_index("segment_id")
    has_midi = "perf_midi" in t1 and not t1.loc[ids, "perf_midi"].isna().any()
    ref = art.reference_predict(corpus, ids) if has_midi else None
    if art.manifest.reference is not None and ref is None:
        feedback.warn(f"{corpus.root}: not every segment has performance MIDI, so the reference "
                      f"({art.manifest.reference.experiment}) is not scored (null in the JSON)")
    seen = seen_flags(art, corpus, ids)
    passages = t1.loc[ids, "passage"].astype(str).to_numpy()
    parts: dict[str, np.ndarray] = {"all": np.ones(len(ids), dtype=bool)}
    if seen is not None:
        parts = {"unseen": ~seen, "seen": seen, **parts}
        feedback.say(f"{int((~seen).sum())} segments of unseen music, {int(seen.sum())} of seen music")
    else:
        feedback.warn(f"{art.path}: the model has no music fingerprints; only `all` is reported")
    threshold = art.manifest.rank_threshold
    out: dict[str, Any] = {}
    for name, (names, labels, to_set) in sets.items():
        y = np.stack([labels[s] for s in ids]).astype(np.float64)
        outputs = {"model": (to_set(pred.scores), to_set(pred.regression)),
                   "reference": (to_set(ref), to_set(ref)) if ref is not None else None}
        out[name] = {}
        for part in PARTS:
            if part not in parts:
                continue
            keep = parts[part]
            out[name][part] = None if not keep.any() else {
                role: None if o is None else score_block(o[0][keep], o[1][keep], y[keep], passages[keep], names,
                                                         threshold=threshold, n_boot=n_boot, seed=seed)
                for role, o in outputs.items()}
    return out


def summary_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Flat rows (label set, part, role, pairwise mean and CI, R2 mean and CI, segments, passages) for tables."""
    rows = []
    for label_set, parts in result.items():
        for part, roles in parts.items():
            for role, block in (roles or {}).items():
                if block is None:
                    continue
                pw = block["pairwise_accuracy"]
                rows.append({"labels": label_set, "part": part, "role": role, "pairwise": pw["mean"],
                             "pairwise_ci": pw["ci"], "r2": block["r2"]["mean"], "r2_ci": block["r2"]["ci"],
                             "segments": block["n_segments"], "passages": block["n_passages"]})
    return rows
