"""Rich views for the command line: feedback that draws, the epoch table of ``pianoray train``, the plan.

The edge of the package (with ``protocol/progress.py``'s live board and ``report/``): library code only
sees :class:`pianoray.feedback.Feedback`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any, Callable, Iterator, Mapping

from rich.console import Console
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from pianoray.feedback import Advance, Feedback
from pianoray.records import EpochRecord

PIPED_WIDTH = 1000  # piped with no COLUMNS: wide enough that no table is cut and no line is broken


def console_for(stderr: bool = False) -> Console:
    """The command line's rich console. On a terminal, or with ``COLUMNS`` set, rich fits the width it finds.
    Piped to a file with neither (a CI log, ``nohup``), rich would assume 80 columns: table cells cut to "…",
    rows wrapped over several lines, sentences broken mid-way. There it prints each table at its natural width
    and each line whole, as a log is read."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not stream.isatty() and not os.environ.get("COLUMNS")
    return Console(stderr=stderr, width=PIPED_WIDTH if piped else None)


class RichFeedback(Feedback):
    """Lines, warnings and bars on a rich console. Library text is printed as text: no markup, so a path
    with brackets stays whole; long lines wrap softly so a log piped to a file keeps one line each."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def warn(self, line: str) -> None:
        self.console.print(Text.assemble(("warning: ", "yellow"), line), highlight=False, soft_wrap=True)

    @contextlib.contextmanager
    def progress(self, task: str, total: int) -> Iterator[Advance]:
        if self.console.quiet or total == 0:
            yield lambda n=1, note="": None
            return
        with Progress(TextColumn(task), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      TextColumn("{task.description}"), console=self.console, transient=False) as bar:
            handle = bar.add_task("", total=total)

            def advance(n: int = 1, note: str = "") -> None:
                bar.update(handle, advance=n, description=note)

            yield advance

    @contextlib.contextmanager
    def live(self, render: Callable[[], Any]) -> Iterator[Callable[[], None]]:
        """Redrawn in place on a terminal; piped to a file, drawn once at the end (a log has no cursor)."""
        if not self.console.is_terminal:
            try:
                yield lambda: None
            finally:
                self.console.print(render())
            return
        with Live(render(), console=self.console, refresh_per_second=2, transient=False) as view:
            yield lambda: view.update(render())


class EpochTable:
    """``pianoray train``'s live table: one row per epoch record, the best epoch starred. It appears with the
    first epoch, so that an input error or a fitted reference (no epochs) prints no empty table."""

    COLUMNS = ("epoch", "stage", "train loss", "val pairwise [95% CI]", "val R2", "best", "s")

    def __init__(self, title: str) -> None:
        self.table = Table(title=title)
        for col in self.COLUMNS:
            self.table.add_column(col, justify="right")
        self._console: Console | None = None
        self._live: Live | None = None

    def add(self, r: EpochRecord) -> None:
        m = r.metrics
        lo, hi = m["val/pairwise_accuracy_ci"]
        mark = "*" if r.best_epoch == r.epoch else ""
        self.table.add_row(
            str(r.epoch), r.stage, f"{m.get('train/total', float('nan')):.4f}",
            f"{m['val/pairwise_accuracy']:.3f} [{lo:.3f}, {hi:.3f}]", f"{m['val/r2']:.3f}",
            f"{r.best_metric:.3f}{mark}" if r.best_metric is not None else "-", f"{r.seconds:.1f}",
        )
        if self._live is None and self._console is not None and self._console.is_terminal:
            self._live = Live(self.table, console=self._console, refresh_per_second=4, transient=False)
            self._live.start()
        elif self._live is not None:
            self._live.refresh()

    @contextlib.contextmanager
    def shown(self, console: Console) -> Iterator[None]:
        """Draw on ``console`` while the block runs (from the first row on); piped to a file, print the
        table once at the end instead (a log has no cursor to redraw with)."""
        self._console = console
        try:
            yield
        finally:
            if self._live is not None:
                self._live.stop()
            elif self.table.row_count and not console.is_terminal:
                console.print(self.table)
            self._live = None


def train_summary(result: Mapping[str, Any]) -> str:
    """The last line of ``pianoray train``: the best epoch's validation scores (and test, for a fitted
    reference, which has no epochs)."""
    b = result.get("best")
    if not b:
        return f"{result['experiment']} fold {result['fold']}: no epoch finished"
    pw, (lo, hi), r2 = b["pairwise_accuracy"]["mean"], b["pairwise_accuracy"]["ci"], b["r2"]["mean"]
    if result.get("kind") == "fitted":
        test = result["test"]
        return (f"{result['experiment']} fold {result['fold']} (fitted once, {test['fit_seconds']:.1f} s): val "
                f"pairwise {pw:.3f} [{lo:.3f}, {hi:.3f}], R2 {r2:.3f}; "
                f"test pairwise {test['pairwise_accuracy']:.3f}, R2 {test['r2']:.3f}")
    return f"best epoch {result['best_epoch']}: pairwise {pw:.3f} [{lo:.3f}, {hi:.3f}], R2 {r2:.3f}"


def _fmt_hours(h: Mapping[str, float]) -> str:
    parts = [f"{h[k]:.2f} {k.upper()}-h" for k in ("gpu", "cpu") if h.get(k)]
    return " + ".join(parts) or "0"


def render_plan(p: Any) -> list[Any]:
    """Rich renderables for a :class:`pianoray.protocol.plan.Plan`: the per-trial cost model, then the
    rounds with both totals beside the seed's."""
    trials = Table(title=f"plan · {p.config_name} · per experiment (one worker)")
    for col in ("experiment", "resources", "samples/s", "train / val samples per epoch", "hours / epoch", "throughput source"):
        trials.add_column(col)
    for t in p.trials:
        res = f"{t.cpu:g} CPU" + (f" + {t.gpu:g} GPU" if t.gpu else "")
        trials.add_row(t.experiment, res, f"{t.samples_per_s:.4g} ({t.device})", f"{t.train_samples} / {t.eval_samples}",
                       f"{t.epoch_hours:.4f} {t.device.upper()}-h", t.throughput_source)
    rounds = Table(title="rounds")
    for col in ("round", "jobs (upper / expected)", "epochs", "upper bound", "expected", "seed's estimate", "how"):
        rounds.add_column(col)
    for r in p.rounds:
        seed = "-" if r.seed_gpu_hours is None else f"{r.seed_gpu_hours[0]:g}-{r.seed_gpu_hours[1]:g} GPU-h"
        rounds.add_row(r.name, f"{r.jobs_upper} / {r.jobs_expected}", str(r.epochs), _fmt_hours(r.upper_hours),
                       _fmt_hours(r.expected_hours), seed, "\n".join(r.notes))
    lo = sum(r.seed_gpu_hours[0] for r in p.rounds if r.seed_gpu_hours)
    hi = sum(r.seed_gpu_hours[1] for r in p.rounds if r.seed_gpu_hours)
    rounds.add_row("total", "", "", _fmt_hours(p.total("upper")), _fmt_hours(p.total("expected")),
                   f"{lo:g}-{hi:g} GPU-h", f"expected: {p.eliminated:.0%} of Round-1 trials eliminated")
    sizes = ", ".join(f"{k} {v}" for k, v in sorted(p.sizes.items()))
    note = Text(f"corpus: {sizes} segments ({p.sizes_source}). The seed's figures are for comparison only.",
                style="dim")
    return [trials, rounds, note]


