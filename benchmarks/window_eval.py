"""First window against whole segment: trained checkpoints scored on their fold's test part both ways.

Trains nothing. For each ``EXPERIMENT=DIR`` (a ``pianoray train --out DIR`` folder) the best checkpoint (by
validation pairwise accuracy) is scored with ``evaluate_checkpoint`` twice: on the single pre-window evaluation
crop (``eval_windows="crop"``: the first max_len items of a symbolic view, the centre of frames and notes) and
on whole segments (``"all"``: every window, merged by ``segment_mean``). Also printed: how many test segments
need more than one window, and the checkpoint's recorded validation pairwise accuracy beside the one
recomputed here, a check that the folds are the ones it was trained on (they are generated from the config).

    python benchmarks/window_eval.py --config experiments/percepiano.yaml --fold 0 S1=/tmp/S1 S3=/tmp/S3
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent


def window_counts(data, fold: int, views) -> np.ndarray:
    """[M] the number of evaluation windows of each test segment."""
    from pianoray.data.tiers import Tier

    ds = data.dataset(fold, "test", (Tier.T1,), views)
    return np.array([len(ds.windows(g)) for g in range(len(ds))])


def recomputed_val(cfg, experiment: str, data, fold: int, checkpoint: Path) -> float:
    """Validation pairwise accuracy of the checkpoint, as the training loop computes it (whole segments)."""
    from pianoray.training.evaluate import predict, validation_metrics
    from pianoray.training.loop import pick_device
    from pianoray.training.scoring import load_trained

    dev = pick_device("cpu")
    model = load_trained(cfg, experiment, data, checkpoint, dev)
    loader = data.eval_loader(fold, "val", model.encoder.views, cfg.optim_for(experiment).batch_size)
    m = validation_metrics(predict(model, loader, dev), threshold=cfg.loss_for(experiment).rank_threshold, n_boot=0)
    return float(m["val/pairwise_accuracy"])


def _ci(mean: float, ci: list[float]) -> str:
    return f"{mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", metavar="EXPERIMENT=DIR", help="checkpoint folders of `pianoray train --out`")
    ap.add_argument("--config", type=Path, default=ROOT / "experiments" / "percepiano.yaml")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--n-boot", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    console = Console(width=None if sys.stdout.isatty() else 150)  # a log keeps the table readable

    from pianoray.config import load_config
    from pianoray.models import registry
    from pianoray.training.checkpoint import METRICS_FILE, TopKSink
    from pianoray.training.data import ExperimentData
    from pianoray.training.scoring import evaluate_checkpoint

    cfg = load_config(args.config)
    data = ExperimentData.from_config(cfg)
    t = Table(title=f"{cfg.name}: fold {args.fold} test part ({cfg.data.fold_unit} folds, {cfg.data.labels} "
                    f"labels), single evaluation crop vs whole segment")
    for col in ("model", "epoch", "val pairwise (recorded / recomputed)", "segments > 1 window",
                "evaluation", "test pairwise [95% CI]", "test R2 [95% CI]", "seconds"):
        t.add_column(col)
    for run in args.runs:
        experiment, _, folder = run.partition("=")
        checkpoint = TopKSink(Path(folder), k=1).best()
        if checkpoint is None:
            raise SystemExit(f"{folder}: no checkpoint")
        recorded = json.loads((checkpoint / METRICS_FILE).read_text()).get("val/pairwise_accuracy")
        views = registry.get(cfg.encoder_name(experiment)).views
        counts = window_counts(data, args.fold, views)
        data.eval_windows = "all"
        val = recomputed_val(cfg, experiment, data, args.fold, checkpoint)
        for mode in ("crop", "all"):
            data.eval_windows = mode
            t0 = time.perf_counter()
            s = evaluate_checkpoint(cfg, experiment, data, args.fold, checkpoint, device="cpu", n_boot=args.n_boot)[0]
            t.add_row(experiment, str(s["epoch"]), f"{recorded:.3f} / {val:.3f}",
                      f"{(counts > 1).mean():.0%} of {len(counts)} (max {counts.max()})",
                      "first window (crop)" if mode == "crop" else "whole segment",
                      _ci(s["pairwise_accuracy"], s["pairwise_accuracy_ci"]), _ci(s["r2"], s["r2_ci"]),
                      f"{time.perf_counter() - t0:.0f}")
            console.print(f"{experiment} {mode}: pairwise {s['pairwise_accuracy']:.4f} R2 {s['r2']:.4f}",
                          highlight=False)
    data.eval_windows = "all"
    console.print(t)


if __name__ == "__main__":
    main()
