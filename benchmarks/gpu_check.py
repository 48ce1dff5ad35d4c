"""One command for a GPU machine: the protocol's CUDA path, once, within a time limit.

    python benchmarks/gpu_check.py [--batch 16 64] [--frames 250] [--steps 20] [--json out.json]
                                   [--time-limit 540] [--smoke-cpu]

1. Step throughput: A1 and A3 at full MuQ width, bf16 autocast: samples/s and MFU. MFU = achieved FLOP/s /
   the GPU's dense bf16 peak; FLOPs per step (forward + backward) are counted once with
   ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; elementwise work is not counted,
   as is usual for MFU).
2. A Round-2 fold job as the protocol runs it: a Ray Train ``TorchTrainer`` (NCCL) running
   ``protocol.trials.fold_worker``: ``fit`` of A3 at full width (bf16 autocast) on a generated corpus of
   1024-wide frames, checkpoints, then the best checkpoint's test score on the worker; world size 1, and 2
   (DDP) only where the machine has 2+ GPUs (otherwise it says why it skipped).

On a machine without CUDA it says so and exits 0. ``--smoke-cpu`` runs part 2 on CPU instead (gloo, the
demo's width, 1 and 2 workers): a rehearsal of this script's own code path, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path

# Dense bf16 peak TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
N_DIMS = 19
FULL_TAIL = {"width": 1024, "heads": 16, "ffn": 4096, "kernel": 31}


def _out_of_time(signum: int, frame: object) -> None:
    raise SystemExit("gpu_check: time limit reached (--time-limit); results so far are above")


def peak_tflops(name: str, override: float | None) -> float | None:
    if override:
        return override
    # "H100 PCIe" has a lower peak (756); SXM/NVL parts are 989.
    if "H100" in name and "PCIe" in name:
        return 756.0
    return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)


def measure(experiment: str, batch_size: int, frames: int, steps: int, peak: float | None) -> dict:
    import torch
    from benchmarks_batch import synthetic_batch
    from torch.utils.flop_counter import FlopCounterMode

    import pianoray.models.audio  # noqa: F401  (registers A1-A3)
    from pianoray.models import registry
    from pianoray.models.contract import PerformanceModel

    spec = registry.get(experiment)
    cfg = spec.config_cls.model_validate({"tail": FULL_TAIL, **({"lora": {"rank": 16}} if experiment != "A3" else {})})
    torch.manual_seed(0)
    model = PerformanceModel(spec.build(cfg, registry.DataSpec(n_dims=N_DIMS, frame_width=1024)), N_DIMS).cuda()
    model.encoder.on_epoch_start(10**6, 10**6)  # A3 fully unfrozen
    groups = model.encoder.param_groups(1e-4)
    groups.append({"params": [*model.ranking.parameters(), *model.regression.parameters()], "lr": 1e-4})
    opt = torch.optim.AdamW(groups, fused=True)
    batch = synthetic_batch(batch_size, frames, 1024, N_DIMS, device="cuda")
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch)
        loss = torch.nn.functional.mse_loss(out.regression.float(), batch.labels)
        loss.backward()
        opt.step()

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    flops = counter.get_total_flops()
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    achieved = flops / dt / 1e12
    return {
        "experiment": experiment,
        "batch": batch_size,
        "frames": frames,
        "step_ms": dt * 1e3,
        "samples_per_s": batch_size / dt,
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": achieved,
        "mfu": achieved / peak if peak else None,
        "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30,
        "trainable": sum(p.numel() for p in model.encoder.parameters() if p.requires_grad),
    }


def fold_job(workers: int, gpu: bool, root: str, storage: str) -> dict:
    """One Round-2 fold job of A3 through Ray Train, as ``fold_trainable`` starts it (without Tune): wall
    seconds, epochs, the test score the rank-0 worker reported, and training samples/s over the job."""
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    from pianoray.config import load_config
    from pianoray.protocol.run import config_dict
    from pianoray.protocol.trials import fold_worker
    from pianoray.settings import PROJECT_ROOT

    tail = FULL_TAIL if gpu else {}
    experiments = {n: {"enabled": n == "A3"} for n in load_config(PROJECT_ROOT / "experiments" / "demo.yaml",
                                                                    check_models=False).experiments}
    experiments["A3"] = {"enabled": True, **({"model": {"tail": tail}} if tail else {})}
    cfg = load_config(PROJECT_ROOT / "experiments" / "demo.yaml", {
        "data": {"root": root, "max_frames": 250 if gpu else 32},
        "optim": {"batch_size": 16},
        "experiments": experiments,
        "resources": {"cpu": 1.0, "gpu": 1.0 if gpu else 0.0},
        "round2": {"epochs": 2, "patience": 2},
    })
    from ray.train import UserCallback

    class FinalReport(UserCallback):
        """Keeps the job's last report (the test score): Ray Train's Result holds checkpointed metrics only."""

        def after_report(self, run_context, metrics, checkpoint) -> None:  # runs in the Train controller
            if metrics and metrics[0].get("final"):
                Path(final_file).write_text(json.dumps(metrics[0]))

    final_file = f"{storage}/final-w{workers}.json"
    Path(storage).mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    TorchTrainer(
        fold_worker,
        train_loop_config={"protocol": config_dict(cfg), "experiment": "A3", "folds": [0]},
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu,
                                               resources_per_worker={"CPU": 1.0, **({"GPU": 1.0} if gpu else {})}),
        run_config=ray.train.RunConfig(name=f"gpu-check-fold-w{workers}", storage_path=storage,
                                       callbacks=[FinalReport()]),
    ).fit()
    seconds = time.perf_counter() - t0
    if not Path(final_file).is_file():
        raise RuntimeError(f"fold job with {workers} worker(s): the job ended without reporting a test score")
    final = json.loads(Path(final_file).read_text())
    return {"workers": workers, "backend": "nccl" if gpu else "gloo", "seconds": seconds,
            "test_pairwise": final.get("test/pairwise_accuracy"), "test_r2": final.get("test/r2")}


def fold_jobs(gpu: bool) -> list[dict]:
    """Part 2: the fold job at world size 1, and 2 where two devices exist."""
    import tempfile

    import ray
    import torch

    from pianoray.data.demo import generate_demo
    from pianoray.protocol.session import start_ray

    n_devices = torch.cuda.device_count() if gpu else 2
    tmp = tempfile.mkdtemp(prefix="pianoray-gpu-check-")
    root = str(generate_demo(f"{tmp}/corpus", seed=0, scale=0.3, max_frames=256 if gpu else 64,
                             width=1024 if gpu else 128))
    start_ray(None, dashboard=False)
    out = []
    try:
        for workers in (1, 2):
            if workers > n_devices:
                print(f"fold job with {workers} workers: skipped, this machine has {n_devices} GPU(s) "
                      "(the DDP case needs one GPU per worker)", flush=True)
                continue
            r = fold_job(workers, gpu, root, f"{tmp}/runs")
            out.append(r)
            print(f"fold job, {workers} worker(s) over {r['backend']}: {r['seconds']:.1f} s for 2 epochs + test "
                  f"scoring; test pairwise {r['test_pairwise']:.3f}, R2 {r['test_r2']:.3f}", flush=True)
    finally:
        ray.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--time-limit", type=int, default=540, help="seconds; the check stops itself after")
    parser.add_argument("--smoke-cpu", action="store_true", help="rehearse part 2 on CPU (gloo); no measurement")
    args = parser.parse_args()
    signal.signal(signal.SIGALRM, _out_of_time)
    signal.alarm(args.time_limit)

    import torch

    if args.smoke_cpu:
        jobs = fold_jobs(gpu=False)
        print(json.dumps({"smoke_cpu": jobs}))
        return 0
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; this check needs a GPU (run it on the GPU machine). Nothing done.")
        return 0
    logging.disable(logging.WARNING)  # random-init warnings: weights do not matter for throughput
    torch.backends.cuda.matmul.allow_tf32 = True
    name = torch.cuda.get_device_name()
    peak = peak_tflops(name, args.peak_tflops)
    results = []
    for experiment in ("A1", "A3"):
        for batch_size in args.batch:
            r = measure(experiment, batch_size, args.frames, args.steps, peak)
            results.append(r)
            mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (unknown peak; --peak-tflops)"
            print(
                f"{experiment} B={batch_size} T={args.frames}: {r['samples_per_s']:.1f} samples/s, "
                f"{r['step_ms']:.1f} ms/step, {r['tflop_per_step']:.3f} TFLOP/step, "
                f"{r['achieved_tflops']:.1f} TFLOP/s, MFU {mfu}, peak mem {r['peak_mem_gb']:.1f} GB",
                flush=True,
            )
    summary = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "results": results,
               "fold_jobs": fold_jobs(gpu=True)}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
