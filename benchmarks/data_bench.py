"""Data-layer benchmark: demo generation time, loading throughput over memory-mapped frames, and peak RSS
while iterating corpora 1x and 10x the default size (it must stay flat: frames are mapped, not loaded).

    /work/venv/bin/python benchmarks/data_bench.py [--scales 1 10] [--out DIR]

Each RSS measurement runs in a fresh subprocess (``--iterate ROOT``) so that one measurement's pages
do not inflate the next. Prints a rich table; takes ~1-2 minutes on 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _hwm_mb() -> float:
    """Peak resident set of this process image in MB. /proc's VmHWM, not getrusage's ru_maxrss: the
    latter survives exec, so a child would report its parent's peak (the 10x generation)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # non-Linux fallback


def _status_mb(key: str) -> float:
    """A /proc/self/status field in MB (0 where unavailable)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def iterate(root: str, batch_size: int = 32) -> dict:
    """One training epoch over every tier (frames view) of the corpus at ``root``; returns timings and RSS."""
    import numpy as np

    from pianoray.config import DataConfig
    from pianoray.data.corpus import open_corpus
    from pianoray.data.loaders import build_split, make_loader
    from pianoray.data.tiers import Tier

    rss0 = _hwm_mb()
    anon0 = _status_mb("RssAnon")
    corpus = open_corpus(DataConfig(root=Path(root)))
    names, labels = corpus.labels("percepiano19")
    keys = corpus.manifest(Tier.T1)["segment_id"].tolist()
    fold = {"train": keys, "val": [], "test": []}
    ds = build_split(corpus, fold, "train", tiers=list(Tier), views=["frames"], labels=labels)
    t0 = time.perf_counter()
    n = 0
    for batch in make_loader(ds, batch_size=batch_size, shuffle=True, seed=0):
        n += batch.size
    loader_s = time.perf_counter() - t0
    # Raw reads straight from the frame stores (no collation): the memory-mapped read path alone.
    t0 = time.perf_counter()
    m = 0
    for tier in corpus.tiers:
        for row in corpus.manifest(tier).to_dict("records"):
            np.asarray(corpus.frames(tier, row), dtype=np.float32).sum()
            m += 1
    raw_s = time.perf_counter() - t0
    frames = sum(int(corpus.manifest(t)["n_frames"].sum()) for t in corpus.tiers)
    return {
        "samples": n, "loader_s": loader_s, "raw_segments": m, "raw_s": raw_s, "frames": frames,
        "rss_start_mb": rss0, "rss_peak_mb": _hwm_mb(),
        # Mapped shard pages count as RSS but are page cache (clean, evictable); anonymous memory is
        # what the process really owns: manifests and row dicts, proportional to segments, not frames.
        "anon_growth_mb": _status_mb("RssAnon") - anon0, "file_mb": _status_mb("RssFile"),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scales", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--out", type=Path, default=None, help="where to generate (default: a temporary folder)")
    ap.add_argument("--iterate", type=str, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.iterate:
        print(json.dumps(iterate(args.iterate)))
        return

    from rich.console import Console
    from rich.table import Table

    from pianoray.data.demo import generate_demo

    console = Console(width=150)
    tmp = tempfile.TemporaryDirectory(prefix="pianoray-bench-")
    base = args.out or Path(tmp.name)
    rows = []
    for scale in args.scales:
        root = base / f"demo-x{scale:g}"
        t0 = time.perf_counter()
        with console.status(f"generating the demo at scale {scale:g}"):
            generate_demo(root, seed=0, scale=scale)
        gen_s = time.perf_counter() - t0
        size_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
        with console.status(f"iterating scale {scale:g} in a subprocess"):
            out = subprocess.run([sys.executable, __file__, "--iterate", str(root)], check=True,
                                 capture_output=True, text=True)
        rows.append((scale, gen_s, size_mb, json.loads(out.stdout.strip().splitlines()[-1])))

    table = Table(title="pianoray data layer (demo corpus, frames view, batch 32, 1 process)")
    for col in ("scale", "generate s", "on disk MB", "frames", "loader samples/s", "raw segments/s",
                "RSS before MB", "peak RSS MB", "RSS growth MB", "anon growth MB", "file-backed MB"):
        table.add_column(col, justify="right")
    for scale, gen_s, size_mb, r in rows:
        table.add_row(f"{scale:g}", f"{gen_s:.1f}", f"{size_mb:.0f}", f"{r['frames']:,}",
                      f"{r['samples'] / r['loader_s']:.0f}", f"{r['raw_segments'] / r['raw_s']:.0f}",
                      f"{r['rss_start_mb']:.0f}", f"{r['rss_peak_mb']:.0f}",
                      f"{r['rss_peak_mb'] - r['rss_start_mb']:.0f}", f"{r['anon_growth_mb']:.0f}",
                      f"{r['file_mb']:.0f}")
    console.print(table)
    if len(rows) >= 2:
        (s0, _, d0, r0), (s1, _, d1, r1) = rows[0], rows[-1]
        growth = (r1["rss_peak_mb"] - r1["rss_start_mb"]) - (r0["rss_peak_mb"] - r0["rss_start_mb"])
        anon = r1["anon_growth_mb"] - r0["anon_growth_mb"]
        console.print(f"corpus x{s1 / s0:g} on disk ({d0:.0f} -> {d1:.0f} MB): peak RSS +{growth:.0f} MB, of which "
                      f"anonymous (owned) memory +{anon:.0f} MB; the rest is mapped shard pages (page cache)")
    tmp.cleanup()


if __name__ == "__main__":
    main()
