"""Protocol benchmark on the demo corpus.

(a) Overhead: the same experiment and epochs in-process (the `pianoray train --out` path: a checkpoint per
    epoch into a local top-k folder) and as a Ray Tune trial (the Round-1 trainable, 1 CPU, so Ray sets 1
    thread; in-process also uses 1 torch thread; a checkpoint per epoch reported to Tune, which copies it into
    the run's storage), as seconds per epoch measured between the first and last epoch reports (Ray start-up
    excluded), and their ratio: what Ray adds per epoch, reporting and checkpoint persistence.
(a) Protocol compute against the exhaustive alternative: the protocol (Round 1 with its search and rung stops,
    Round 2 on the survivors' best configurations, early stopping) and the same config run with nothing
    eliminated, every configuration promoted and no early stopping (every configuration x all folds x the full
    budget), both executed; in samples processed and resource-seconds, and whether the winners (as
    configurations) match. The goal is at most 0.5.
(b) The Round-1 saving from rung stops alone: the protocol's Round 1 against the exhaustive run's, in which
    every configuration trains to the end of Round 1.
Replay: see benchmarks/scheduler_replay.py (the noise guard's wrong-elimination rate).

    python benchmarks/protocol_bench.py [--overhead-only | --skip-overhead] [--experiment audio-frozen] [--epochs 8]
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
    """One run of the config, measured from its ledger: per round, samples processed (epoch events) and
    resource-seconds (resources held x wall time); its survivors and winners, each winner also as the
    configuration it stands for (a searched experiment's Round-2 name stands for its best configuration).

    ``exhaustive``: the same config with nothing eliminated (gap 1000), every configuration of a searched
    experiment promoted (``round2.configs_per_experiment``), and Round 2 without early stopping (patience =
    its budget): every configuration x all folds x the full budget."""
    import ray

    from pianoray.config import load_config
    from pianoray.protocol.ledger import Ledger
    from pianoray.protocol.run import run_protocol
    from pianoray.protocol.storage import RunStorage

    over: dict = {"data": {"root": data}, "name": name}
    cfg = load_config(cfg_path, over)
    if exhaustive:
        most = max((e.search.configs for e in cfg.experiments.values() if e.search), default=1)
        over["round1"] = {"gap": 1000.0}
        over["round2"] = {"configs_per_experiment": most, "patience": cfg.round2.epochs}
        cfg = load_config(cfg_path, over)
    t0 = time.perf_counter()
    results = run_protocol(cfg, storage=storage, name=name, fresh=True, feedback=None)
    wall = time.perf_counter() - t0
    ray.shutdown()
    ledger = Ledger(RunStorage(storage, name))
    by_round: dict[str, dict[str, float]] = {}
    for e in ledger.epochs():
        r = by_round.setdefault(e.round, {"samples": 0, "resource_s": 0.0})
        r["samples"] += int(e.data.metrics.get("samples", 0))
    for rec in ledger.resource_records():
        by_round.setdefault(rec.round, {"samples": 0, "resource_s": 0.0})["resource_s"] += rec.amount_hours * 3600
    stands_for = {u: c for x in results["experiments"] if x.get("search") for u, c in x["search"]["promoted"].items()}
    survivors = [e["name"] for e in results["experiments"] if e["furthest_round"] == "round2"]
    winners = {t: stands_for.get(w, w) for t, w in results["winners"].items()}
    stops = sum(1 for d in results["decisions"] if d["decision"] == "stop")
    return {"wall": wall, "rounds": by_round, "survivors": survivors, "winners": winners, "stops": stops}


def _total(run: dict, key: str) -> float:
    return sum(r[key] for r in run["rounds"].values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, default=DEMO)
    ap.add_argument("--experiment", default="audio-frozen")
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--overhead-only", action="store_true")
    ap.add_argument("--skip-overhead", action="store_true")
    args = ap.parse_args()
    console = Console()
    from pianoray.config import load_config
    from pianoray.data.demo import generate_demo

    demo = load_config(args.config).data.demo
    work = Path(tempfile.mkdtemp(prefix="protocol-bench-"))
    data = str(generate_demo(work / "demo", seed=demo.seed if demo else 0, scale=demo.scale if demo else 1.0))
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    if not args.skip_overhead:
        o = overhead(args.config, data, args.experiment, args.epochs)
        t = Table(title=f"overhead: {args.experiment}, {args.epochs} epochs, 1 thread, Ray start-up excluded")
        for col in ("in-process s/epoch", "Tune trial s/epoch", "ratio (target <= 1.10)"):
            t.add_column(col, justify="right")
        t.add_row(f"{o['inproc']:.2f}", f"{o['ray']:.2f}", f"{o['ratio']:.3f}")
        console.print(t)
    if args.overhead_only:
        return

    storage = str(work / "runs")
    runs = {kind: protocol_cost(args.config, data, storage, kind, kind == "exhaustive")
            for kind in ("protocol", "exhaustive")}
    p, x = runs["protocol"], runs["exhaustive"]
    t = Table(title="(a) the protocol against the exhaustive alternative (every configuration x all folds x the "
                    "full budget), both executed")
    for col in ("", "samples processed", "resource-seconds", "wall s", "stops", "Round-2 names", "winners"):
        t.add_column(col)
    for label, run in (("protocol (R1 + R2)", p), ("exhaustive (R1 without stops + R2 of all)", x)):
        t.add_row(label, str(int(_total(run, "samples"))), f"{_total(run, 'resource_s'):.0f}", f"{run['wall']:.0f}",
                  str(run["stops"]), str(len(run["survivors"])),
                  ", ".join(f"{k}={v}" for k, v in run["winners"].items()))
    t.add_row("protocol / exhaustive (goal <= 0.5)",
              f"{_total(p, 'samples') / max(1, _total(x, 'samples')):.2f}",
              f"{_total(p, 'resource_s') / max(1e-9, _total(x, 'resource_s')):.2f}", "", "", "",
              "winners match" if p["winners"] == x["winners"] else "winners differ")
    console.print(t)
    r1p, r1x = p["rounds"].get("round1", {}), x["rounds"].get("round1", {})
    t = Table(title="(b) Round 1: the saving from rung stops alone (exhaustive: every configuration to the end of "
                    "Round 1, executed)")
    for col in ("", "samples processed", "resource-seconds"):
        t.add_column(col)
    t.add_row("protocol Round 1", str(int(r1p.get("samples", 0))), f"{r1p.get('resource_s', 0.0):.0f}")
    t.add_row("no stops", str(int(r1x.get("samples", 0))), f"{r1x.get('resource_s', 0.0):.0f}")
    t.add_row("protocol / no stops", f"{r1p.get('samples', 0) / max(1, r1x.get('samples', 0)):.2f}",
              f"{r1p.get('resource_s', 0.0) / max(1e-9, r1x.get('resource_s', 0.0)):.2f}")
    console.print(t)
    console.print("Winners are compared as configurations (a searched experiment's Round-2 name stands for the "
                  "configuration Round 1 chose). Replay with injected noise: python benchmarks/scheduler_replay.py")


if __name__ == "__main__":
    main()
