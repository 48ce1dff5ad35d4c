"""Replay the Round-1 elimination rule, point rule vs noise guard: wrong eliminations and compute saved.

Both tables run the rule exactly as the scheduler does (:func:`pianoray.protocol.decisions.judge_rung`, sync
rungs plus the final rung at the end of the round) on statistics produced by the real validation code: pair
counts (:class:`pianoray.objectives.metrics.PairCounts`) from ``pianoray.training.evaluate.validation_scores``
on predictions, or read back from a run's ledger, where the Round-1 trainable recorded them.

**Synthetic curves** (``--seeds``): each seed draws 7 experiments (audio: 3 candidates, symbolic: 4) with true
pairwise-accuracy curves ``a + b * (1 - exp(-t / tau))`` and a validation set of P passages x k performances
with 6 label dimensions. At a rung a model at true accuracy p predicts ``labels + s * noise``, with ``s``
calibrated so that its expected pairwise accuracy is p, and scaled per passage by a factor shared by every
model (some passages are hard for all); ``validation_scores`` scores those predictions.

**Replay of a real run** (``--ledger RUN_FOLDER``): the run's Round-1 pair counts, epoch by epoch. They are one
draw of a validation set; the replay asks what other validation sets of the same size would have decided:
each universe redraws the passages with replacement (the same draw for every trial and epoch) and applies the
rule there. Every trial needs its whole curve: replay a run whose Round 1 stopped nobody (``round1.gap`` 100).

A **wrong elimination** stops an experiment whose final true metric (synthetic: the curve; replay: the whole
validation set's value at its last epoch) is within ``gap`` points of its track's best candidate: it should
have been promoted. Rows: ``oracle`` (the rule on true values; in the replay, on the recorded values: errors
only from curves that cross after a rung), ``point`` (the seed's rule), ``guard`` (stop only when the 95%
interval of the gap, simultaneous over the track's candidates, lies above ``gap``). ``compute saved``: epochs
not trained, of the round's budget (Round 1 only: a hopeless trial that survives also costs its Round 2).

    python benchmarks/scheduler_replay.py [--seeds 200] [--n-boot 300] [--gap 10] [--ledger /tmp/runs/NAME]
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from scipy.stats import norm

from pianoray.objectives.metrics import PairCounts
from pianoray.protocol.decisions import RungEntry, judge_rung
from pianoray.training.evaluate import Predictions, validation_scores

TRACKS = {"audio": ["A1", "A2", "A3"], "symbolic": ["S1", "S2", "S3", "S2H"]}
DIMS = 6
THRESHOLD = 0.05


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
    universes_with_wrong: int = 0
    universes: int = 0

    def add(self, stopped_at: dict[str, int], final_truth: dict[str, dict[str, float]], last_epoch: dict[str, int],
            gap: float) -> None:
        any_wrong = False
        for finals in final_truth.values():
            best = max(finals.values())
            for n, v in finals.items():
                contender = (best - v) * 100.0 <= gap + 1e-9
                self.contenders += contender
                self.hopeless += not contender
                if n in stopped_at:
                    self.wrong += contender
                    any_wrong |= contender
                    self.hopeless_stopped += not contender
                self.epochs_run += min(stopped_at.get(n, last_epoch[n]), last_epoch[n])
                self.epochs_budget += last_epoch[n]
        self.universes += 1
        self.universes_with_wrong += any_wrong

    def row(self, label: str, setting: str, seconds: float) -> list[str]:
        return [setting, label, f"{self.wrong / max(self.contenders, 1):.2%} ({self.wrong}/{self.contenders})",
                f"{self.universes_with_wrong / max(self.universes, 1):.1%}",
                f"{self.hopeless_stopped / max(self.hopeless, 1):.1%} ({self.hopeless_stopped}/{self.hopeless})",
                f"{1 - self.epochs_run / max(self.epochs_budget, 1):.1%}", f"{seconds:.0f}"]


def apply_rule(rungs: list[int], final_rung: int, entries_at, *, gap: float, guard: bool, n_boot: int, seed: int,
               names: list[str]) -> dict[str, int]:
    """Sync rungs then the final rung; ``entries_at(rung, alive)`` gives the alive trials' entries.
    Returns experiment -> the rung that stopped it."""
    alive = list(names)
    stopped_at: dict[str, int] = {}
    for rung in [*rungs, final_rung]:
        decisions, _ = judge_rung(entries_at(rung, alive), rung=rung, gap=gap, noise_guard=guard, n_boot=n_boot,
                                  seed=seed, final=rung == final_rung)
        for d in decisions:
            if d.stopped:
                stopped_at[d.experiment] = rung
        alive = [n for n in alive if n not in stopped_at]
    return stopped_at


# ---------------------------------------------------------------------------------------------------- synthetic
class ValidationSet:
    """P passages x k performances, DIMS label dimensions in [0, 1]; a per-passage difficulty shared by models."""

    def __init__(self, passages: int, per_passage: int, rng: np.random.Generator) -> None:
        m = passages * per_passage
        self.groups = np.repeat([f"T1:p{g:03d}" for g in range(passages)], per_passage).astype(object)
        self.labels = rng.uniform(0.0, 1.0, (m, DIMS))
        self.hardness = np.repeat(np.exp(rng.normal(0.0, 0.4, passages)), per_passage)[:, None]  # [M, 1]
        self.ids = [f"seg{i}" for i in range(m)]
        # Expected pairwise accuracy as a function of the noise scale s: a pair (i, j) with label gap d is
        # ordered right with probability Phi(|d| / (s * sqrt(h_i^2 + h_j^2))); per-dimension mean, as scored.
        same = self.groups[:, None] == self.groups[None, :]
        i, j = np.nonzero(np.triu(same, 1))
        d = np.abs(self.labels[i] - self.labels[j])  # [pairs, DIMS]
        valid = d >= THRESHOLD - 1e-6
        h = np.sqrt(self.hardness[i, 0] ** 2 + self.hardness[j, 0] ** 2)[:, None]
        self._scales = np.geomspace(1e-3, 50.0, 400)
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = [np.nanmean(np.where(valid, norm.cdf(d / (s * h)), 0.0).sum(0) / valid.sum(0))
                   for s in self._scales]
        self._acc = np.asarray(acc)  # decreasing in s

    def scale_for(self, accuracy: float) -> float:
        p = float(np.clip(accuracy, self._acc[-1] + 1e-6, self._acc[0] - 1e-6))
        return float(np.interp(-p, -self._acc, self._scales))

    def counts(self, accuracy: float, rng: np.random.Generator) -> PairCounts:
        """A model at true pairwise accuracy ``accuracy`` evaluated once: predictions -> the real validation."""
        pred = self.labels + self.scale_for(accuracy) * self.hardness * rng.standard_normal(self.labels.shape)
        m = len(self.ids)
        p = Predictions(self.ids, pred, pred, self.labels, np.ones(m, bool), self.groups, np.zeros((m, 0)))
        return validation_scores(p, threshold=THRESHOLD, n_boot=0)[1]


def draw_curves(rng: np.random.Generator) -> dict[str, Curve]:
    return {name: Curve(a=rng.uniform(0.50, 0.62), b=rng.uniform(0.05, 0.32), tau=rng.uniform(3.0, 20.0))
            for names in TRACKS.values() for name in names}


def replay_synthetic(*, seeds: int, rungs: list[int], epochs: int, gap: float, passages: int, per_passage: int,
                     rules: list[tuple[str, bool, bool]], n_boot: int) -> dict[str, Outcome]:
    """One validation set per seed; every rule sees the same curves and the same noisy evaluations."""
    out = {label: Outcome() for label, _, _ in rules}
    track_of = {n: t for t, ns in TRACKS.items() for n in ns}
    names = list(track_of)
    for seed in range(seeds):
        curves = draw_curves(np.random.default_rng(seed))
        vset = ValidationSet(passages, per_passage, np.random.default_rng(50_000 + seed))
        noise = np.random.default_rng(10_000 + seed)
        evaluated = {(n, r): vset.counts(curves[n].at(r), noise) for r in [*rungs, epochs] for n in names}
        final_truth = {t: {n: curves[n].at(epochs) for n in ns} for t, ns in TRACKS.items()}
        last = {n: epochs for n in names}
        for label, noisy, guard in rules:
            def entries_at(rung: int, alive: list[str]) -> list[RungEntry]:
                if not noisy:
                    return [RungEntry(n, n, track_of[n], "candidate", float(curves[n].at(rung))) for n in alive]
                return [RungEntry(n, n, track_of[n], "candidate", c.accuracy(), counts=c, epoch=rung)
                        for n in alive for c in [evaluated[(n, rung)]]]

            stopped = apply_rule(rungs, epochs, entries_at, gap=gap, guard=guard, n_boot=n_boot, seed=seed,
                                 names=names)
            out[label].add(stopped, final_truth, last, gap)
    return out


# ---------------------------------------------------------------------------------------------------- replay
def read_run(folder: Path) -> tuple[dict, dict, dict[str, dict[int, tuple[int, PairCounts]]]]:
    """(config, run meta, experiment -> {rung_epoch: (epoch, counts)}) of a run folder's Round 1."""
    config = json.loads((folder / "config.json").read_text())
    meta = json.loads((folder / "run.json").read_text())
    curves: dict[str, dict[int, tuple[int, PairCounts]]] = {}
    for f in sorted((folder / "ledger" / "events" / "paircounts").glob("*.json")):
        e = json.loads(f.read_text())
        if e.get("round") != "round1":
            continue
        p = e["payload"]
        rung_epoch = int(p.get("rung_epoch") or 0) if p.get("rung_epoch") is not None else int(p["epoch"])
        curves.setdefault(e["experiment"], {})[rung_epoch] = (int(p["epoch"]), PairCounts.from_json(p["counts"]))
    return config, meta, curves


