"""Data-parallel scaling on this CPU: training samples/s with 1 and W gloo workers, the share of a step spent
communicating, and the scaling efficiency ``pianoray plan`` reads (``benchmarks/throughput.json``,
``data_parallel``).

    python benchmarks/ddp_bench.py [--experiments audio-frozen A1 S3] [--workers 2] [--steps 30]
                                   [--seconds 600] [--json]

Method. The demo corpus (scale 0.3, ``--data`` to reuse one) and, for symbolic encoders, its feature cache
are made first. Then, per experiment and per worker count (1, then W), W processes are spawned
(``torch.multiprocessing``, a gloo process group, ``--threads`` torch threads each), each builds the
experiment's model as ``fit`` does and trains it on its shard of real Round-2 batches from
``ExperimentData.loader(..., rank=, world_size=)``: the GLOBAL batch is the config's ``batch_size`` for every
W, as in a Round-2 fold job. With W > 1 the model is wrapped in DDP (``find_unused_parameters``, as
``fold_worker`` wraps it); with one worker it is trained bare, as ``fit`` trains it, so the efficiency
includes DDP's own cost. Each step is ``loop.supervised_step`` (forward, multitask loss, backward, clip,
AdamW), timed alone: batches are loaded and sharded before the clock starts.

Figures, from median step times (the machine is shared: one descheduled step should not set a figure):
  samples/s    global samples of a step / its wall time (a step ends when the slowest rank ends it);
  efficiency   samples/s with W workers / (W x samples/s with 1 worker), both at ``--threads`` per worker;
  comm share   with W workers every timed step is followed by the same step inside ``ddp_model.no_sync()``
               (no gradient all-reduce), so ``(t_sync - t_nosync) / t_sync`` is the share of a step spent
               in communication that backward does not hide, plus waiting for the slower rank. DDP's
               broadcast of module buffers (e.g. A1's BatchNorm statistics) precedes every forward, in
               ``no_sync`` too, so it is in both times and not in the share.
All figures are ratios of times measured in the same run, interleaved, so machine load drifts out of them.

``--seconds`` caps the whole run (corpus, process start-up and the timed steps): each job gets an equal share
of what is left when it starts, and cuts its timed steps to fit after timing its warm-up (the table shows
the steps it ran). The defaults finish in a few minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DEMO_YAML = ROOT / "experiments" / "demo.yaml"
DEMO_SCALE = 0.3


# ------------------------------------------------------------------------------------------ one rank


def _batches(data: Any, cfg: Any, views: Any, batch_size: int, n: int, rank: int, world: int) -> list[Any]:
    """The first ``n`` of this rank's Round-2 training batches on fold 0, going round epochs as needed."""
    tiers = [t for t in cfg.round2.tiers if t in data.corpus.tiers]
    out: list[Any] = []
    epoch = 1
    while len(out) < n:
        before = len(out)
        for b in data.loader(0, "train", tiers, views, batch_size, epoch=epoch, seed=cfg.seed, rank=rank,
                             world_size=world):
            out.append(b)
            if len(out) == n:
                break
        if len(out) == before:
            raise SystemExit(f"no training batches on fold 0 (tiers {[t.name for t in tiers]})")
        epoch += 1
    return out


