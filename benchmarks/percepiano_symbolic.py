"""Symbolic encoders on the real PercePiano subset: passage-safe 4-fold CV, 19-dim and composite labels.

For each experiment and label set: every fold is trained with the shared loop on its training part (model
selection on the inner validation split, early stopping) and scored once on its test part from the best
checkpoint. Printed: test R2 and pairwise accuracy, mean over folds with the fold spread (min-max), beside a
hand-crafted-feature ridge baseline on the same folds and the PercePiano paper's piece-split table.

Each finished fold is written at once (atomically) to ``--results DIR`` as ``{labels}__{experiment}.json``; a
rerun skips the folds already there (``--fresh`` retrains them), so an interrupted benchmark resumes, and
several processes may fill different cells of one table side by side. ``--table-only`` prints what DIR holds.

    python benchmarks/percepiano_symbolic.py [--experiments symbolic-features S1 S2 S2H S3] [--epochs 30]
        [--labels percepiano19 composite] [--folds 0 1 2 3] [--results DIR] [--set experiments.S3.optim.lr=1e-3]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
PAPER = [("Bi-LSTM", 0.185), ("MidiBERT", 0.313), ("Bi-LSTM + score alignment", 0.360), ("+ HAN", 0.397)]


def handcrafted(notes) -> np.ndarray:
    """~40 summary statistics of a performance: velocity, IOI/rubato, durations/articulation, pitch, pedal,
    chord spread, density."""
    from pianoray.data.loaders import note_features

    f = note_features(notes)
    onset = notes.onset
    ioi = np.diff(onset)
    ioi = ioi[ioi > 0.02] if len(ioi) else np.zeros(1)
    chords = np.diff(onset) < 0.03 if len(onset) > 1 else np.zeros(1, bool)
    span = max(float(onset[-1] - onset[0]), 1e-3)
    out = []
    for col in range(f.shape[1]):
        x = f[:, col]
        out += [x.mean(), x.std(), np.percentile(x, 10), np.percentile(x, 90)]
    logioi = np.log(ioi) if len(ioi) else np.zeros(1)
    vel = notes.velocity.astype(float)
    out += [logioi.mean(), logioi.std(), np.abs(np.diff(logioi)).mean() if len(logioi) > 1 else 0.0,
            np.polyfit(np.arange(len(logioi)), logioi, 1)[0] if len(logioi) > 2 else 0.0,
            vel.max() - vel.min(), np.abs(np.diff(vel)).mean() if len(vel) > 1 else 0.0,
            np.polyfit(np.arange(len(vel)), vel, 1)[0] if len(vel) > 2 else 0.0,
            chords.mean(), len(onset) / span, notes.pedal.mean(),
            float((notes.pedal_intervals[:, 1] - notes.pedal_intervals[:, 0]).sum() / span) if len(notes.pedal_intervals) else 0.0,
            articulation(notes)]
    return np.nan_to_num(np.array(out, dtype=np.float64))


def articulation(notes) -> float:
    """Mean log ratio of a note's duration to the gap before the next onset (legato > 0 > staccato)."""
    gap = np.diff(notes.onset)
    if len(gap) == 0:
        return 0.0
    return float(np.log(notes.duration[:-1] / np.maximum(gap, 0.02)).mean())


def ridge_baseline(data, folds: list[int], threshold: float) -> list[dict]:
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from pianoray.data.midi import load_notes
    from pianoray.data.tiers import Tier
    from pianoray.objectives import metrics

    m = data.corpus.manifest(Tier.T1).set_index("segment_id")
    feats = {sid: handcrafted(load_notes(data.corpus.path(m.loc[sid, "perf_midi"]))) for sid in m.index}
    out = []
    for k in folds:
        f = data.fold(k)
        train = f["train"] + f["val"]
        X = np.stack([feats[s] for s in train])
        Y = np.stack([data.labels[s] for s in train])
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 12))).fit(X, Y)
        pred = model.predict(np.stack([feats[s] for s in f["test"]]))
        Yt = np.stack([data.labels[s] for s in f["test"]])
        groups = m.loc[f["test"], "passage"].astype(str).to_numpy()
        out.append({"pairwise_accuracy": metrics.pairwise_accuracy(pred, Yt, groups, threshold=threshold, n_boot=0).mean,
                    "r2": metrics.r2(pred, Yt, n_boot=0).mean})
    return out


def train_folds(cfg, experiment: str, data, folds: list[int], epochs: int, patience: int, console: Console,
                store: Path | None = None) -> list[dict]:
    """Train and test ``folds``; with ``store`` (a JSON file {fold: result}) done folds are reused and each
    new one is saved as soon as it finishes."""
    from pianoray.data.cache import write_json_atomic
    from pianoray.training.checkpoint import TopKSink
    from pianoray.training.loop import Budget, fit
    from pianoray.training.runner import ensure_pretrained
    from pianoray.training.scoring import score_checkpoint

    done = json.loads(store.read_text()) if store is not None and store.exists() else {}
    todo = [k for k in folds if str(k) not in done]
    if todo:
        cfg = ensure_pretrained(cfg, experiment, data, console)
    for k in todo:
        with tempfile.TemporaryDirectory(prefix=f"{experiment}-f{k}-") as tmp:
            sink = TopKSink(Path(tmp), k=1)
            t0 = time.perf_counter()
            last, val = None, {}
            for r in fit(cfg, experiment, data, k, Budget(epochs, patience), tiers=cfg.round2.tiers, sink=sink):
                last, val[r.epoch] = r, r.metrics
            test = score_checkpoint(cfg, experiment, data, k, sink.best(), n_boot=200)
            test["seconds"] = time.perf_counter() - t0
            test["epochs"] = last.epoch
            best = val.get(last.best_epoch, {})
            test["val_pairwise_accuracy"] = best.get("val/pairwise_accuracy")
            test["val_pairwise_accuracy_ci"] = best.get("val/pairwise_accuracy_ci")
        done[str(k)] = test
        if store is not None:
            write_json_atomic(store, done)
        console.print(f"  {experiment} {cfg.data.labels} fold {k}: pairwise {test['pairwise_accuracy']:.3f} "
                      f"R2 {test['r2']:.3f} ({last.epoch} epochs, {test['seconds']:.0f} s)", highlight=False)
    return [done[str(k)] for k in folds]


