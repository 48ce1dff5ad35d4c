"""``pianoray predict`` speed: time to the first prediction from a cold start, and MIDI segments per second.

For each symbolic model an artifact is exported as a run would export it (the mean of 4 fold models; random
weights, which cost what trained ones do) from the real PercePiano corpus (the demo corpus when the shared data
is absent). Then:

- cold start: ``pianoray predict --model M ONE.mid --json`` in a fresh process, wall time from launch to exit
  (imports, loading the 4 members, reading and featurising the file, the prediction): the median of 3;
- throughput: one process, the artifact loaded, ``predict_inputs`` on N PercePiano performance MIDI files never
  featurised before in that process (parse, features, 4 members over every window): segments per second.

Goals (issue #17): at most 10 s to the first prediction, at least 10 MIDI segments/s for a symbolic model, on the
2 CPUs of this machine. Timings are one run on a shared machine: read them as ratios to the goals.

    .venv/bin/python benchmarks/predict_bench.py            # S1 S2 S2H S3 symbolic-features, 120 files
    .venv/bin/python benchmarks/predict_bench.py --experiments S2 --files 60 --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOAL_COLD_S = 10.0
GOAL_RATE = 10.0
MEMBERS = 4


def export(experiment: str, out: Path) -> tuple[Path, list[Path]]:
    """An artifact of ``experiment`` over the corpus's folds 0-3 (random weights), and the corpus's MIDI files."""
    import torch

    from pianoray.config import load_config
    from pianoray.data.tiers import Tier
    from pianoray.inference.artifact import artifact_parts, fold_members, write_artifact
    from pianoray.settings import PROJECT_ROOT, shared_data_dir
    from pianoray.training.data import ExperimentData
    from pianoray.training.loop import build_model

    real = (shared_data_dir() / "percepiano").is_dir()
    yaml = PROJECT_ROOT / "experiments" / ("percepiano.yaml" if real else "demo.yaml")
    cfg = load_config(yaml, {"experiments": {"symbolic-gbm": {"model": {"max_iter": 50}}}})
    data = ExperimentData.from_config(cfg)
    states = {}
    for k in range(MEMBERS):
        torch.manual_seed(k)
        states[k] = build_model(cfg, experiment, data).state_dict()
    write_artifact(out, artifact_parts(cfg, experiment, data, fold_members(data, states)))
    t1 = data.corpus.manifest(Tier.T1)
    return out, [data.corpus.path(p) for p in t1["perf_midi"]]


def cold_start(model: Path, midi: Path, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "pianoray.cli", "predict", "--model", str(model), str(midi),
                               "--json"], capture_output=True, text=True)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            raise RuntimeError(proc.stderr)
    return statistics.median(times)


def throughput(model: Path, files: list[Path]) -> dict[str, float]:
    from pianoray.inference.artifact import ModelArtifact
    from pianoray.inference.predict import predict_inputs

    art = ModelArtifact.load(model)
    art.members()
    predict_inputs(art, files[:2], passage="warm-up")  # the first batch pays one-off costs (kernels, tokenizer)
    t0 = time.perf_counter()
    out = predict_inputs(art, files[2:], passage="p")
    wall = time.perf_counter() - t0
    return {"segments": len(out), "seconds": wall, "per_second": len(out) / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiments", nargs="+", default=["S1", "S2", "S2H", "S3", "symbolic-features"])
    ap.add_argument("--files", type=int, default=120, help="MIDI files for the throughput figure")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.experiments:
            model, files = export(name, Path(tmp) / name)
            cold = cold_start(model, files[0])
            rate = throughput(model, files[: args.files + 2])
            rows.append({"experiment": name, "members": MEMBERS, "cold_start_s": round(cold, 2),
                         "segments": rate["segments"], "segments_per_s": round(rate["per_second"], 1),
                         "cold_ok": cold <= GOAL_COLD_S, "rate_ok": rate["per_second"] >= GOAL_RATE})
    if args.json:
        print(json.dumps(rows))
        return
    print(f"{'experiment':<18} {'members':>7} {'first prediction s':>19} {'segments/s':>11}  "
          f"goals (<= {GOAL_COLD_S:.0f} s, >= {GOAL_RATE:.0f}/s)")
    for r in rows:
        ok = ("met" if r["cold_ok"] and r["rate_ok"] else
              "NOT met: " + ", ".join(w for w, k in (("first prediction", "cold_ok"), ("rate", "rate_ok")) if not r[k]))
        print(f"{r['experiment']:<18} {r['members']:>7} {r['cold_start_s']:>19.2f} {r['segments_per_s']:>11.1f}  {ok}")


if __name__ == "__main__":
    main()
