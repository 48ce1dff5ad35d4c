"""CPU throughput and memory of the audio track: frozen probe, A1, A2, A3, at demo and full MuQ width.

Each configuration runs in its own subprocess so that its peak RSS is its own. One training step is
forward + backward + AdamW on the regression head's MSE (19 dims), through the encoder's own
``param_groups``; A3 is measured with every tail layer unfrozen (its most expensive epoch).

    /work/venv/bin/python benchmarks/audio_bench.py            # demo + full width (full is slow on CPU)
    /work/venv/bin/python benchmarks/audio_bench.py --demo-only
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import time

SCALES = {
    # name: (tail config overrides, frames T, batch, timed steps, warm-up steps)
    "demo": ({"width": 128, "heads": 4, "ffn": 256, "kernel": 7}, 64, 16, 15, 3),
    "full": ({"width": 1024, "heads": 16, "ffn": 4096, "kernel": 31}, 250, 16, 2, 1),
}
EXPERIMENTS = ("audio-frozen", "A1", "A2", "A3")
N_DIMS = 19


def build(experiment: str, tail: dict, width: int):
    import pianoray.models.audio  # noqa: F401  (registers A1-A3 until the lead adds it to BUILTIN_MODULES)
    import pianoray.models.baselines  # noqa: F401
    from pianoray.models import registry

    spec = registry.get(experiment)
    model_cfg = {} if experiment == "audio-frozen" else {"tail": tail}
    if experiment in ("A1", "A2"):
        model_cfg["lora"] = {"rank": 16}
    cfg = spec.config_cls.model_validate(model_cfg)
    return spec.build(cfg, registry.DataSpec(n_dims=N_DIMS, frame_width=width))


def run_one(experiment: str, scale: str) -> dict:
    import torch
    from benchmarks_batch import synthetic_batch  # noqa: E402  (sibling module, see below)

    from pianoray.models.contract import PerformanceModel

    logging.disable(logging.WARNING)  # the random-init warning, once per config, is expected here
    torch.manual_seed(0)
    tail, t_frames, batch_size, steps, warmup = SCALES[scale]
    model = PerformanceModel(build(experiment, tail, tail["width"]), N_DIMS)
    model.encoder.on_epoch_start(10**6, 10**6)  # A3: every layer unfrozen; a no-op for the others
    groups = model.encoder.param_groups(1e-4)
    groups.append({"params": [*model.ranking.parameters(), *model.regression.parameters()], "lr": 1e-4})
    opt = torch.optim.AdamW(groups)
    batch = synthetic_batch(batch_size, t_frames, tail["width"], N_DIMS)
    model.train()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.mse_loss(model(batch).regression, batch.labels)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    # the median step: the machine is shared, and one descheduled step should not set the figure
    median = sorted(times)[len(times) // 2]
    trainable = sum(p.numel() for p in model.encoder.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.encoder.parameters())
    return {
        "experiment": experiment,
        "scale": scale,
        "width": tail["width"],
        "frames": t_frames,
        "batch": batch_size,
        "steps": steps,
        "samples_per_s": batch_size / median,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "trainable": trainable,
        "total": total,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--demo-only", action="store_true")
    parser.add_argument("--one", nargs=2, metavar=("EXPERIMENT", "SCALE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(*args.one)))
        return

    from rich.console import Console
    from rich.table import Table

    rows = []
    for scale in ("demo",) if args.demo_only else ("demo", "full"):
        for experiment in EXPERIMENTS:
            proc = subprocess.run(
                [sys.executable, __file__, "--one", experiment, scale], capture_output=True, text=True
            )
            if proc.returncode != 0:
                raise SystemExit(f"{experiment} @ {scale} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"done {experiment} @ {scale}", file=sys.stderr)
    table = Table(title="audio track, CPU, fp32, forward + backward + AdamW, median step (one subprocess per row)")
    for col in ("experiment", "scale", "W x T x B", "samples/s", "peak RSS", "trainable", "of encoder", "%"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            r["experiment"],
            r["scale"],
            f"{r['width']}x{r['frames']}x{r['batch']}",
            f"{r['samples_per_s']:.2f}",
            f"{r['peak_rss_gb']:.2f} GB",
            f"{r['trainable']:,}",
            f"{r['total']:,}",
            f"{100 * r['trainable'] / r['total']:.2f}",
        )
    Console(width=140).print(table)
    print(f"torch threads per run: {rows[0]['threads']}")


if __name__ == "__main__":
    sys.path.insert(0, __import__("os").path.dirname(__file__))
    main()
