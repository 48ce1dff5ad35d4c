"""The full metrics suite for one trained fold: scored once, on the fold's test part, from its best checkpoint.

- pairwise accuracy and R2 (with bootstrap CIs over passages), as in validation;
- robustness: the relative drop in pairwise accuracy from clean to augmented twins (T4 pairs of the test
  segments) and the Pearson r between clean and augmented predictions; each twin is scored on one crop (the
  same for both), every other figure on whole segments (``predict`` merges the windows);
- competition Spearman: per T2 round, the model's overall score (mean ranking-head score) against placement;
- difficulty rho and STOP AUC as linear probes on z (a fusion's too): a ridge probe cross-validated over pieces,
  a logistic one leaving one recording out at a time (:func:`stop_groups`), each scored out of fold. These say
  how much the representation carries, not what a trained head would reach;
- a model with a difficulty head (Round 3's fusions): its own difficulty rho on the test part, the per-piece
  mean of the head's grade against the pieces' grades (``difficulty_head_rho``). The head never trained on a
  test piece's grade (:func:`pianoray.data.loaders.training_grades`), so this is out of sample too;
- ``gates`` (a gated fusion, F3): each label dimension's mean weight on audio over the test segments;
- planted score-conditioned pairs (the demo's ``planted/`` set, :func:`pianoray.data.demo.open_planted`): on the
  pairs of the fold's test passages, whether the model's overall score (mean ranking-head score) puts the take
  with every note right but expressive timing and dynamics above the one with wrong notes; per passage
  (``planted_passages``, ``planted_correct``, ``planted_pairs``), which Round 3's verdict pools over folds;
- ``pair_counts``: per-passage pair counts (:class:`pianoray.objectives.metrics.PairCounts`) of the checkpoint on
  the fold's inner validation split and on its test part, what selection's paired bootstraps need (the winner's
  margin over the runner-up, the winner against the references). Passage keys are the bare passage name
  (:func:`passage_counts`), so a neural model and a fitted reference pair up on the same passages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pianoray.config import ProtocolConfig
from pianoray.data.tiers import Tier
from pianoray.objectives import metrics
from pianoray.records import PAIR_COUNTS  # the per-passage counts' key in evaluate_checkpoint's test dict
from pianoray.training.checkpoint import read_state
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import Predictions, predict, segment_mean, validation_metrics
from pianoray.training.loop import build_model, pick_device

_T1_GROUP = "T1:"  # a loader's rank-group key of a labelled segment: "T1:<passage>"


def passage_counts(pred: Predictions, threshold: float) -> metrics.PairCounts:
    """Pair counts of the labelled segments of ``pred``, one row per passage with at least two of them (a
    passage with one forms no pair), keyed by the passage name (the loaders' ``T1:`` prefix removed), with the
    same pairs and threshold as pairwise accuracy."""
    labelled = pred.has_labels.astype(bool)
    groups = np.array([g[len(_T1_GROUP):] if isinstance(g, str) and g.startswith(_T1_GROUP) else str(g)
                       for g in pred.groups], dtype=object)
    names, sizes = np.unique(groups[labelled].astype(str), return_counts=True)
    paired = set(names[sizes >= 2].tolist())
    # metrics.pair_counts lists every passage key but has count rows only for passages with a pair: keep
    # those alone, so that its groups and rows agree
    keep = labelled & np.array([g in paired for g in groups], dtype=bool)
    p = pred.subset([s for s, k in zip(pred.segment_ids, keep) if k])
    return metrics.pair_counts(p.scores, p.labels, groups[keep], threshold=threshold)


def load_trained(cfg: ProtocolConfig, experiment: str, data: ExperimentData, checkpoint: Path,
                 device: torch.device) -> torch.nn.Module:
    model = build_model(cfg, experiment, data)
    model.load_state_dict(read_state(checkpoint)["model"])
    return model.to(device).eval()


def evaluate_checkpoint(
    cfg: ProtocolConfig,
    experiment: str,
    data: ExperimentData,
    fold: int,
    checkpoint: str | Path,
    *,
    device: str | torch.device | None = None,
    n_boot: int = 1000,
) -> tuple[dict[str, Any], Predictions]:
    """Test-part metrics of ``experiment`` on ``fold`` from ``checkpoint`` (a JSON-able dict, flat but for
    ``pair_counts`` = {"val": PairCounts.to_json(), "test": ...}, which the caller takes out before reporting),
    and the test part's per-segment predictions they come from (kept with the fold's best model: Round 3's
    paired R2 gap and error correlation read them). A model whose encoder has per-dimension gates (F3) also
    gets ``gates``: each label dimension's mean weight on audio over the test segments."""
    dev = pick_device(device)
    model = load_trained(cfg, experiment, data, Path(checkpoint), dev)
    views = model.encoder.views
    bs = cfg.optim_for(experiment).batch_size
    threshold = cfg.loss_for(experiment).rank_threshold

    test = predict(model, data.eval_loader(fold, "test", views, bs), dev)
    out = {k.removeprefix("test/"): v for k, v in
           validation_metrics(test, threshold=threshold, n_boot=n_boot, seed=cfg.seed, prefix="test").items()}
    out["epoch"] = int(read_state(checkpoint)["epoch"])
    if "frames" in views:  # audio augmentation leaves a MIDI view untouched: robustness is an audio metric
        out.update(_robustness(model, data, fold, views, bs, dev, threshold, test))
    else:
        out.update({"robustness_drop": None, "robustness_pearson": None})
    if hasattr(model.encoder, "gates"):
        out["gates"] = _mean_gates(model, data.eval_loader(fold, "test", views, bs), dev)
    out.update(_planted(cfg, model, data, fold, views, bs, dev))
    others = {t: _predict_tier(model, data, t, views, bs, dev) for t in (Tier.T2, Tier.T3)}
    out.update(_competition(data, others[Tier.T2], data.fold(fold)["held_rounds"]))
    if test.difficulty is not None:
        out.update(_difficulty_head(data, test, n_boot=n_boot, seed=cfg.seed))
    t1 = [test] + [predict(model, data.eval_loader(fold, s, views, bs), dev) for s in ("train", "val")]
    out.update(_probes(data, _concat(t1), _concat(t1 + [p for p in others.values() if p is not None])))
    out[PAIR_COUNTS] = {"val": passage_counts(t1[2], threshold).to_json(),
                        "test": passage_counts(test, threshold).to_json()}
    return out, test