def resampled(counts: PairCounts, draw: np.ndarray) -> PairCounts:
    """The counts of the passages ``draw`` (indices, with repeats), each draw its own passage."""
    return PairCounts(tuple(f"{counts.groups[g]}#{k}" for k, g in enumerate(draw)), counts.correct[draw],
                      counts.total[draw])


def replay_run(folder: Path, *, universes: int, gap: float, rules: list[tuple[str, bool, bool]], n_boot: int
               ) -> tuple[dict[str, Outcome], str]:
    config, meta, curves = read_run(folder)
    r1 = config["round1"]
    budget = int(r1["epochs"])
    rungs = [int(r) for r in r1["rungs"] if int(r) < budget]
    tracks = {n: tuple(v) for n, v in meta["tracks"].items() if n in curves}
    names = sorted(tracks)
    last = {n: max(curves[n]) for n in names}  # its last supervised epoch: the final rung's value

    def at(n: str, rung: int) -> PairCounts:
        return curves[n][rung if rung in curves[n] else last[n]]  # final rung: its last report

    short = [n for n in names if any(r not in curves[n] for r in rungs)]
    if short:
        raise SystemExit(f"{folder}: {short} have no counts at every rung {rungs}: they were stopped in that run; "
                         "replay a run whose Round 1 stopped nobody (round1.gap: 100)")
    full = {t: {n: at(n, budget)[1].accuracy() for n in names if tracks[n] == (t, "candidate")}
            for t in {t for t, _ in tracks.values()}}
    full = {t: v for t, v in full.items() if v}
    first = at(names[0], budget)[1]
    out = {label: Outcome() for label, _, _ in rules}
    rng = np.random.default_rng(0)
    for u in range(universes):
        draw = rng.integers(0, len(first.groups), len(first.groups))
        for label, noisy, guard in rules:
            def entries_at(rung: int, alive: list[str]) -> list[RungEntry]:
                rows = []
                for n in alive:
                    epoch, c = at(n, rung)
                    c = resampled(c, draw) if noisy else c
                    rows.append(RungEntry(n, n, tracks[n][0], tracks[n][1], c.accuracy(), counts=c, epoch=epoch))
                return rows

            stopped = apply_rule(rungs, budget, entries_at, gap=gap, guard=guard, n_boot=n_boot, seed=u, names=names)
            stopped = {n: r for n, r in stopped.items() if tracks[n][1] == "candidate"}
            out[label].add(stopped, full, {n: budget for n in names}, gap)
    where = (f"{folder.name}: {len(first.groups)} validation passages, {int(first.total.sum())} (pair, dimension) "
             f"entries, rungs {rungs} + final {budget}; candidates {', '.join(n for n in names if tracks[n][1] == 'candidate')}")
    return out, where


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=200, help="synthetic seeds (0: skip the synthetic table)")
    parser.add_argument("--n-boot", type=int, default=300)
    parser.add_argument("--gap", type=float, default=10.0)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--rungs", type=int, nargs="+", default=[10, 25])
    parser.add_argument("--ledger", type=Path, help="a run folder (STORAGE/NAME) whose Round 1 to replay")
    parser.add_argument("--universes", type=int, default=400, help="validation-set redraws of the replayed run")
    args = parser.parse_args()
    console = Console(width=max(Console().width, 130))
    columns = ("setting", "rule", "wrong elim. (of contenders)", "draws with a wrong elim.", "hopeless stopped",
               "compute saved", "s")
    rules = [("oracle (true values)", False, False), ("point", True, False), ("guard", True, True)]
    if args.seeds:
        table = Table(title=f"Synthetic curves: {args.seeds} seeds x 7 experiments, gap {args.gap:g} points, "
                            f"rungs {args.rungs} + final {args.epochs}")
        for col in columns:
            table.add_column(col, justify="left" if col in ("rule", "setting") else "right")
        # The demo's fold-0 validation split is 4 passages; PercePiano's (music folds) 12 passages x ~12 performances.
        for passages, per in [(6, 8), (12, 12), (24, 8), (80, 8)]:
            t0 = time.perf_counter()
            outs = replay_synthetic(seeds=args.seeds, rungs=args.rungs, epochs=args.epochs, gap=args.gap,
                                    passages=passages, per_passage=per, rules=rules, n_boot=args.n_boot)
            for label, o in outs.items():
                table.add_row(*o.row(label, f"{passages} passages x {per}", time.perf_counter() - t0))
        console.print(table)
    if args.ledger:
        t0 = time.perf_counter()
        recorded = [("recorded values (no redraw)", False, False), *rules[1:]]
        outs, where = replay_run(args.ledger, universes=args.universes, gap=args.gap, rules=recorded,
                                 n_boot=args.n_boot)
        table = Table(title=f"Replay of {where}; {args.universes} redraws of its validation passages, gap {args.gap:g}")
        for col in columns:
            table.add_column(col, justify="left" if col in ("rule", "setting") else "right")
        for label, o in outs.items():
            table.add_row(*o.row(label, "real counts", time.perf_counter() - t0))
        console.print(table)


if __name__ == "__main__":
    main()