def _timed(fn: Any, *args: Any) -> float:
    """Wall seconds of ``fn(*args)``."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rank_main(rank: int, world: int, port: int, cfg_json: dict, experiment: str, steps: int, warmup: int,
              threads: int, deadline: float, out_dir: str) -> None:
    """One worker: build, shard, warm up, then time ``n <= steps`` steps (each followed, with W > 1, by the
    same step inside ``no_sync``). Writes ``rank<r>.json``: per-step seconds and samples."""
    import torch
    import torch.distributed as dist

    from pianoray.config import ProtocolConfig
    from pianoray.training.data import ExperimentData
    from pianoray.training.loop import build_model, param_groups, plan_stages, seed_everything, supervised_step

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        cfg = ProtocolConfig.model_validate(cfg_json)
        optim_cfg, loss_cfg = cfg.optim_for(experiment), cfg.loss_for(experiment)
        data = ExperimentData.from_config(cfg)
        dev = torch.device("cpu")
        seed_everything(cfg.seed)
        model = build_model(cfg, experiment, data)
        stage = next((s for s in plan_stages(model, cfg.round2.epochs) if s.select), None)
        terms = stage.terms if stage is not None else None
        model.encoder.on_epoch_start(0, cfg.round2.epochs)
        model.train()
        trained = model
        if world > 1:
            trained = torch.nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        optimizer = torch.optim.AdamW(param_groups(model, optim_cfg.lr), lr=optim_cfg.lr,
                                      weight_decay=optim_cfg.weight_decay)
        batches = _batches(data, cfg, model.encoder.views, optim_cfg.batch_size, warmup + steps, rank, world)

        def step(b: Any) -> None:
            supervised_step(trained, b, loss_cfg, terms, optimizer, None, optim_cfg.grad_clip, dev,
                            distributed=world > 1)

        def no_sync_step(b: Any) -> None:
            with trained.no_sync():
                step(b)

        warm = [_timed(step, b) for b in batches[:warmup]]
        # Every rank must time the same number of steps (DDP pairs their all-reduces): rank 0 decides.
        per_step = warm[-1] * (2 if world > 1 else 1)  # the last warm-up step: past lazy init
        n = torch.tensor([max(1, min(steps, int((deadline - time.time()) / per_step)))])
        dist.broadcast(n, src=0)
        timed = batches[warmup:warmup + int(n)]
        dist.barrier()
        sync_s, nosync_s = [], []
        for b in timed:
            sync_s.append(_timed(step, b))
            if world > 1:
                nosync_s.append(_timed(no_sync_step, b))
        record = {"samples": [b.size for b in timed], "sync_s": sync_s, "nosync_s": nosync_s,
                  "batch_size": optim_cfg.batch_size}
        Path(out_dir, f"rank{rank}.json").write_text(json.dumps(record))
    finally:
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the driver


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_job(cfg_json: dict, experiment: str, world: int, args: argparse.Namespace, deadline: float) -> dict:
    """Spawn ``world`` ranks for one experiment; combine their records step by step (see :func:`combine`)."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as out:
        mp.spawn(rank_main, nprocs=world, join=True,
                 args=(world, _free_port(), cfg_json, experiment, args.steps, args.warmup, args.threads, deadline,
                       out))
        records = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(world)]
    return combine(records)


def combine(records: list[dict]) -> dict:
    """Per-rank records of one job -> its figures. Step i's global samples are the ranks' sum; its time is the
    slowest rank's (the ranks of a synchronised step finish together; in ``no_sync`` the slower one sets the
    pace of the pair). ``comm_share`` is None with one worker (nothing to communicate)."""
    n = len(records[0]["sync_s"])
    samples = [sum(r["samples"][i] for r in records) for i in range(n)]
    sync = [max(r["sync_s"][i] for r in records) for i in range(n)]
    rate = statistics.median(s / t for s, t in zip(samples, sync, strict=True))
    share = None
    if records[0]["nosync_s"]:
        nosync = [max(r["nosync_s"][i] for r in records) for i in range(n)]
        share = 1.0 - statistics.median(nosync) / statistics.median(sync)
    return {"samples_per_s": rate, "step_ms": 1e3 * statistics.median(sync), "steps": n,
            "global_batch": records[0]["batch_size"], "comm_share": share}


def prepare(args: argparse.Namespace, root: Path) -> Any:
    """The demo config restricted to the benchmarked experiments, its corpus (at ``root``) and symbolic cache
    made."""
    from pianoray.config import load_config
    from pianoray.data.demo import generate_demo
    from pianoray.validation import prepare_data

    if not (root / "corpus.json").is_file():
        generate_demo(root, seed=0, scale=DEMO_SCALE)
    names = load_config(DEMO_YAML, check_models=False).experiments
    unknown = sorted(set(args.experiments) - set(names))
    if unknown:
        raise SystemExit(f"--experiments: {unknown} not in {DEMO_YAML.name} (has {sorted(names)})")
    cfg = load_config(DEMO_YAML, {"data": {"root": str(root)},
                                  "experiments": {n: {"enabled": n in args.experiments} for n in names}})
    prepare_data(cfg)  # the symbolic feature cache, when an experiment reads a symbolic view
    return cfg