def _difficulty_head(data: ExperimentData, test: Predictions, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Spearman rho of the difficulty head on the test part: each graded piece's mean head grade over its test
    segments against its grade, with a CI resampling pieces; None, with ``difficulty_head_rho_why``, for fewer
    than 3 graded pieces."""
    grades = getattr(data.corpus, "difficulty", None) or {}
    pieces = data.corpus.manifest(Tier.T1).set_index("segment_id").loc[test.segment_ids, "piece"].astype(str).to_numpy()
    graded = sorted({p for p in pieces if p in grades})
    if len(graded) < 3:
        return {"difficulty_head_rho": None,
                "difficulty_head_rho_why": f"{len(graded)} graded pieces in the test part (3 needed)"}
    head = np.array([test.difficulty[pieces == p].mean() for p in graded])
    r = metrics.spearman_difficulty(head, np.array([grades[p] for p in graded], dtype=float), n_boot=n_boot, seed=seed)
    return {"difficulty_head_rho": r.mean, "difficulty_head_rho_ci": list(r.ci), "difficulty_head_pieces": len(graded)}


def _mean_gates(model: torch.nn.Module, batches: Any, dev: torch.device) -> list[float]:
    """[N]: the gates of each test segment (windows merged by ``segment_mean``, as predictions are), averaged
    over segments with equal weight."""
    ids, weights, gates = [], [], []
    with torch.no_grad():
        for batch in batches:
            gates.append(model.encoder.gates(batch.to(dev)).float().cpu().numpy())
            ids.extend(batch.segment_ids)
            weights.extend(batch.meta.get("weight") or [1.0] * batch.size)
    per_segment = segment_mean(ids, np.asarray(weights), np.concatenate(gates))[1]
    return [float(g) for g in per_segment.mean(axis=0)]


def _robustness(model, data, fold, views, bs, dev, threshold, clean_test: Predictions) -> dict[str, Any]:
    loader = data.twin_loader(fold, "test", views, bs)
    if loader is None:
        return {"robustness_drop": None, "robustness_pearson": None}
    clean_scores, aug_scores, targets, groups = [], [], [], []
    labels = data.labels
    passage = dict(zip(clean_test.segment_ids, clean_test.groups))
    model.eval()
    with torch.no_grad():
        for batch in loader:
            out = model(batch.to(dev))
            scores = out.scores.float().cpu().numpy()
            for i, j in enumerate(batch.pair.tolist()):
                sid = batch.segment_ids[i]
                if j > i and sid in labels and sid in passage:  # i is the clean twin (first of the pair)
                    clean_scores.append(scores[i])
                    aug_scores.append(scores[j])
                    targets.append(labels[sid])
                    groups.append(passage[sid])
    if not clean_scores:
        return {"robustness_drop": None, "robustness_pearson": None}
    r = metrics.robustness(np.array(clean_scores), np.array(aug_scores), np.array(targets),
                           np.array(groups, dtype=object), threshold=threshold, n_boot=200)
    return {
        "robustness_drop": r.drop.mean,
        "robustness_drop_ci": list(r.drop.ci),
        "robustness_pearson": r.pearson.mean,
        "robustness_pairs": len(clean_scores),
    }


def _planted(cfg: ProtocolConfig, model, data: ExperimentData, fold: int, views, bs, dev) -> dict[str, Any]:
    """The planted pairs of the fold's test passages: per passage, the sum of its pairs'
    :func:`~pianoray.objectives.metrics.planted_outcomes` and its number of pairs, and the fold's accuracy with a
    CI over passages. None, with ``planted_why``, where the corpus has no planted set or the fold no pair."""
    from pianoray.data.loaders import SegmentDataset, make_loader

    planted = data.planted
    if planted is None:
        return {"planted_accuracy": None, "planted_why": "the corpus has no planted pairs (only the demo makes them)"}
    t1 = data.corpus.manifest(Tier.T1).set_index("segment_id")
    pairs = planted.of_passages(t1.loc[data.fold(fold)["test"], "passage"].astype(str))
    if not pairs:
        return {"planted_accuracy": None, "planted_why": "no planted pair of this fold's test passages"}
    ids = [p[k] for p in pairs for k in ("expressive", "wrong")]
    ds = SegmentDataset(planted.corpus, Tier.T1, ids, views, train=False, max_frames=data.max_frames,
                        max_notes=data.max_notes, n_dims=len(data.label_names))
    pred = predict(model, make_loader(ds, batch_size=bs, shuffle=False, train=False, windows=data.eval_windows), dev)
    overall = dict(zip(pred.segment_ids, pred.scores.mean(axis=1)))
    outcome = metrics.planted_outcomes([overall[p["expressive"]] for p in pairs], [overall[p["wrong"]] for p in pairs])
    passages = sorted({p["passage"] for p in pairs})
    of = np.array([passages.index(p["passage"]) for p in pairs])
    correct = np.bincount(of, weights=outcome, minlength=len(passages))
    n = np.bincount(of, minlength=len(passages))
    r = metrics.planted_accuracy(correct, n, n_boot=200, seed=cfg.seed)
    return {"planted_accuracy": r.mean, "planted_accuracy_ci": list(r.ci), "planted_passages": passages,
            "planted_correct": [float(c) for c in correct], "planted_pairs": [int(k) for k in n]}


def _predict_tier(model, data: ExperimentData, tier: Tier, views, bs, dev) -> Predictions | None:
    """Predictions for every segment of an unlabelled tier (T2 competition, T3 cross-performer), or None."""
    from pianoray.data.loaders import SegmentDataset, make_loader

    corpus = data.corpus
    if tier not in corpus.tiers or len(corpus.manifest(tier)) == 0 or ("frames" in views and not corpus.has_frames()):
        return None
    ids = corpus.manifest(tier)["segment_id"].tolist()
    ds = SegmentDataset(corpus, tier, ids, views, train=False, max_frames=data.max_frames,
                        max_notes=data.max_notes, n_dims=len(data.label_names))
    return predict(model, make_loader(ds, batch_size=bs, shuffle=False, train=False, windows=data.eval_windows), dev)


def _competition(data: ExperimentData, pred: Predictions | None, held_rounds: list[str]) -> dict[str, Any]:
    """Spearman of the overall score against placement, per competition round, on the rounds this fold held
    out of training only (a round trained on with the placement-ranking loss would score itself). Fewer than
    two held-out rounds: not reported."""
    if pred is None or len(held_rounds) < 2:
        return {"competition_rho": None, "competition_rounds": len(held_rounds)}
    m = data.corpus.manifest(Tier.T2).set_index("segment_id").loc[pred.segment_ids]
    keep = m["round_id"].astype(str).isin(set(held_rounds)).to_numpy()
    placement = m[keep]
    r = metrics.competition_spearman(pred.scores.mean(axis=1)[keep], placement["placement"].to_numpy(float),
                                     placement["round_id"].astype(str).to_numpy(), n_boot=200)
    return {"competition_rho": r.mean, "competition_rho_ci": list(r.ci), "competition_rounds": len(held_rounds)}


def _probes(data: ExperimentData, pred: Predictions, every_tier: Predictions) -> dict[str, Any]:
    """Difficulty rho (ridge on per-piece mean z, over every tier's segments: a piece's grade needs no
    performance labels) and STOP AUC (logistic on the T1 segments' z, leave one recording out:
    :func:`stop_groups`), both out of fold. A figure that cannot be computed is None, with ``<name>_why``
    saying why."""
    from sklearn.linear_model import LogisticRegression, Ridge
    from sklearn.model_selection import KFold, LeaveOneGroupOut, cross_val_predict

    out: dict[str, Any] = {"difficulty_rho": None, "stop_auc": None}
    corpus = data.corpus
    piece_of = pd.concat([corpus.manifest(t).set_index("segment_id")["piece"] for t in corpus.tiers])
    piece_of = piece_of[~piece_of.index.duplicated()]
    all_pieces = piece_of.loc[every_tier.segment_ids].astype(str).to_numpy()
    grades = getattr(corpus, "difficulty", None) or {}
    graded = sorted({p for p in all_pieces if p in grades})
    if len(graded) >= 5:
        zp = np.stack([every_tier.z[all_pieces == p].mean(axis=0) for p in graded])
        y = np.array([grades[p] for p in graded], dtype=float)
        guess = cross_val_predict(Ridge(alpha=10.0), zp, y, cv=KFold(min(5, len(graded)), shuffle=True, random_state=0))
        out["difficulty_rho"] = metrics.spearman_difficulty(guess, y, n_boot=200).mean
    else:  # a missing figure says why (the fold's record keeps it)
        out["difficulty_rho_why"] = f"{len(graded)} graded pieces among the scored segments (5 needed)"
    stop = getattr(data.corpus, "stop", None) or {}
    rows = [i for i, s in enumerate(pred.segment_ids) if s in stop]
    y = np.array([stop[pred.segment_ids[i]] for i in rows], dtype=int)
    recordings = stop_groups(corpus, [pred.segment_ids[i] for i in rows]) if rows else np.array([])
    if len(rows) < 20:
        out["stop_auc_why"] = f"{len(rows)} scored segments carry a STOP label (20 needed)"
    elif not 0 < y.sum() < len(y):
        out["stop_auc_why"] = "every STOP label is the same"
    elif len(set(recordings)) < 3:
        out["stop_auc_why"] = f"{len(set(recordings))} recordings to leave out (3 needed)"
    else:
        p = cross_val_predict(LogisticRegression(max_iter=1000, C=0.1), pred.z[rows], y, cv=LeaveOneGroupOut(),
                              groups=recordings, method="predict_proba")[:, 1]
        auc = metrics.stop_auc(p, y, recordings, n_boot=200)
        out.update({"stop_auc": auc.mean, "stop_auc_ci": list(auc.ci), "stop_groups": len(set(recordings)),
                    "stop_group": stop_group_column(corpus)})
    return out


def stop_group_column(corpus: Any) -> str:
    """The manifest column STOP AUC groups by: ``recording`` (the seed's leave-one-video-out: a teacher's stops
    within one masterclass video are not independent), or for a corpus without recordings (the demo)
    ``performer``, which stands in: one performer's takes share the skill the labels follow, so a probe must be
    scored on performers it never saw."""
    return "recording" if any("recording" in corpus.manifest(t).columns for t in corpus.tiers) else "performer"


def stop_groups(corpus: Any, segment_ids: list[str]) -> np.ndarray:
    """[M] the group (:func:`stop_group_column`) of each segment, which STOP AUC leaves out one at a time."""
    manifest = pd.concat([corpus.manifest(t).set_index("segment_id") for t in corpus.tiers])
    manifest = manifest[~manifest.index.duplicated()]
    return manifest.loc[segment_ids, stop_group_column(corpus)].astype(str).to_numpy()


def _concat(parts: list[Predictions]) -> Predictions:
    return Predictions(
        [s for p in parts for s in p.segment_ids],
        np.concatenate([p.scores for p in parts]),
        np.concatenate([p.regression for p in parts]),
        np.concatenate([p.labels for p in parts]),
        np.concatenate([p.has_labels for p in parts]),
        np.concatenate([p.groups for p in parts]),
        np.concatenate([p.z for p in parts]),
    )