def cell(values: list[float]) -> str:
    v = np.array(values, dtype=float)
    return f"{v.mean():.3f} ({v.min():.3f}-{v.max():.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=["symbolic-features"])
    ap.add_argument("--labels", nargs="+", default=["percepiano19", "composite"])
    ap.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--patience", type=int, default=8)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "percepiano_symbolic",
                    help="per-cell JSON results (resumable); also the --table-only source")
    ap.add_argument("--fresh", action="store_true", help="retrain folds already in --results")
    ap.add_argument("--table-only", action="store_true", help="print the table from --results, train nothing")
    ap.add_argument("--tag", default="", help="suffix for the model column and result files (for --set variants)")
    ap.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                    help="config override, e.g. experiments.S3.optim.lr=1e-3 (YAML value)")
    args = ap.parse_args()
    console = Console()
    import yaml

    from pianoray.config import load_config
    from pianoray.training.data import ExperimentData

    overrides: dict = {}
    for item in args.set:
        key, _, value = item.partition("=")
        node = overrides
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(value)
    args.results.mkdir(parents=True, exist_ok=True)
    rows = []
    for labels in args.labels:
        extra = {"experiments": {n: {} for n in args.experiments}}
        cfg = load_config(ROOT / "experiments" / "percepiano.yaml",
                          _merge({"data": {"labels": labels}}, _merge(extra, overrides)))
        data = ExperimentData.from_config(cfg) if not args.table_only else None
        ridge_store = args.results / f"{labels}__ridge.json"
        ridge_all = json.loads(ridge_store.read_text()) if ridge_store.exists() else {}
        if data is not None and any(str(k) not in ridge_all for k in args.folds):
            from pianoray.data.cache import write_json_atomic

            ridge_all.update({str(k): r for k, r in zip(args.folds, ridge_baseline(data, args.folds, cfg.loss.rank_threshold))})
            write_json_atomic(ridge_store, ridge_all)
        ridge = [ridge_all[str(k)] for k in args.folds if str(k) in ridge_all]
        if ridge:
            rows.append((labels, "ridge on hand-crafted MIDI features", [r["r2"] for r in ridge],
                         [r["pairwise_accuracy"] for r in ridge], []))
        if args.table_only:  # every stored cell of these labels: experiments and their tagged variants
            cells = [f.stem.split("__", 1)[1] for f in sorted(args.results.glob(f"{labels}__*.json")) if f != ridge_store]
        else:
            cells = [exp + (f"__{args.tag}" if args.tag else "") for exp in args.experiments]
        for cell_name in cells:
            exp, _, tag = cell_name.partition("__")
            name = exp + (f" ({tag})" if tag else "")
            store = args.results / f"{labels}__{cell_name}.json"
            if args.table_only:
                got = json.loads(store.read_text())
                res = [got[str(k)] for k in args.folds if str(k) in got]
                if len(res) < len(args.folds):
                    name += f", {len(res)}/{len(args.folds)} folds"
            else:
                if args.fresh and store.exists():
                    store.unlink()
                res = train_folds(cfg, exp, data, args.folds, args.epochs, args.patience, console, store)
            if res:
                lows = [r["val_pairwise_accuracy_ci"][0] for r in res if r.get("val_pairwise_accuracy_ci")]
                rows.append((labels, name, [r["r2"] for r in res], [r["pairwise_accuracy"] for r in res], lows))
    t = Table(title=f"PercePiano subset, passage-safe CV, folds {args.folds}: test R2 / pairwise, mean (min-max)")
    for col in ("labels", "model", "test R2", "test pairwise", "val pairwise, lowest 95% bound"):
        t.add_column(col)
    for labels, name, r2, pw, lows in rows:
        t.add_row(labels, name, cell(r2), cell(pw), f"{min(lows):.3f}" if lows else "")
    console.print(t)
    p = Table(title="for context (not comparable: other folds/subset): PercePiano paper, piece split, 19-dim R2")
    p.add_column("model")
    p.add_column("R2")
    for name, v in PAPER:
        p.add_row(name, f"{v:.3f}")
    console.print(p)
    console.print("DESIGN.md on this subset (19 dims): ridge ~70 features 0.38 / 0.725; gradient boosting 0.53 / 0.75")


def _merge(a: dict, b: dict) -> dict:
    """Recursive dict merge, ``b`` wins."""
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


if __name__ == "__main__":
    main()