def _figure(x: float | None, ci: list[float | None] | None, scale: float = 100.0, digits: int = 1) -> str:
    if x is None:
        return "-"
    lo, hi = ci or [None, None]
    band = f" ({lo * scale:.{digits}f}-{hi * scale:.{digits}f})" if lo is not None and hi is not None else ""
    return f"{x * scale:.{digits}f}{band}"


def evaluation_table(result: Mapping[str, Any]) -> Table:
    """``pianoray evaluate``: per label set and part (unseen, seen, all), the model and its reference:
    pairwise accuracy (%) and R2, each with its 95% CI over passages, and the segments / passages scored
    (``n/psg``)."""
    from rich import box

    from pianoray.inference.assess import summary_rows

    table = Table(title="evaluation (95% CIs over passages)", title_justify="left", box=box.SIMPLE, pad_edge=False)
    for col in ("labels", "music", "model", "pairwise %", "R2", "n/psg"):
        table.add_column(col, justify="right" if col == "n/psg" else "left", no_wrap=True)
    for r in summary_rows(result):
        table.add_row(r["labels"], r["part"], r["role"], _figure(r["pairwise"], r["pairwise_ci"]),
                      _figure(r["r2"], r["r2_ci"], scale=1.0, digits=2), f"{r['segments']}/{r['passages']}")
    return table


def prediction_table(predictions: list[Any], definitions: Mapping[str, str | None]) -> Table:
    """``pianoray predict``: one row per input, each dimension's score (and rank in its passage, 1 = best)."""
    names = list(definitions)
    table = Table(title="predictions (scores on the labels' 0-1 scale; rank among performances of one passage)",
                  title_justify="left", caption="; ".join(f"{n}: {d}" for n, d in definitions.items() if d) or None,
                  caption_justify="left")
    table.add_column("input")
    table.add_column("passage")
    for n in names:
        table.add_column(n, justify="right")
    table.add_column("mean", justify="right")
    graded = any(getattr(p, "difficulty", None) is not None for p in predictions)
    if graded:
        table.add_column("grade", justify="right")  # the difficulty head's, on its training corpus's scale
    for p in predictions:
        cells = [f"{p.scores[n]:.2f}" + (f" #{p.ranks[n]}" if p.ranks else "") for n in names]
        grade = [f"{p.difficulty:.1f}" if p.difficulty is not None else "-"] if graded else []
        table.add_row(p.input, p.passage, *cells, f"{p.mean:.2f}", *grade)
    return table
