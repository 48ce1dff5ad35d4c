"""One command for a GPU machine: A1 and A3 at full MuQ width, bf16 autocast: samples/s and MFU.

    python benchmarks/gpu_check.py [--batch 16] [--frames 250] [--steps 20] [--json out.json]

MFU = achieved FLOP/s / the GPU's dense bf16 peak. FLOPs per step (forward + backward) are counted once
with ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and convolutions; elementwise work is not
counted, as is usual for MFU). On a machine without CUDA it says so and exits 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

# Dense bf16 peak TFLOP/s (no sparsity), by a substring of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "L4": 121.0}
N_DIMS = 19
FULL_TAIL = {"width": 1024, "heads": 16, "ffn": 4096, "kernel": 31}


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--frames", type=int, default=250)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    import torch

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
    summary = {"device": name, "peak_bf16_tflops": peak, "torch": torch.__version__, "results": results}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
