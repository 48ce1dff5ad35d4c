"""Round 3 on one fold: every fusion trained and scored in one process, with and without the frozen-feature memo.

A Round-3 fold job trains each fusion of its folds in turn, over the same frozen fold-k winners
(``trials.job_units``), and ``models.fusion.FROZEN_FEATURES`` encodes each evaluation batch (validation every
epoch; the test part, its twins, the planted pairs and every tier at scoring) once per winner for all of them.
This script runs the demo's Round 3 on fold 0 (``experiments/demo.yaml``: its budget, tiers and fusions) over
stand-ins for the winners (A3 and S3 by default, random weights: they cost what trained ones do), twice in one
process: with the memo, and with it holding nothing (``max_bytes=0``). It prints the seconds per fusion
(fit + score) and the ratio, and checks that both passes give the same validation history and test figures.

    .venv/bin/python benchmarks/fusion_bench.py
    .venv/bin/python benchmarks/fusion_bench.py --audio A1 --symbolic S2 --fold 1
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--audio", default="A3")
    ap.add_argument("--symbolic", default="S3")
    ap.add_argument("--fold", type=int, default=0)
    args = ap.parse_args()

    import torch
    from rich.console import Console
    from rich.table import Table

    from pianoray.config import load_config
    from pianoray.models import fusion as fusion_module
    from pianoray.records import SELECTION_METRIC
    from pianoray.settings import PROJECT_ROOT
    from pianoray.training.checkpoint import TopKSink
    from pianoray.training.data import ExperimentData
    from pianoray.training.fusion import fusion_experiment, initial_state, write_state
    from pianoray.training.loop import Budget, build_model, fit
    from pianoray.training.scoring import evaluate_checkpoint

    torch.set_num_threads(1)  # as a Round-3 Train worker with 0.9 CPU runs
    cfg = load_config(PROJECT_ROOT / "experiments" / "demo.yaml")
    data = ExperimentData.from_config(cfg)
    r3, winners = cfg.round3, {"audio": args.audio, "symbolic": args.symbolic}
    torch.manual_seed(0)
    stand_ins = {t: build_model(cfg, w, data).state_dict() for t, w in winners.items()}
    scratch = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    experiments = dict(cfg.experiments)
    for f in r3.fusions:
        exp = fusion_experiment(cfg, f, winners)
        with_exp = cfg.model_copy(update={"experiments": {**cfg.experiments, f: exp}})
        path = write_state(initial_state(with_exp, f, stand_ins, data), scratch / f / f"fold{args.fold}.pt")
        experiments[f] = exp.model_copy(update={"init_encoder_folds": {args.fold: path}})
    cfg = cfg.model_copy(update={"experiments": experiments})

    def one_pass(memo: "fusion_module.FrozenFeatures") -> dict[str, tuple[float, list, dict]]:
        fusion_module.FROZEN_FEATURES = memo
        out = {}
        for f in r3.fusions:
            t0 = time.perf_counter()
            sink = TopKSink(scratch / f"{f}-{memo.max_bytes}", k=1)
            history = [round(r.metrics[SELECTION_METRIC], 12)
                       for r in fit(cfg, f, data, args.fold, Budget(r3.epochs, r3.patience), tiers=r3.tiers,
                                    sink=sink)]
            test, _ = evaluate_checkpoint(cfg, f, data, args.fold, sink.best(), n_boot=200)
            out[f] = (time.perf_counter() - t0, history, test)
        return out

    kept = fusion_module.FrozenFeatures()
    with_memo = one_pass(kept)
    without = one_pass(fusion_module.FrozenFeatures(max_bytes=0))

    table = Table(title=f"Round 3, demo fold {args.fold}: {args.audio} + {args.symbolic}, {r3.epochs} epochs, "
                        f"tiers {'+'.join(t.name for t in r3.tiers)}")
    for col in ("fusion", "memo (s)", "no memo (s)", "ratio", "same figures"):
        table.add_column(col, justify="left" if col == "fusion" else "right")
    for f in r3.fusions:
        (a, ha, ta), (b, hb, tb) = with_memo[f], without[f]
        same = ha == hb and all(_same(ta[k], tb.get(k)) for k in ta)
        table.add_row(f, f"{a:.1f}", f"{b:.1f}", f"{b / a:.2f}x", "yes" if same else "NO")
    total_a, total_b = sum(v[0] for v in with_memo.values()), sum(v[0] for v in without.values())
    table.add_row("all", f"{total_a:.1f}", f"{total_b:.1f}", f"{total_b / total_a:.2f}x", "")
    Console().print(table)
    print(f"memo: {kept.misses} batches encoded, {kept.hits} served from it, {kept.bytes / 2**20:.1f} MiB kept")


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


if __name__ == "__main__":
    main()
