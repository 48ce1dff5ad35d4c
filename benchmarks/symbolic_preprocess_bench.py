"""Symbolic preprocessing benchmark: every real MIDI -> REMI ids, graphs, hetero graphs, curves.

Inputs (via PIANORAY_SHARED_DATA / ``pianoray.settings.shared_data_dir()``): PercePiano
``percepiano/all_2rounds/*.mid`` and ``percepiano/score_midi/*.mid``, and ASAP ``asap/**/*.mid``.
Cold = a fresh cache folder (all files computed); warm = the same call again (hash + lookup only), then
reading every entry of each kind back. Targets: cold <= 150 s and warm <= 5 s on 2 cores.

    python benchmarks/symbolic_preprocess_bench.py [--workers N] [--out DIR] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from pianoray.data.symbolic.cache import FEATURE_KINDS, SymbolicCache, build_symbolic_cache
from pianoray.settings import shared_data_dir
from pianoray.terminal import RichFeedback


def real_midi_files(root: Path) -> list[Path]:
    files = sorted((root / "percepiano" / "all_2rounds").glob("*.mid"))
    files += sorted((root / "percepiano" / "score_midi").glob("*.mid"))
    files += sorted((root / "asap").rglob("*.mid"))
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", type=Path, default=None, help="cache folder (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the cache folder")
    args = parser.parse_args()
    console = Console()

    root = shared_data_dir()
    files = real_midi_files(root)
    if not files:
        raise SystemExit(f"no MIDI files under {root} (set PIANORAY_SHARED_DATA)")
    out = args.out or Path(tempfile.mkdtemp(prefix="pianoray-symbolic-bench-"))
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; the cold run needs a fresh folder")
    console.print(f"{len(files)} MIDI files under {root}; cache {out}; {args.workers} workers")

    try:
        cold = build_symbolic_cache(files, out, workers=args.workers, feedback=RichFeedback(console))
        warm = build_symbolic_cache(files, out, workers=args.workers)
        cache = SymbolicCache(out)
        shas = sorted(set(cold.sha_by_path.values()))
        read_s: dict[str, float] = {}
        for kind in FEATURE_KINDS:
            t = time.perf_counter()
            for sha in shas:
                cache.get_arrays(sha, kind)
            read_s[kind] = time.perf_counter() - t
    finally:
        if not args.keep and args.out is None:
            shutil.rmtree(out, ignore_errors=True)

    n = cold.notes_computed
    table = Table(title=f"symbolic preprocessing: {cold.computed} files, {n:,} notes, {args.workers} workers")
    table.add_column("stage")
    table.add_column("cold notes/s (per core)", justify="right")
    table.add_column("cold core-s", justify="right")
    table.add_column("warm read notes/s", justify="right")
    table.add_column("warm read s", justify="right")
    for kind in ("load", *FEATURE_KINDS):
        s = cold.seconds_by_kind[kind]
        table.add_row(
            kind,
            f"{n / s:,.0f}" if s else "-",
            f"{s:.1f}",
            f"{n / read_s[kind]:,.0f}" if kind in read_s else "-",
            f"{read_s[kind]:.2f}" if kind in read_s else "-",
        )
    table.add_row(
        "build (wall)", f"{n / cold.seconds:,.0f} (all cores)", f"{cold.seconds:.1f} wall",
        f"warm build {warm.seconds:.2f} s", f"{warm.reused} reused / {warm.computed} redone",
    )
    console.print(table)
    console.print(
        f"cold {cold.seconds:.1f} s (target <= 150), warm {warm.seconds:.2f} s (target <= 5); "
        f"{len(cold.failed)} files failed"
    )
    for path, reason in cold.failed:
        console.print(f"  failed: {reason}")


if __name__ == "__main__":
    main()
