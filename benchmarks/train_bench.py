"""Training-core benchmark: each experiment trained in-process (no Ray) on the demo corpus.

Prints, per experiment: epochs/s, samples/s, peak RSS, and the validation pairwise accuracy (with its 95% CI)
and R2 reached after the demo budget. Each experiment runs in its own subprocess, so peak RSS is its own.

    python benchmarks/train_bench.py [--experiments audio-frozen symbolic-features] [--epochs N] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from pianoray.config import load_config
from pianoray.training.data import ExperimentData
from pianoray.training.loop import Budget, fit
cfg = load_config(sys.argv[1], {"data": {"root": sys.argv[2]}})
data = ExperimentData.from_config(cfg)
epochs = int(sys.argv[5]) or cfg.round2.epochs
t0 = time.perf_counter(); samples = 0; best = None; last = None
for r in fit(cfg, sys.argv[3], data, 0, Budget(epochs, None), tiers=[t for t in cfg.round2.tiers if t in data.corpus.tiers]):
    samples += r.samples; last = r
    if r.best_epoch == r.epoch: best = r
wall = time.perf_counter() - t0
m = best.metrics
print(json.dumps({"epochs": last.epoch, "wall": wall, "samples": samples,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "pairwise": m["val/pairwise_accuracy"], "ci": m["val/pairwise_accuracy_ci"],
                  "r2": m["val/r2"], "best_epoch": best.epoch}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=["audio-frozen", "symbolic-features"])
    ap.add_argument("--config", default=str(ROOT / "experiments" / "demo.yaml"))
    ap.add_argument("--data", default=None, help="demo corpus folder (generated into a temp folder if absent)")
    ap.add_argument("--epochs", type=int, default=0, help="0 = the config's round-2 budget")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (Ray gives a 1-CPU trial 1)")
    args = ap.parse_args()
    console = Console()
    data = args.data
    if data is None:
        from pianoray.data.demo import generate_demo

        data = str(generate_demo(Path(tempfile.mkdtemp()) / "demo", seed=0, scale=1.0))
    table = Table(title=f"train_bench: demo corpus, fold 0, {args.threads} torch thread(s), no Ray")
    for col in ("experiment", "epochs", "epochs/s", "samples/s", "peak RSS", "val pairwise [95% CI]", "val R2", "best epoch"):
        table.add_column(col, justify="right")
    for exp in args.experiments:
        with console.status(f"training {exp}"):
            out = subprocess.run([sys.executable, "-c", CHILD, args.config, data, exp, str(args.threads),
                                  str(args.epochs)], capture_output=True, text=True)
        if out.returncode != 0:
            table.add_row(exp, "failed", "", "", "", out.stderr.strip().splitlines()[-1][:60], "", "")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        table.add_row(exp, str(r["epochs"]), f"{r['epochs'] / r['wall']:.3f}", f"{r['samples'] / r['wall']:.1f}",
                      f"{r['rss_mb']:.0f} MB", f"{r['pairwise']:.3f} [{r['ci'][0]:.3f}, {r['ci'][1]:.3f}]",
                      f"{r['r2']:.3f}", str(r["best_epoch"]))
    console.print(table)


if __name__ == "__main__":
    main()
