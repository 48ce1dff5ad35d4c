"""Protocol benchmark on the demo corpus.

(a) Overhead: the same experiment and epochs in-process (the `pianoray train --out` path: a checkpoint per
    epoch into a local top-k folder) and as a Ray Tune trial (the Round-1 trainable, 1 CPU, so Ray sets 1
    thread; in-process also uses 1 torch thread; a checkpoint per epoch reported to Tune, which copies it into
    the run's storage), as seconds per epoch measured between the first and last epoch reports (Ray start-up
    excluded), and their ratio: what Ray adds per epoch, reporting and checkpoint persistence.
(b) Elimination efficiency: the protocol (Round 1 + Round 2 on survivors) against the exhaustive alternative
    (every experiment, 4 folds, full budget: the same run with no elimination), in samples processed and
    resource-seconds, which experiments survived, and whether the winners match. Reported as measured.
(c) Replay: see benchmarks/scheduler_replay.py (the noise guard's wrong-elimination rate).

    python benchmarks/protocol_bench.py [--overhead-only] [--experiment audio-frozen] [--epochs 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "experiments" / "demo.yaml"


def overhead(cfg_path: Path, data: str, experiment: str, epochs: int) -> dict[str, float]:
    import ray
    import torch
    from ray import tune

    from pianoray.config import load_config
    from pianoray.protocol.run import config_dict
    from pianoray.protocol.session import start_ray
    from pianoray.protocol.trials import screen_trainable
    from pianoray.training.checkpoint import TopKSink
    from pianoray.training.data import ExperimentData
    from pianoray.training.loop import Budget, fit

    cfg = load_config(cfg_path, {"data": {"root": data}, "round1": {"epochs": epochs, "rungs": [1]}})
    torch.set_num_threads(1)
    data_obj = ExperimentData.from_config(cfg)
    stamps = []
    sink = TopKSink(Path(tempfile.mkdtemp(prefix="overhead-ckpt-")), k=cfg.round2.num_to_keep)
    for _ in fit(cfg, experiment, data_obj, 0, Budget(epochs), tiers=cfg.round1.tiers, sink=sink):
        stamps.append(time.perf_counter())
    inproc = (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    times: list[float] = []

    class Stamp(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            times.append(time.time())

    start_ray(None, dashboard=False)
    tuner = tune.Tuner(
        tune.with_resources(screen_trainable, {"cpu": 1}),
        param_space={"experiment": experiment, "track": "audio", "role": "candidate", "protocol": config_dict(cfg)},
        run_config=tune.RunConfig(name="overhead", storage_path=tempfile.mkdtemp(), callbacks=[Stamp()], verbose=0),
    )
    tuner.fit()
    ray.shutdown()
    in_ray = (times[-1] - times[0]) / (len(times) - 1)
    return {"inproc": inproc, "ray": in_ray, "ratio": in_ray / inproc}


def protocol_cost(cfg_path: Path, data: str, storage: str, name: str, exhaustive: bool) -> dict:
    import ray

    from pianoray.config import load_config
    from pianoray.protocol.ledger import Ledger
    from pianoray.protocol.run import run_protocol
    from pianoray.protocol.storage import RunStorage

    over = {"data": {"root": data}, "name": name}
    if exhaustive:
        over["round1"] = {"gap": 1000.0}  # nobody is eliminated: every experiment gets 4 folds, full budget
    cfg = load_config(cfg_path, over)
    t0 = time.perf_counter()
    results = run_protocol(cfg, storage=storage, name=name, fresh=True, feedback=None)
    wall = time.perf_counter() - t0
    ray.shutdown()
    ledger = Ledger(RunStorage(storage, name))
    by_round: dict[str, dict[str, float]] = {}
    for e in ledger.epochs():
        r = by_round.setdefault(e.round, {"samples": 0, "resource_s": 0.0})
        r["samples"] += int(e.payload["metrics"].get("samples", 0))
    for rec in ledger.resource_records():
        by_round.setdefault(rec.round, {"samples": 0, "resource_s": 0.0})["resource_s"] += rec.amount_hours * 3600
    survivors = [e["name"] for e in results["experiments"] if e["furthest_round"] == "round2"]
    return {"wall": wall, "rounds": by_round, "survivors": survivors, "winners": results["winners"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--experiment", default="audio-frozen")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--overhead-only", action="store_true")
    args = ap.parse_args()
    console = Console()
    from pianoray.data.demo import generate_demo

    work = Path(tempfile.mkdtemp(prefix="protocol-bench-"))
    data = str(generate_demo(work / "demo", seed=0, scale=1.0))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    o = overhead(args.config, data, args.experiment, args.epochs)
    t = Table(title=f"(a) overhead: {args.experiment}, {args.epochs} epochs, 1 thread, Ray start-up excluded")
    for col in ("in-process s/epoch", "Tune trial s/epoch", "ratio (target <= 1.10)"):
        t.add_column(col, justify="right")
    t.add_row(f"{o['inproc']:.2f}", f"{o['ray']:.2f}", f"{o['ratio']:.3f}")
    console.print(t)
    if args.overhead_only:
        return

    storage = str(work / "runs")
    runs = {kind: protocol_cost(args.config, data, storage, kind, kind == "exhaustive")
            for kind in ("protocol", "exhaustive")}
    t = Table(title="(b) elimination efficiency on the demo (exhaustive = every experiment, 4 folds, full budget)")
    for col in ("", "samples processed", "resource-seconds", "wall s", "survivors", "winners"):
        t.add_column(col)
    p, x = runs["protocol"], runs["exhaustive"]
    p_samples = sum(r["samples"] for r in p["rounds"].values())
    p_res = sum(r["resource_s"] for r in p["rounds"].values())
    x_samples = x["rounds"].get("round2", {}).get("samples", 0)
    x_res = x["rounds"].get("round2", {}).get("resource_s", 0.0)
    t.add_row("protocol (R1 + R2)", str(p_samples), f"{p_res:.0f}", f"{p['wall']:.0f}", ", ".join(p["survivors"]),
              ", ".join(f"{k}={v}" for k, v in p["winners"].items()))
    t.add_row("exhaustive (R2, all)", str(x_samples), f"{x_res:.0f}", "-", ", ".join(x["survivors"]),
              ", ".join(f"{k}={v}" for k, v in x["winners"].items()))
    t.add_row("protocol / exhaustive", f"{p_samples / max(1, x_samples):.2f}", f"{p_res / max(1e-9, x_res):.2f}",
              "", "", "winners match" if p["winners"] == x["winners"] else "winners differ")
    console.print(t)
    console.print("(c) replay with injected noise: python benchmarks/scheduler_replay.py")


if __name__ == "__main__":
    main()