def measure(args: argparse.Namespace, root: Path, say: Any) -> dict:
    """Every (experiment, worker count) job on the demo corpus at ``root`` within ``--seconds``; the figures
    as one JSON-able dict."""
    deadline = time.time() + args.seconds
    cfg = prepare(args, root)
    cfg_json = json.loads(cfg.model_dump_json())
    jobs = [(x, w) for x in args.experiments for w in (1, args.workers)]
    results: dict[str, dict] = {x: {} for x in args.experiments}
    for i, (x, w) in enumerate(jobs):
        budget = (deadline - time.time()) / (len(jobs) - i)
        if budget <= 0:
            raise SystemExit(f"--seconds {args.seconds:g} spent before {x} with {w} worker(s): raise it")
        say(f"{x}: {w} worker(s), up to {budget:.0f} s")
        results[x][str(w)] = run_job(cfg_json, x, w, args, time.time() + budget)
    w = str(args.workers)
    for r in results.values():
        r["efficiency"] = r[w]["samples_per_s"] / (args.workers * r["1"]["samples_per_s"])
    date = datetime.date.today().isoformat()
    lowest = min(results, key=lambda x: results[x]["efficiency"])
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": date,
        "workers": args.workers,
        "threads_per_worker": args.threads,
        "experiments": results,
        # Pasteable into throughput.json: the lowest efficiency measured, so the plan does not undercount.
        "data_parallel": {"cpu": {w: {"efficiency": round(results[lowest]["efficiency"], 3), "source": (
            f"measured: benchmarks/ddp_bench.py, {lowest} (the lowest of {', '.join(results)}), "
            f"{args.threads} thread(s) per worker, {os.cpu_count()} cores ({date})")}}},
    }


def render(out: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    w = str(out["workers"])
    table = Table(title=f"ddp_bench: demo corpus, gloo, {out['threads_per_worker']} torch thread(s) per worker, "
                        f"{out['machine']}")
    for col in ("experiment", "global batch", "workers", "steps", "step ms", "samples/s", "comm share",
                "efficiency"):
        table.add_column(col, justify="right")
    for x, r in out["experiments"].items():
        for workers in ("1", w):
            m = r[workers]
            table.add_row(x, str(m["global_batch"]), workers, str(m["steps"]), f"{m['step_ms']:.1f}",
                          f"{m['samples_per_s']:.1f}",
                          "-" if m["comm_share"] is None else f"{m['comm_share']:.0%}",
                          f"{r['efficiency']:.2f}" if workers == w else "-")
    Console(width=140).print(table)
    entry = out["data_parallel"]["cpu"][w]
    print(f"throughput.json data_parallel.cpu.{w}: efficiency {entry['efficiency']} ({entry['source']})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--experiments", nargs="+", default=["audio-frozen", "A1", "S3"])
    ap.add_argument("--workers", type=int, default=2, help="W, compared with 1 worker (default 2)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per worker (Ray gives a 1-CPU worker 1)")
    ap.add_argument("--steps", type=int, default=30, help="timed steps per job, at most (--seconds may cut them)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (allocator, lazy init)")
    ap.add_argument("--seconds", type=float, default=600, help="cap on the whole run, seconds")
    ap.add_argument("--data", default=None, help="a demo corpus folder to reuse (default: generated, scale 0.3)")
    ap.add_argument("--json", action="store_true", help="print the figures as one JSON object instead of a table")
    args = ap.parse_args()
    if args.workers < 2 or args.steps < 1 or args.warmup < 1 or args.threads < 1:
        raise SystemExit("--workers must be >= 2, --steps, --warmup and --threads >= 1")
    def say(line: str) -> None:
        print(line, file=sys.stderr)

    if args.data:
        out = measure(args, Path(args.data), say)
    else:
        with tempfile.TemporaryDirectory(prefix="ddp_bench-") as tmp:
            out = measure(args, Path(tmp) / "demo", say)
    if args.json:
        print(json.dumps(out))
    else:
        render(out)


if __name__ == "__main__":
    main()
