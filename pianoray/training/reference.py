"""Fitted (non-neural) references: one fit per fold, scored like a trained encoder. No Ray here.

A fitted experiment (``registry.get(...).kind == "fitted"``, e.g. ``symbolic-gbm``) summarises each labelled
segment's whole performance MIDI into one feature vector (its spec's ``features``), fits on the fold's
training part, and predicts the inner validation and the test parts. Both are scored with the same
:func:`pianoray.training.evaluate.validation_metrics` as the neural models (pairwise accuracy with the
experiment's loss threshold, R2, bootstrap CIs over passages). A fitted model has one output per dimension:
its regression predictions serve as both ``scores`` (ranking, hence pairwise accuracy) and ``regression``
(R2).

Features are cached by (feature definition, MIDI content hash): in memory for the process, and on disk
beside the symbolic cache (``<symbolic cache>/performance-features/<features_id>.npz``), so the folds of one
run, and later runs, compute each file once.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from pianoray.config import ProtocolConfig, model_config
from pianoray.data.tiers import Tier
from pianoray.errors import PianorayError
from pianoray.files import atomic_write
from pianoray.models import registry
from pianoray.records import PAIR_COUNTS
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions, validation_metrics
from pianoray.training.scoring import passage_counts

logger = logging.getLogger(__name__)

FEATURES_FOLDER = "performance-features"
_MEMORY: dict[tuple[str, str], np.ndarray] = {}  # (features_id, sha) -> [F]


class ReferenceDataError(PianorayError, ValueError):
    """The corpus cannot feed a fitted reference (e.g. a labelled segment without performance MIDI)."""


def fitted_spec(cfg: ProtocolConfig, experiment: str) -> registry.FittedReferenceSpec:
    """The registry spec of ``experiment``; a ValueError when it is not a fitted one."""
    spec = registry.get(cfg.encoder_name(experiment))
    if spec.kind != "fitted":
        raise ValueError(f"experiment {experiment!r} ({spec.name}) is {spec.kind}, not a fitted reference")
    return spec


def features_cache_file(cfg: ProtocolConfig, corpus: Any, features_id: str) -> Path:
    """Where computed features of this corpus's data config are kept on disk."""
    from pianoray.data.corpus import symbolic_cache_dir

    return symbolic_cache_dir(cfg.data, corpus.root) / FEATURES_FOLDER / f"{features_id}.npz"


