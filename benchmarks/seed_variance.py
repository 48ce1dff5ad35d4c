"""Seed variance of Round 2 on the demo: does the winner change with the training seed, and how large is the
seed spread next to the passage-bootstrap CI?

Round 2 of ``experiments/demo.yaml`` (its budgets: epochs, patience, folds, tiers) is run in-process, without
Ray, once per training seed: every experiment is trained on every fold with the shared loop (model selection on
the inner validation split, early stopping), scored once on its test part from the best checkpoint
(``evaluate_checkpoint``), and the fitted reference is fitted per fold (``fit_and_score``). The folds are fixed
(generated once with the config's seed and stored beside the results), so only the training seed moves:
initialisation, batch order and crops, dropout, and the reference's boosting seed. Each seed's selection is then
made exactly as a run makes it (``pianoray.protocol.selection.select_winners``: highest mean inner-validation
pairwise accuracy, R2 within the tie tolerance, the margin's paired bootstrap CI over validation passages, the
winner against the best reference on the test parts).

Printed: per experiment, the mean validation pairwise accuracy under each seed, the seed spread (max - min and
SD, in points), and the 95% passage-bootstrap CI half-width of that mean (passages resampled within folds);
per track and seed, the winner, its margin over the runner-up with its CI, and its comparison with the best
reference; and whether the winner changes.

Each (seed, experiment) is stored when done as ``<results>/seed<S>/<experiment>.json`` (per fold, resumable;
``--fresh`` retrains). ``--table-only`` prints what the folder holds.

    python benchmarks/seed_variance.py [--seeds 42 43 44] [--experiments A1 A3 S2 ...] [--folds 0 1 2 3]
        [--epochs N] [--results DIR] [--set round2.patience=2]
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from pianoray.terminal import RichFeedback

ROOT = Path(__file__).resolve().parent.parent
DEMO_YAML = ROOT / "experiments" / "demo.yaml"


# ------------------------------------------------------------------------------------------------ training


def run_fold(cfg, experiment: str, data, fold: int, epochs: int, patience: int | None) -> dict[str, Any]:
    """One fold of Round 2 as the protocol runs it: the figures selection reads, and the pair counts."""
    from pianoray.models import registry
    from pianoray.records import PAIR_COUNTS
    from pianoray.training.checkpoint import TopKSink
    from pianoray.training.loop import Budget, fit
    from pianoray.training.reference import fit_and_score
    from pianoray.training.scoring import evaluate_checkpoint

    t0 = time.perf_counter()
    if registry.get(cfg.encoder_name(experiment)).kind == "fitted":
        val, test = fit_and_score(cfg, experiment, data, fold, n_boot=0)
        counts = test.pop(PAIR_COUNTS)
        return {"val_pairwise": val["val/pairwise_accuracy"], "val_r2": val["val/r2"], "best_epoch": 1, "epochs": 1,
                "val_per_dim": val["val/pairwise_accuracy_per_dim"], "test": _scalars(test),
                "pair_counts": counts, "seconds": time.perf_counter() - t0}
    with tempfile.TemporaryDirectory(prefix=f"seedvar-{experiment}-f{fold}-") as tmp:
        sink = TopKSink(Path(tmp), k=epochs)  # keep every epoch: the best selecting epoch is scored
        results = list(fit(cfg, experiment, data, fold, Budget(epochs, patience), tiers=cfg.round2.tiers, sink=sink))
        last = results[-1]
        best = next((r for r in results if r.epoch == last.best_epoch), last)
        test = evaluate_checkpoint(cfg, experiment, data, fold, Path(tmp) / f"epoch-{best.epoch:04d}", n_boot=0)[0]
    counts = test.pop(PAIR_COUNTS)
    return {"val_pairwise": best.metrics["val/pairwise_accuracy"], "val_r2": best.metrics["val/r2"],
            "best_epoch": best.epoch, "epochs": last.epoch,
            "val_per_dim": best.metrics["val/pairwise_accuracy_per_dim"],
            "test": _scalars(test), "pair_counts": counts, "seconds": time.perf_counter() - t0}


def _scalars(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is None or isinstance(v, (int, float, str, bool))}


def train_seed(base_cfg, seed: int, experiments: list[str], folds: list[int], data, epochs: int,
               patience: int | None, store_dir: Path, console: Console) -> None:
    """Every (experiment, fold) of one seed not yet in ``store_dir``; each experiment's file is rewritten
    (atomically) after every fold."""
    from pianoray.data.cache import write_json_atomic
    from pianoray.models import registry
    from pianoray.training.runner import ensure_pretrained

    cfg = base_cfg.model_copy(update={"seed": seed}, deep=True)
    store_dir.mkdir(parents=True, exist_ok=True)
    for name in experiments:
        store = store_dir / f"{name}.json"
        done = json.loads(store.read_text()) if store.exists() else {}
        todo = [k for k in folds if str(k) not in done]
        if not todo:
            continue
        run_cfg = cfg
        if registry.get(cfg.encoder_name(name)).pretrain is not None:
            run_cfg = ensure_pretrained(cfg, name, data, RichFeedback(console), folds=todo)
        for k in todo:
            done[str(k)] = run_fold(run_cfg, name, data, k, epochs, patience)
            write_json_atomic(store, done)
            r = done[str(k)]
            console.print(f"  seed {seed} {name} fold {k}: val {r['val_pairwise']:.3f} test "
                          f"{r['test'].get('pairwise_accuracy', float('nan')):.3f} ({r['epochs']} epochs, "
                          f"{r['seconds']:.0f} s)", highlight=False)


# ----------------------------------------------------------------------------------------------- analysis


def outcomes(store_dir: Path, experiments: list[str], folds: list[int]) -> dict[str, list[Any]]:
    """name -> its FoldOutcome list (only experiments with every requested fold stored)."""
    from pianoray.objectives.metrics import PairCounts
    from pianoray.protocol.selection import FoldOutcome

    out = {}
    for name in experiments:
        store = store_dir / f"{name}.json"
        got = json.loads(store.read_text()) if store.exists() else {}
        if not all(str(k) in got for k in folds):
            continue
        rows = []
        for k in folds:
            r = got[str(k)]
            pc = r.get("pair_counts") or {}
            rows.append(FoldOutcome(k, r["val_pairwise"], r["val_r2"], r["best_epoch"], r["epochs"],
                                    r.get("val_per_dim"), r["test"],
                                    PairCounts.from_json(pc["val"]) if pc.get("val") else None,
                                    PairCounts.from_json(pc["test"]) if pc.get("test") else None))
        out[name] = rows
    return out


def passage_ci(folds: list[Any], n_boot: int, seed: int) -> tuple[float, float] | None:
    """95% CI of an experiment's mean validation pairwise accuracy, resampling passages within each fold:
    ``paired_accuracy_gap`` against a model with no correct pair (accuracy 0 on the same pairs) is exactly that
    bootstrap, on the same per-dimension mean."""
    from pianoray.objectives.metrics import PairCounts, paired_accuracy_gap

    pairs = [(f.val_counts, PairCounts(f.val_counts.groups, np.zeros_like(f.val_counts.correct), f.val_counts.total))
             for f in folds if f.val_counts is not None]
    if not pairs:
        return None
    _, (lo, hi) = paired_accuracy_gap(pairs, n_boot=n_boot, seed=seed)
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) else None


def _pts(x: float | None, signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "—"
    return f"{x:+.1f}" if signed else f"{x:.1f}"


def _ci(ci: Any) -> str:
    return "—" if not ci or ci[0] is None else f"[{ci[0]:+.1f}, {ci[1]:+.1f}]"


def analyse(results_dir: Path, seeds: list[int], experiments: list[str], folds: list[int], tracks: dict,
            tie_tolerance: float, n_boot: int, console: Console) -> dict[str, Any]:
    from pianoray.protocol.selection import select_winners, summarise

    per_seed: dict[int, dict[str, Any]] = {}
    for s in seeds:
        fo = outcomes(results_dir / f"seed{s}", experiments, folds)
        if not fo:
            continue
        summaries = {n: summarise(f) for n, f in fo.items()}
        sel = select_winners(summaries, {n: tracks[n] for n in fo}, tie_tolerance=tie_tolerance, folds=fo,
                             n_boot=n_boot, seed=s)
        per_seed[s] = {"folds": fo, "summaries": summaries, "selection": sel}
    if not per_seed:
        console.print(f"nothing stored under {results_dir} for seeds {seeds}")
        return {}
    done_seeds = sorted(per_seed)
    names = [n for n in experiments if any(n in per_seed[s]["folds"] for s in done_seeds)]

    t = Table(title=f"Round 2 of the demo under {len(done_seeds)} training seeds (folds {folds} fixed): mean "
                    "validation pairwise accuracy over folds, %")
    t.add_column("experiment")
    t.add_column("track")
    for s in done_seeds:
        t.add_column(f"seed {s}", justify="right")
    for col in ("seed spread max-min (pts)", "seed SD (pts)", "passage-bootstrap 95% CI half-width (pts)",
                "spread / CI width", "test pairwise, mean over seeds"):
        t.add_column(col, justify="right")
    rows = {}
    for n in names:
        vals = {s: per_seed[s]["summaries"][n]["pairwise_accuracy"]["mean"] for s in done_seeds
                if n in per_seed[s]["summaries"]}
        halves = []
        for s in vals:
            ci = passage_ci(per_seed[s]["folds"][n], n_boot, s)
            if ci is not None:
                halves.append(100 * (ci[1] - ci[0]) / 2)
        v = np.array([100 * x for x in vals.values()], dtype=float)
        spread = float(v.max() - v.min()) if len(v) > 1 else float("nan")
        sd = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
        half = float(np.mean(halves)) if halves else float("nan")
        tests = [per_seed[s]["summaries"][n]["test"]["pairwise_accuracy"]["mean"] for s in vals]
        tests = [x for x in tests if x is not None]
        rows[n] = {"per_seed": vals, "spread_points": spread, "sd_points": sd, "ci_half_points": half}
        t.add_row(n + (" (ref)" if tracks[n][1] == "reference" else ""), tracks[n][0],
                  *[_pts(100 * vals[s]) if s in vals else "—" for s in done_seeds],
                  _pts(spread), _pts(sd), _pts(half),
                  f"{spread / (2 * half):.2f}" if half == half and half > 0 and spread == spread else "—",
                  _pts(100 * float(np.mean(tests))) if tests else "—")
    console.print(t)

    w = Table(title="Selection under each seed: winner, margin over the runner-up on inner validation (paired "
                    "bootstrap over passages, points), and the winner against the best reference on the test parts")
    for col in ("track", "seed", "winner", "runner-up", "margin [95% CI]", "tie?", "best reference",
                "winner - reference [95% CI]", "verdict"):
        w.add_column(col)
    winners: dict[str, list[str | None]] = {}
    for track in sorted({tracks[n][0] for n in names}):
        for s in done_seeds:
            sel = per_seed[s]["selection"]
            win = sel["winners"].get(track)
            winners.setdefault(track, []).append(win)
            m = (sel.get("margins") or {}).get(track) or {}
            v = (sel.get("versus_reference") or {}).get(track) or {}
            tie = m.get("statistical_tie")
            w.add_row(track, str(s), str(win or "—"), str(m.get("runner_up") or "—"),
                      f"{_pts(m.get('gap_points'), True)} {_ci(m.get('ci_points'))}",
                      "—" if tie is None else ("statistical tie" if tie else "no"), str(v.get("reference") or "—"),
                      f"{_pts(v.get('gap_points'), True)} {_ci(v.get('ci_points'))}" if v else "—",
                      str(v.get("verdict") or "—"))
    console.print(w)
    for track, ws in winners.items():
        changed = len(set(ws)) > 1
        console.print(f"{track}: winner per seed {ws} -> {'CHANGES with the seed' if changed else 'stable'}",
                      highlight=False)
    return {"experiments": rows, "winners": winners, "seeds": done_seeds}


# ------------------------------------------------------------------------------------------------- main


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DEMO_YAML)
    ap.add_argument("--seeds", nargs="+", type=int, default=[42, 43, 44])
    ap.add_argument("--experiments", nargs="+", default=None,
                    help="default: every experiment the config enables (Round 2 of a run where all survive)")
    ap.add_argument("--folds", nargs="+", type=int, default=None, help="default: round2.folds of the config")
    ap.add_argument("--epochs", type=int, default=None, help="default: round2.epochs of the config")
    ap.add_argument("--patience", type=int, default=None, help="default: round2.patience of the config")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results" / "seed_variance")
    ap.add_argument("--fresh", action="store_true", help="retrain what --results holds")
    ap.add_argument("--table-only", action="store_true", help="print the tables from --results, train nothing")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the demo models are tiny)")
    ap.add_argument("--set", action="append", default=[], metavar="DOTTED=VALUE",
                    help="config override, e.g. data.demo.scale=0.3 (YAML value)")
    args = ap.parse_args()
    console = Console()
    import shutil

    import torch

    from pianoray.config import dotted_overrides, load_config
    from pianoray.models import registry
    from pianoray.training.data import ExperimentData
    from pianoray.validation import prepare_data

    torch.set_num_threads(args.threads)
    overrides = dotted_overrides(args.set)
    if args.fresh and args.results.exists():
        shutil.rmtree(args.results)
    args.results.mkdir(parents=True, exist_ok=True)
    cfg = load_config(args.config, overrides)
    experiments = args.experiments or list(cfg.enabled_experiments())
    folds = args.folds if args.folds is not None else list(range(cfg.round2.folds))
    epochs = args.epochs or cfg.round2.epochs
    patience = args.patience if args.patience is not None else cfg.round2.patience
    tracks = {n: (registry.get(cfg.encoder_name(n)).track, registry.get(cfg.encoder_name(n)).role) for n in experiments}
    # One fold assignment for every seed: generated with the config's seed, stored, and read back by each seed.
    folds_file = args.results / "folds.json"
    if not args.table_only:
        prepare_data(cfg, RichFeedback(console))
        if not folds_file.exists():
            ExperimentData.from_config(cfg).folds.save(folds_file)
        cfg = load_config(args.config, _merge(overrides, {"data": {"folds": str(folds_file)}}))
        data = ExperimentData.from_config(cfg)
        t0 = time.perf_counter()
        for s in args.seeds:
            console.print(f"[bold]seed {s}[/bold]: {', '.join(experiments)} on folds {folds}, {epochs} epochs, "
                          f"patience {patience}")
            train_seed(cfg, s, experiments, folds, data, epochs, patience, args.results / f"seed{s}", console)
        console.print(f"trained in {time.perf_counter() - t0:.0f} s")
    summary = analyse(args.results, args.seeds, experiments, folds, tracks, cfg.selection.tie_tolerance, args.n_boot,
                      console)
    if summary:
        (args.results / "summary.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    main()
