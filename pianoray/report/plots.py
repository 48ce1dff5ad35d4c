"""The report's figures, drawn from the run results dict into PNG files with fixed names.

Figures are built on :class:`matplotlib.figure.Figure` with the Agg canvas directly, never through pyplot:
no global backend switch, no figure registry to leak from a long-running service, safe off the main thread.
Every function returns the PNG path and always writes a PNG; when the data it needs is missing it draws a
labelled "nothing recorded" panel instead, so the report's image links never break.

Colours: one per experiment, fixed by sorted experiment name, so an experiment has the same colour in every
figure. Status colours (timeline) are fixed too.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import matplotlib.dates as mdates
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter

from pianoray.files import atomic_write
from pianoray.records import ROUND1, ROUND2
from pianoray.report.tables import (
    comparison_rows,
    finite,
    param_headers,
    search_params,
    searched,
    searched_row,
    track_names,
)

DPI = 110
STATUS_COLOURS = {
    "winner": "#2ca02c",
    "promoted": "#1f77b4",
    "eliminated": "#9a9a9a",
    "vetoed": "#d62728",
    "error": "#8c2d04",
    "running": "#ff7f0e",
}
CHANCE = 0.5  # pairwise accuracy of a constant model (ties count half)


def _experiment_colours(results: Mapping[str, Any]) -> dict[str, Any]:
    import matplotlib

    names = sorted({str(e.get("name")) for e in results.get("experiments") or []}
                   | {str(c.get("experiment")) for c in results.get("curves") or []})
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text) or "unnamed"


def _save(fig: Figure, path: Path) -> Path:
    """Write atomically (tmp + rename) so a reader never sees half a PNG."""
    FigureCanvasAgg(fig)
    # An explicit empty metadata dict keeps the bytes identical across runs of the same matplotlib.
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight",
                                                      metadata={"Software": None}))


def _empty(path: Path, title: str, message: str) -> Path:
    fig = Figure(figsize=(7, 2.2))
    ax = fig.add_subplot()
    ax.set_axis_off()
    ax.set_title(title)
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=11, color="#555555", transform=ax.transAxes)
    return _save(fig, path)


def parse_time(text: Any) -> datetime | None:
    """ISO-8601 text (a trailing "Z" allowed) as an aware UTC datetime, or None when absent or unparsable."""
    if not text or not isinstance(text, str):
        return None
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=timezone.utc)


def _track_of(results: Mapping[str, Any]) -> dict[str, str]:
    return {str(e.get("name")): str(e.get("track")) for e in results.get("experiments") or []}


# --------------------------------------------------------------------------------------- learning curves


def judged_epochs(points: list[tuple[float, float | None, bool, float]]) -> list[tuple[float, float, bool]]:
    """One trial's curve on the axis the scheduler counts: (x, value, selectable) per epoch, in epoch order.

    points: (epoch, rung_epoch or None, selectable, value). A model-selecting epoch sits at its ``rung_epoch``
    (supervised epochs so far: where the rungs are); an epoch of a stage that selects nothing (A2's
    self-supervised stage) sits just before the next selecting epoch, so a leading self-supervised stage lands
    on x <= 0. Without rung epochs (a ledger from before they were recorded) x is the epoch.
    """
    pts = sorted(points, key=lambda p: p[0])
    if any(r is None for _, r, _, _ in pts):
        return [(e, v, s) for e, _, s, v in pts]
    out = []
    for i, (epoch, rung, selectable, value) in enumerate(pts):
        if selectable:
            out.append((float(rung), value, True))
            continue
        nxt = next((p for p in pts[i + 1:] if p[2]), None)
        # (next selecting epoch's rung) - (epochs until it); at the tail, count back from the last epoch
        x = (nxt[1] - (nxt[0] - epoch)) if nxt is not None else (rung - (pts[-1][0] - epoch))
        out.append((float(x), value, False))
    return out


def learning_curve_series(results: Mapping[str, Any], round_name: str
                          ) -> dict[str, dict[tuple[str, int], list[tuple[float, float, bool]]]]:
    """What the learning-curve figure draws: track -> (experiment, fold) -> [(x, value, selectable)], with x
    from :func:`judged_epochs` (the scheduler's supervised epochs)."""
    track_of = _track_of(results)
    raw: dict[str, dict[tuple[str, int], list[tuple[float, float | None, bool, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for c in results.get("curves") or []:
        if c.get("round") != round_name:
            continue
        epoch, val = finite(c.get("epoch")), finite(c.get("val_pairwise"))
        if epoch is None or val is None:
            continue
        exp = str(c.get("experiment"))
        fold = int(finite(c.get("fold")) or 0)
        raw[track_of.get(exp, "other")][(exp, fold)].append(
            (epoch, finite(c.get("rung_epoch")), c.get("selectable", True) is not False, val))
    return {t: {key: judged_epochs(points) for key, points in by_trial.items()} for t, by_trial in raw.items()}


def plot_learning_curves(results: Mapping[str, Any], out_dir: Path, round_name: str) -> Path:
    """Validation pairwise accuracy vs the epochs the scheduler counts, one panel per track, one line per trial of
    ``round_name``.

    x is the supervised epoch (``rung_epoch``: what rungs count, :func:`judged_epochs`), so a trial with a
    self-supervised stage (A2) is drawn where it was judged; that stage's epochs are dashed, at x <= 0.
    Round-2 folds of an experiment are faint lines in its colour, with their mean in bold. Round-1 rung decisions
    of the round are drawn: a dotted vertical line at each rung, and an X at (rung, metric) for every
    stopped trial, annotated with its gap to the leader in points. Writes ``learning_curves_<round>.png``.
    """
    path = Path(out_dir) / f"learning_curves_{_safe_name(round_name)}.png"
    title = f"Learning curves — {round_name}"
    series = learning_curve_series(results, round_name)
    decisions = [d for d in results.get("decisions") or [] if d.get("round") == round_name]
    if not series:
        return _empty(path, title, f"No validation curves recorded for {round_name}.")

    panels = [t for t in track_names(results) if t in series] + sorted(t for t in series if t not in track_names(results))
    colours = _experiment_colours(results)
    fig = Figure(figsize=(6.2 * len(panels), 4.4), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, track in zip(axes, panels):
        by_exp: dict[str, dict[int, list[tuple[float, float, bool]]]] = defaultdict(dict)
        for (exp, fold), points in series[track].items():
            by_exp[exp][fold] = points
        any_folds = False
        for exp, folds in sorted(by_exp.items()):
            colour = colours.get(exp)
            if len(folds) == 1:
                (points,) = folds.values()
                _draw_trial(ax, points, colour, lw=1.8, alpha=1.0, label=exp)
                continue
            # Several folds: each fold faint, their mean bold over the epochs every fold reached (a mean
            # over fewer folds at the tail would jump for no reason but early stopping).
            any_folds = True
            for points in folds.values():
                _draw_trial(ax, points, colour, lw=0.8, alpha=0.35, label=None)
            common = sorted(set.intersection(*(set(x for x, _, sel in pts if sel) for pts in folds.values())))
            if common:
                per_fold = [{x: y for x, y, sel in pts if sel} for pts in folds.values()]
                ax.plot(common, [sum(f[x] for f in per_fold) / len(per_fold) for x in common], "-", color=colour,
                        lw=2.0, label=f"{exp} (mean of {len(folds)} folds)")
        track_decisions = [d for d in decisions if d.get("track") == track]
        for rung in sorted({finite(d.get("rung")) for d in track_decisions} - {None}):
            ax.axvline(rung, color="#444444", ls=":", lw=1.0)
            ax.annotate(f"rung {int(rung)}", (rung, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                        textcoords="offset points", fontsize=8, color="#444444")
        stopped = False
        for d in track_decisions:
            rung, metric = finite(d.get("rung")), finite(d.get("metric"))
            if d.get("decision") != "stop" or rung is None or metric is None:
                continue
            stopped = True
            ax.plot([rung], [metric], marker="X", ms=11, color="#d62728", mec="black", mew=0.6, ls="none", zorder=5)
            gap = finite(d.get("gap_points"))
            note = f"stop {d.get('experiment')}" + (f"\n−{gap:.1f} pts" if gap is not None else "")
            ax.annotate(note, (rung, metric), xytext=(6, -4), textcoords="offset points", fontsize=8,
                        color="#d62728", va="top")
        ax.axhline(CHANCE, color="#bbbbbb", lw=0.8, ls="--")
        ax.set_title(f"{track} track")
        ax.set_xlabel("supervised epoch (what rungs count)")
        ax.set_ylabel("validation pairwise accuracy")
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.grid(alpha=0.25)
        handles, labels = ax.get_legend_handles_labels()
        if stopped:
            handles.append(ax.plot([], [], marker="X", color="#d62728", mec="black", ls="none")[0])
            labels.append("stopped at rung")
        if any_folds:
            handles.append(ax.plot([], [], "-", color="#888888", lw=0.8, alpha=0.5)[0])
            labels.append("single fold")
        if any(not sel for pts in series[track].values() for _, _, sel in pts):
            handles.append(ax.plot([], [], "--", color="#888888", lw=1.0)[0])
            labels.append("self-supervised stage (not judged)")
        ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title + " (dashed grey: chance 50%)")
    return _save(fig, path)


def _draw_trial(ax: Any, points: list[tuple[float, float, bool]], colour: Any, *, lw: float, alpha: float,
                label: str | None) -> None:
    """One trial's curve: model-selecting epochs solid; epochs of a stage that selects nothing dashed, joined
    to the first selecting epoch after them."""
    judged = [(x, y) for x, y, sel in points if sel]
    if judged:
        xs, ys = zip(*judged)
        ax.plot(xs, ys, "-", color=colour, lw=lw, alpha=alpha, marker="." if len(xs) < 30 and alpha == 1.0 else None,
                label=label)
        label = None
    for i, (x, y, sel) in enumerate(points):
        if sel:
            continue
        nxt = points[i + 1] if i + 1 < len(points) else None
        seg = [(x, y)] + ([(nxt[0], nxt[1])] if nxt is not None else [])
        xs, ys = zip(*seg)
        ax.plot(xs, ys, "--", color=colour, lw=max(0.8, lw * 0.6), alpha=alpha * 0.8,
                marker="." if alpha == 1.0 else None, label=label)
        label = None


# ----------------------------------------------------------------------------------------- per dimension


def plot_per_dimension(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Per-dimension pairwise accuracy, grouped by dimension, one bar per experiment, one panel per track.
    Experiments are in comparison-table order; the winner's bars have a black edge. Writes
    ``per_dimension.png``."""
    path = Path(out_dir) / "per_dimension.png"
    title = "Per-dimension pairwise accuracy"
    dims = [str(d) for d in results.get("dimensions") or []]
    colours = _experiment_colours(results)
    by_name = {str(e.get("name")): e for e in results.get("experiments") or []}
    panels: list[tuple[str, list[tuple[dict, list[float]]]]] = []
    for track in track_names(results):
        bars = []
        for row in comparison_rows(results, track):
            per_dim = ((by_name[row["name"]].get("pairwise_accuracy") or {}).get("per_dim")) or []
            values = [finite(v) for v in per_dim]
            if any(v is not None for v in values):
                bars.append((row, [v if v is not None else math.nan for v in values]))
        if bars:
            panels.append((track, bars))
    if not panels:
        return _empty(path, title, "No per-dimension pairwise accuracy recorded.")

    n_dims = max(len(v) for _, bars in panels for _, v in bars)
    labels = dims if len(dims) == n_dims else [dims[i] if i < len(dims) else f"dim {i}" for i in range(n_dims)]
    fig = Figure(figsize=(max(8.0, 0.75 * n_dims + 3), 3.6 * len(panels)), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    all_values = [v for _, bars in panels for _, vs in bars for v in vs if not math.isnan(v)]
    lo = max(0.0, min(min(all_values), CHANCE) - 0.05)
    hi = min(1.0, max(all_values) + 0.05)
    for ax, (track, bars) in zip(axes, panels):
        width = 0.8 / len(bars)
        for k, (row, values) in enumerate(bars):
            xs = [i - 0.4 + width * (k + 0.5) for i in range(len(values))]
            ax.bar(xs, [v - lo if not math.isnan(v) else 0 for v in values], width, bottom=lo,
                   color=colours.get(row["name"]), edgecolor="black" if row["winner"] else "none",
                   lw=1.2 if row["winner"] else 0,
                   label=f"{row['experiment']} [{row['status'] or '?'}]" + (" ★" if row["winner"] and row["status"] != "winner" else ""))
        ax.axhline(CHANCE, color="#777777", lw=0.8, ls="--")
        ax.set_xticks(range(n_dims))
        ax.set_xticklabels(labels, rotation=30 if n_dims > 6 or max(map(len, labels)) > 12 else 0, ha="right"
                           if n_dims > 6 or max(map(len, labels)) > 12 else "center", fontsize=9)
        ax.set_ylim(lo, hi)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
        ax.set_ylabel("pairwise accuracy")
        ax.set_title(f"{track} track")
        ax.grid(axis="y", alpha=0.25)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.suptitle(title + " (dashed: chance 50%)")
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- timeline


def plot_timeline(results: Mapping[str, Any], out_dir: Path) -> Path:
    """Elimination timeline: per experiment, one bar per round from its first to its last epoch report,
    coloured by the experiment's final status (Round-2 bars hatched); an X at each stop decision's time;
    dotted vertical lines at round starts. Writes ``timeline.png``."""
    path = Path(out_dir) / "timeline.png"
    title = "Elimination timeline"
    spans: dict[tuple[str, str], list[datetime]] = defaultdict(list)
    for c in results.get("curves") or []:
        t = parse_time(c.get("time"))
        if t is not None:
            spans[(str(c.get("experiment")), str(c.get("round")))].append(t)
    if not spans:
        return _empty(path, title, "No timed epoch reports recorded.")

    status = {str(e.get("name")): e.get("status") for e in results.get("experiments") or []}
    order: list[str] = [r["name"] for t in track_names(results) for r in comparison_rows(results, t)]
    order += sorted({e for e, _ in spans} - set(order))
    order = [n for n in order if any(e == n for e, _ in spans)]
    y_of = {n: len(order) - 1 - i for i, n in enumerate(order)}  # first row at the top

    fig = Figure(figsize=(10, 0.55 * len(order) + 1.8), layout="constrained")
    ax = fig.add_subplot()
    min_width = max((max(max(v) for v in spans.values()) - min(min(v) for v in spans.values())).total_seconds(),
                    60.0) / 400 / 86400  # a one-report span still shows as a sliver
    rounds_seen = sorted({r for _, r in spans})
    hatches = {r: ("" if i == 0 else "//" if i == 1 else "xx") for i, r in enumerate(rounds_seen)}
    for (exp, rnd), times in sorted(spans.items()):
        start, end = mdates.date2num(min(times)), mdates.date2num(max(times))
        ax.barh(y_of[exp], max(end - start, min_width), left=start, height=0.6,
                color=STATUS_COLOURS.get(status.get(exp) or "", "#cccccc"), hatch=hatches[rnd],
                edgecolor="white" if not hatches[rnd] else "#333333", lw=0.5)
    for d in results.get("decisions") or []:
        t = parse_time(d.get("time"))
        exp = str(d.get("experiment"))
        if d.get("decision") == "stop" and t is not None and exp in y_of:
            ax.plot([mdates.date2num(t)], [y_of[exp]], marker="X", ms=11, color="#d62728", mec="black", mew=0.6)
            gap = finite(d.get("gap_points"))
            ax.annotate(f"stopped at rung {d.get('rung')}" + (f" (−{gap:.1f} pts)" if gap is not None else ""),
                        (mdates.date2num(t), y_of[exp]), xytext=(8, 0), textcoords="offset points",
                        va="center", fontsize=8, color="#d62728")
    for r in results.get("rounds") or []:
        t = parse_time(r.get("started"))
        if t is not None:
            ax.axvline(mdates.date2num(t), color="#444444", ls=":", lw=1)
            ax.annotate(f"{r.get('round')} starts", (mdates.date2num(t), 1.0), xycoords=("data", "axes fraction"),
                        xytext=(3, -10), textcoords="offset points", fontsize=8, color="#444444")
    ax.set_yticks([y_of[n] for n in order])
    ax.set_yticklabels(order)
    ax.set_ylim(-0.7, len(order) - 0.3 + 0.4)
    locator = mdates.AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_xlabel("wall-clock time (UTC)")
    ax.grid(axis="x", alpha=0.25)
    from matplotlib.patches import Patch

    present = [s for s in STATUS_COLOURS if s in set(status.values())]
    handles = [Patch(color=STATUS_COLOURS[s], label=s) for s in present]
    handles += [Patch(facecolor="white", edgecolor="#333333", hatch=hatches[r], label=r) for r in rounds_seen]
    handles.append(ax.plot([], [], marker="X", color="#d62728", mec="black", ls="none", label="stop decision")[0])
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False,
              title="final status / round", title_fontsize=8)
    ax.set_title(title)
    return _save(fig, path)


# ------------------------------------------------------------------------------------------ importance


def importance_key(experiment: str) -> str:
    """The figure key (and PNG stem) of ``experiment``'s parameter importances."""
    return f"importance_{_safe_name(experiment)}"


def plot_importance(results: Mapping[str, Any], out_dir: Path, experiment: str) -> Path:
    """A searched experiment's parameter importances (``search.importance``: parameter -> share, fANOVA over
    its completed configurations) as horizontal bars, the most important on top, each labelled with its share;
    parameters named as in its search table. Writes ``importance_<experiment>.png``."""
    path = Path(out_dir) / f"{importance_key(experiment)}.png"
    title = f"Parameter importance — {experiment}"
    search = searched_row(results, experiment).get("search") or {}
    shares = [(p, v) for p, v in ((p, finite(v)) for p, v in (search.get("importance") or {}).items()) if v is not None]
    if not shares:
        return _empty(path, title, "No parameter importances recorded (fewer than two completed configurations).")

    headers = param_headers(search_params(search))
    shares.sort(key=lambda pv: pv[1])  # barh draws bottom-up: the largest lands on top
    fig = Figure(figsize=(6.4, 0.45 * len(shares) + 1.4), layout="constrained")
    ax = fig.add_subplot()
    ys = range(len(shares))
    ax.barh(ys, [v for _, v in shares], height=0.6, color=_experiment_colours(results).get(experiment, "#1f77b4"))
    for y, (_, v) in zip(ys, shares):
        ax.annotate(f"{100 * v:.0f}%", (v, y), xytext=(4, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(list(ys))
    ax.set_yticklabels([headers.get(p, p) for p, _ in shares])
    ax.set_xlim(0, min(1.0, max(v for _, v in shares) * 1.15) or 1.0)
    ax.xaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("importance (fANOVA, completed configurations)")
    ax.grid(axis="x", alpha=0.25)
    ax.set_axisbelow(True)
    ax.set_title(title)
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------- gates


def gates_key(fusion: str) -> str:
    """The figure key (and PNG stem) of a gated fusion's mean gates."""
    return f"gates_{_safe_name(fusion)}"


def plot_gates(results: Mapping[str, Any], out_dir: Path, fusion: str) -> Path:
    """A gated fusion's (F3's) mean gate per label dimension (``fusion.gates``: weight on audio, test segments,
    mean over folds) as horizontal bars from 0 (symbolic alone) to 1 (audio alone), centred on an even mix: which
    modality each dimension relies on. Writes ``gates_<fusion>.png``."""
    path = Path(out_dir) / f"{gates_key(fusion)}.png"
    title = f"Which modality each dimension relies on — {fusion}"
    gates = [finite(g) for g in ((results.get("fusion") or {}).get("gates") or {}).get(fusion) or []]
    if not any(g is not None for g in gates):
        return _empty(path, title, "No gates recorded.")
    dims = [str(d) for d in results.get("dimensions") or []]
    labels = [dims[i] if i < len(dims) else f"dim {i}" for i in range(len(gates))]
    fig = Figure(figsize=(6.8, 0.32 * len(gates) + 1.6), layout="constrained")
    ax = fig.add_subplot()
    ys = list(range(len(gates)))[::-1]  # the first dimension on top
    values = [g if g is not None else 0.5 for g in gates]
    ax.barh(ys, [v - 0.5 for v in values], left=0.5, height=0.65,
            color=["#1f77b4" if v >= 0.5 else "#d62728" for v in values])
    ax.axvline(0.5, color="#777777", lw=0.8, ls="--")
    ax.set_yticks(ys)
    ax.set_yticklabels(labels, fontsize=9)
    ax.set_xlim(0, 1)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_xticklabels(["symbolic", "", "even", "", "audio"])
    ax.set_xlabel("mean gate (weight on audio), test segments, mean over folds")
    ax.grid(axis="x", alpha=0.25)
    ax.set_axisbelow(True)
    ax.set_title(title)
    return _save(fig, path)


def plot_all(results: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Every figure of the report: keys ``per_dimension``, ``timeline``, ``learning_curves_<round>`` for
    each round named in ``rounds`` or ``curves`` (round1 and round2 always, so their links are stable), and
    :func:`importance_key` of each searched experiment whose importances Round 1 recorded (none otherwise), and
    :func:`gates_key` of each gated fusion whose gates Round 3 recorded."""
    rounds = [ROUND1, ROUND2]
    for r in [x.get("round") for x in results.get("rounds") or []] + [c.get("round") for c in results.get("curves") or []]:
        if r and str(r) not in rounds:
            rounds.append(str(r))
    out = {"per_dimension": plot_per_dimension(results, out_dir), "timeline": plot_timeline(results, out_dir)}
    for r in rounds:
        out[f"learning_curves_{_safe_name(r)}"] = plot_learning_curves(results, out_dir, r)
    for e in searched(results):
        if e["search"].get("importance"):
            out[importance_key(str(e.get("name")))] = plot_importance(results, out_dir, str(e.get("name")))
    for fusion in (results.get("fusion") or {}).get("gates") or {}:
        out[gates_key(fusion)] = plot_gates(results, out_dir, fusion)
    return out