def _read_disk(path: Path, features_id: str) -> None:
    """Load a features file into the in-memory cache (an unreadable one is said and recomputed)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            for sha, row in zip(z["sha"].tolist(), z["x"]):
                _MEMORY.setdefault((features_id, str(sha)), np.asarray(row, dtype=np.float64))
    except FileNotFoundError:
        return
    except (OSError, ValueError, KeyError) as e:
        logger.warning("reference features %s unreadable (%s); computing them again", path, e)


def _write_disk(path: Path, features_id: str) -> None:
    """Write every cached row of ``features_id`` (atomically: write a temporary file, then rename)."""
    keys = sorted(k[1] for k in _MEMORY if k[0] == features_id)
    if not keys:
        return
    x = np.stack([_MEMORY[(features_id, k)] for k in keys])
    try:
        atomic_write(path, lambda tmp: np.savez(tmp, sha=np.array(keys), x=x))
    except OSError as e:  # a read-only cache folder: features stay in memory for this process
        logger.warning("reference features not cached in %s (%s); they will be computed again next time", path, e)


def segment_features(spec: Any, corpus: Any, segment_ids: list[str], cache_file: Path | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """(x [M, F] float64, passages [M] str) of T1 segments, in the order given.

    Each segment's performance MIDI is summarised by ``spec.features``; rows are cached by
    (``spec.features_id``, the MIDI's sha256 from the manifest, hashed here when the manifest has none).
    """
    from pianoray.data.midi import file_sha256, load_notes

    m = corpus.manifest(Tier.T1).set_index("segment_id")
    missing = [s for s in segment_ids if s not in m.index]
    if missing:
        raise ReferenceDataError(f"{corpus.root}: {len(missing)} segments are not in T1, e.g. {missing[0]!r}")
    fid = spec.features_id
    if cache_file is not None and cache_file.is_file():
        _read_disk(cache_file, fid)
    rows, computed = [], 0
    for sid in segment_ids:
        rel = m.at[sid, "perf_midi"]
        path = corpus.path(rel)
        if path is None:
            raise ReferenceDataError(f"segment {sid!r}: {spec.name} needs its performance MIDI (perf_midi), "
                                     "but the manifest has none")
        sha = m.at[sid, "perf_midi_sha"] if "perf_midi_sha" in m.columns else None
        sha = str(sha) if isinstance(sha, str) and sha else file_sha256(path)
        key = (fid, sha)
        if key not in _MEMORY:
            _MEMORY[key] = np.asarray(spec.features(load_notes(path)), dtype=np.float64)
            computed += 1
        rows.append(_MEMORY[key])
    if computed and cache_file is not None:
        _write_disk(cache_file, fid)
    passages = m.loc[segment_ids, "passage"].astype(str).to_numpy()
    return np.stack(rows), passages


def _predictions(ids: list[str], pred: np.ndarray, labels: np.ndarray, passages: np.ndarray) -> Predictions:
    """A fitted model's output as evaluate.Predictions: one prediction [M, N] as both scores and regression;
    no representation (z is [M, 0])."""
    return Predictions(list(ids), pred, pred, labels, np.ones(len(ids), dtype=bool),
                       np.asarray(passages, dtype=object), np.zeros((len(ids), 0), dtype=np.float32))


def _fit(cfg: ProtocolConfig, experiment: str, x: tuple[np.ndarray, np.ndarray], y: np.ndarray) -> Any:
    return fitted_spec(cfg, experiment).fit(model_config(cfg, experiment), x[0], y, x[1], cfg.seed)


def fit_reference(cfg: ProtocolConfig, experiment: str, data: ExperimentData, segment_ids: list[str]) -> Any:
    """``experiment`` (a fitted reference) fitted on the labelled ``segment_ids``, as ``fit_and_score`` fits a
    fold's training part: what an exported model keeps beside its members (``predict(x, passages)``)."""
    spec = fitted_spec(cfg, experiment)
    ids = [s for s in segment_ids if s in data.labels]
    if not ids:
        raise ReferenceDataError(f"{experiment}: no labelled segments to fit on")
    x = segment_features(spec, data.corpus, ids, features_cache_file(cfg, data.corpus, spec.features_id))
    return _fit(cfg, experiment, x, np.stack([data.labels[s] for s in ids]).astype(np.float64))


def fit_and_score(cfg: ProtocolConfig, experiment: str, data: ExperimentData, fold: int, *, n_boot: int = 200
                  ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit a fitted reference on ``fold``'s training part; score its inner validation and test parts.

    Returns (val, test): ``val`` has the keys of ``validation_metrics(prefix="val")`` (``val/pairwise_accuracy``,
    ``val/r2``, their CIs and per-dimension values, ...); ``test`` has the same metrics without prefix, like
    ``scoring.evaluate_checkpoint``, plus ``epoch`` (1: one fit), ``fit_seconds``, ``n_train``, ``n_features``,
    and, like ``evaluate_checkpoint``, ``pair_counts`` = {"val", "test"}: per-passage pair counts
    (``PairCounts.to_json()``, passages keyed by name) for selection's paired bootstraps; the metrics a
    fitted reference does not have (robustness, competition rho, difficulty rho, STOP AUC: no audio twins, no
    representation z) are None.
    """
    spec = fitted_spec(cfg, experiment)
    if not 0 <= fold < len(data.folds.folds):
        raise ValueError(f"fold {fold} out of range: {len(data.folds.folds)} folds")
    parts = data.fold(fold)
    ids = {k: [s for s in parts[k] if s in data.labels] for k in ("train", "val", "test")}
    if not ids["train"] or not ids["test"]:
        raise ReferenceDataError(f"{experiment} fold {fold}: no labelled segments in its "
                                 f"{'training' if not ids['train'] else 'test'} part")
    cache_file = features_cache_file(cfg, data.corpus, spec.features_id)
    t0 = time.perf_counter()
    x = {k: segment_features(spec, data.corpus, v, cache_file) if v else None for k, v in ids.items()}
    y = {k: np.stack([data.labels[s] for s in v]).astype(np.float64) if v else None for k, v in ids.items()}
    t1 = time.perf_counter()
    model = _fit(cfg, experiment, x["train"], y["train"])
    fit_seconds = time.perf_counter() - t1
    threshold = cfg.loss_for(experiment).rank_threshold
    scored, counts = {}, {"val": None, "test": None}
    for part in ("val", "test"):
        if x[part] is None:
            continue
        pred = _predictions(ids[part], model.predict(x[part][0], x[part][1]), y[part], x[part][1])
        scored[part] = validation_metrics(pred, threshold=threshold, n_boot=n_boot, seed=cfg.seed, prefix=part)
        counts[part] = passage_counts(pred, threshold).to_json()
    info = {"fit_seconds": fit_seconds, "features_seconds": t1 - t0, "n_train": len(ids["train"]),
            "n_features": int(x["train"][0].shape[1])}
    val = {**scored.get("val", {}), **info}
    test = {k.removeprefix("test/"): v for k, v in scored["test"].items()}
    test.update(epoch=1, robustness_drop=None, robustness_pearson=None, competition_rho=None,
                competition_rounds=len(parts.get("held_rounds", [])), difficulty_rho=None, stop_auc=None, **info)
    test[PAIR_COUNTS] = counts
    return val, test
