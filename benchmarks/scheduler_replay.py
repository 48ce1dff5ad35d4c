"""Replay the Round-1 elimination rule on synthetic learning curves: how often does it kill a contender?

Each seed draws 7 experiments (audio: 3 candidates, symbolic: 4) with true validation pairwise-accuracy
curves ``a + b * (1 - exp(-t / tau))``. At each rung the trials still alive are "evaluated" on the same
validation pairs (P pairs in G passages): pair correctness ~ Bernoulli(true(t) + passage effect shared by
all models + a model-specific passage effect), so the observed metric is noisy the way a finite,
passage-clustered validation set is. The sync rule (``pianoray.protocol.decisions.judge_rung``) then
stops trials exactly as the TrackGapScheduler would.

A **wrong elimination** is stopping an experiment whose FINAL true metric is within ``gap`` points of its
track's best final true metric (it should have survived Round 1). Rows:

- ``oracle``: the rule on noise-free metrics (errors come only from curves crossing after a rung),
- ``point``: the rule on the noisy metric,
- ``noise guard``: stop only when the 95% paired-bootstrap CI of the gap lies above ``gap``.

Also shown: how many truly-hopeless experiments were stopped (power) and the epochs saved. No Ray.

    python benchmarks/scheduler_replay.py [--seeds 200] [--n-boot 500] [--gap 10]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from rich.console import Console
from rich.table import Table

from pianoray.protocol.decisions import RungEntry, judge_rung

TRACKS = {"audio": ["A1", "A2", "A3"], "symbolic": ["S1", "S2", "S3", "S2H"]}


@dataclass(frozen=True)
class Curve:
    a: float
    b: float
    tau: float

    def at(self, t: float) -> float:
        return self.a + self.b * (1.0 - np.exp(-t / self.tau))


@dataclass
class Outcome:
    wrong: int = 0  # contenders stopped
    contenders: int = 0
    hopeless_stopped: int = 0  # experiments truly > gap behind that were stopped
    hopeless: int = 0
    epochs_run: int = 0
    epochs_budget: int = 0
    seeds_with_wrong: int = 0


def draw_curves(rng: np.random.Generator) -> dict[str, Curve]:
    return {
        name: Curve(a=rng.uniform(0.50, 0.62), b=rng.uniform(0.05, 0.32), tau=rng.uniform(3.0, 20.0))
        for names in TRACKS.values()
        for name in names
    }


def evaluate(
    curves: dict[str, Curve], alive: list[str], t: int, n_groups: int, per_group: int, noisy: bool,
    rng: np.random.Generator,
) -> list[RungEntry]:
    """Rung entries of the alive experiments at epoch t, with per-pair vectors on shared pairs."""
    groups = np.repeat(np.arange(n_groups), per_group)
    shared = rng.normal(0.0, 0.10, n_groups)  # some passages are hard for every model
    entries = []
    for name in alive:
        track = next(k for k, v in TRACKS.items() if name in v)
        truth = curves[name].at(t)
        if not noisy:
            entries.append(RungEntry(name, name, track, "candidate", float(truth)))
            continue
        own = rng.normal(0.0, 0.06, n_groups)
        p = np.clip(truth + shared[groups] + own[groups], 0.0, 1.0)
        correct = (rng.random(p.size) < p).astype(np.float64)
        entries.append(RungEntry(name, name, track, "candidate", float(correct.mean()), correct, groups))
    return entries


def replay(
    *, seeds: int, rungs: list[int], epochs: int, gap: float, n_groups: int, per_group: int, noisy: bool,
    noise_guard: bool, n_boot: int,
) -> Outcome:
    out = Outcome()
    for seed in range(seeds):
        curve_rng = np.random.default_rng(seed)  # same curves for every row: rows differ only in the rule
        noise_rng = np.random.default_rng(10_000 + seed)
        curves = draw_curves(curve_rng)
        alive = [n for names in TRACKS.values() for n in names]
        stopped_at: dict[str, int] = {}
        for rung in rungs:
            entries = evaluate(curves, alive, rung, n_groups, per_group, noisy, noise_rng)
            decisions, _ = judge_rung(entries, rung=rung, gap=gap, noise_guard=noise_guard, n_boot=n_boot, seed=seed)
            for d in decisions:
                if d.stopped:
                    stopped_at[d.experiment] = rung
            alive = [n for n in alive if n not in stopped_at]
        any_wrong = False
        for names in TRACKS.values():
            final = {n: curves[n].at(epochs) for n in names}
            best = max(final.values())
            for n in names:
                contender = (best - final[n]) * 100.0 <= gap
                out.contenders += contender
                out.hopeless += not contender
                if n in stopped_at:
                    out.wrong += contender
                    any_wrong |= contender
                    out.hopeless_stopped += not contender
                out.epochs_run += stopped_at.get(n, epochs)
                out.epochs_budget += epochs
        out.seeds_with_wrong += any_wrong
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--n-boot", type=int, default=500)
    parser.add_argument("--gap", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--rungs", type=int, nargs="+", default=[10, 25])
    args = parser.parse_args()
    console = Console(width=max(Console().width, 130))
    table = Table(title=f"Round-1 rule replay: {args.seeds} seeds x 7 experiments, gap {args.gap:g} points, rungs {args.rungs}")
    for col in ("pairs / passages", "rule", "wrong elim. (of contenders)", "seeds with a wrong elim.",
                "hopeless stopped", "epochs saved", "s"):
        table.add_column(col, justify="left" if col == "rule" else "right")
    settings = [(20, 10), (60, 15), (150, 20)]  # (passages, pairs per passage)
    for n_groups, per_group in settings:
        rows = [("oracle (no noise)", False, False), ("point", True, False), ("noise guard", True, True)]
        for label, noisy, guard in rows:
            t0 = time.perf_counter()
            o = replay(seeds=args.seeds, rungs=args.rungs, epochs=args.epochs, gap=args.gap, n_groups=n_groups,
                       per_group=per_group, noisy=noisy, noise_guard=guard, n_boot=args.n_boot)
            table.add_row(
                f"{n_groups * per_group} / {n_groups}",
                label,
                f"{o.wrong / max(o.contenders, 1):.2%} ({o.wrong}/{o.contenders})",
                f"{o.seeds_with_wrong / args.seeds:.1%}",
                f"{o.hopeless_stopped / max(o.hopeless, 1):.1%} ({o.hopeless_stopped}/{o.hopeless})",
                f"{1 - o.epochs_run / o.epochs_budget:.1%}",
                f"{time.perf_counter() - t0:.1f}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
