"""Tables of a run's results: the seed's per-track comparison table, the Round-1 decisions, a searched
experiment's configurations, the per-fold figures and the resource hours.

Every table is first built as plain data (:class:`TableData`: column names, rows of display strings, which
rows to highlight), then rendered: :func:`to_rich` for the terminal, :func:`to_markdown` for report.md (the
HTML renderer lives with the document). One formatting path, so the three renderings never disagree.

The input is the "run results" dict that ``pianoray report --json`` prints (schema in the report module's
docstring); every optional field may be None (or NaN after a JSON round trip) and then shows as an em dash.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

from rich.table import Table

from pianoray.records import DEFAULT_TRACK_METRICS, ROUND1, ROUND2, finite

MISSING = "—"
ROUND_ORDER = {ROUND2: 0, ROUND1: 1}  # experiments that reached Round 2 lead their table
STATUS_STYLE = {
    "winner": "bold green",
    "promoted": "cyan",
    "eliminated": "dim",
    "vetoed": "red",
    "error": "bold red",
    "running": "yellow",
}


@dataclass(frozen=True)
class TableData:
    """A rendered-ready table: ``rows[i][j]`` is the display string of column ``columns[j]``;
    ``highlight[i]`` marks a row to emphasise (the winner, a stop decision, a total); ``highlight_kind`` says
    which (the HTML class of such rows); ``styles[i]`` is a rich style for the row."""

    title: str
    columns: list[str]
    rows: list[list[str]]
    highlight: list[bool] = field(default_factory=list)
    styles: list[str | None] = field(default_factory=list)
    note: str = ""
    highlight_kind: str = "highlight"


# ----------------------------------------------------------------------------------------------- values


def _ci(stat: Mapping[str, Any] | None) -> tuple[float, float] | None:
    if not stat:
        return None
    ci = stat.get("ci")
    if not ci or len(ci) != 2:
        return None
    lo, hi = finite(ci[0]), finite(ci[1])
    return (lo, hi) if lo is not None and hi is not None else None


def _mean(stat: Mapping[str, Any] | None) -> float | None:
    return finite(stat.get("mean")) if stat else None


def fmt_number(x: Any, digits: int = 3) -> str:
    v = finite(x)
    return MISSING if v is None else f"{v:.{digits}f}"


def fmt_percent(x: Any, digits: int = 1) -> str:
    """A fraction as a percentage: 0.8412 -> "84.1%"."""
    v = finite(x)
    return MISSING if v is None else f"{100 * v:.{digits}f}%"


def fmt_mean_ci(mean: float | None, ci: tuple[float, float] | None, *, percent: bool) -> str:
    """"mean ± half-width" of the CI (half of hi - lo; bootstrap CIs can be lopsided, the exact bounds
    stay in :func:`comparison_rows`)."""
    if mean is None:
        return MISSING
    scale, unit, digits = (100.0, "%", 1) if percent else (1.0, "", 3)
    text = f"{scale * mean:.{digits}f}{unit}"
    if ci is not None:
        text += f" ± {scale * (ci[1] - ci[0]) / 2:.{digits}f}"
    return text


def fmt_hours(x: Any) -> str:
    v = finite(x)
    if v is None:
        return MISSING
    return f"{v:.2f}" if v >= 0.01 or v == 0 else f"{v:.4f}"


# ------------------------------------------------------------------------------------------ comparison


def _experiments(results: Mapping[str, Any], track: str | None = None) -> list[Mapping[str, Any]]:
    exps = results.get("experiments") or []
    return [e for e in exps if track is None or e.get("track") == track]


def hours_unit(results: Mapping[str, Any], track: str | None = None) -> str:
    """"GPU" when any experiment of the track used GPU time, else "CPU" (a laptop run has no GPU-hours,
    and a column of zeros would hide what the run did cost)."""
    for e in _experiments(results, track):
        if (finite((e.get("resource_hours") or {}).get("gpu_hours")) or 0.0) > 0:
            return "GPU"
    return "CPU"


def _winner(results: Mapping[str, Any], track: str) -> str | None:
    return (results.get("winners") or {}).get(track)


def comparison_rows(results: Mapping[str, Any], track: str) -> list[dict[str, Any]]:
    """One plain-data row per experiment of ``track``, in table order.

    Order: candidates before references; within each, experiments that reached Round 2 first (their figures
    are 4-fold means, Round-1 figures are fold 0 only), then by pairwise accuracy (best first, unmeasured
    last), then by name. Keys: ``experiment`` (display name, "(ref)" appended for references), ``name``,
    ``role``, ``status``, ``furthest_round``, ``winner`` (bool), ``pairwise``/``pairwise_ci``, ``r2``/``r2_ci``,
    ``test_pairwise``, ``test_r2``, ``difficulty_rho``, ``stop_auc``, ``stop_group``, ``competition_rho``,
    ``robustness_drop`` (relative, 0.12 = 12%), ``robustness_pearson``, ``hours`` (in ``hours_unit``),
    ``gpu_hours``, ``cpu_hours``, ``hours_unit``, ``folds`` (count), ``figures`` (the track's comparison figures
    by path, :func:`track_metrics`). Numbers are None where not measured.
    """
    winner = _winner(results, track)
    unit = hours_unit(results, track)
    shown = track_metrics(results, track)
    rows: list[dict[str, Any]] = []
    for e in _experiments(results, track):
        name = str(e.get("name", "?"))
        role = e.get("role") or "candidate"
        pw, r2 = e.get("pairwise_accuracy") or {}, e.get("r2") or {}
        test = e.get("test") or {}
        rob = e.get("robustness") or {}
        hours = e.get("resource_hours") or {}
        gpu, cpu = finite(hours.get("gpu_hours")), finite(hours.get("cpu_hours"))
        rows.append(
            {
                "experiment": f"{name} (ref)" if role == "reference" else name,
                "name": name,
                "role": role,
                "status": e.get("status"),
                "furthest_round": e.get("furthest_round"),
                "winner": winner is not None and name == winner,
                "pairwise": _mean(pw),
                "pairwise_ci": _ci(pw),
                "r2": _mean(r2),
                "r2_ci": _ci(r2),
                "test_pairwise": _mean(test.get("pairwise_accuracy")),
                "test_r2": _mean(test.get("r2")),
                "difficulty_rho": finite(e.get("difficulty_rho")),
                "stop_auc": finite(e.get("stop_auc")),
                "stop_group": e.get("stop_group"),
                "competition_rho": finite(e.get("competition_rho")),
                "robustness_drop": finite(rob.get("drop")),
                "robustness_pearson": finite(rob.get("pearson")),
                "gpu_hours": gpu,
                "cpu_hours": cpu,
                "hours": gpu if unit == "GPU" else cpu,
                "hours_unit": unit,
                "folds": len(e.get("folds") or []),
                # the track's comparison figures (track_metrics), by their path in the experiment's results
                "figures": {m: figure(e, m) for m in shown},
            }
        )

    def key(r: dict[str, Any]) -> tuple:
        pw = r["pairwise"]
        return (
            r["role"] == "reference",
            ROUND_ORDER.get(r["furthest_round"], 2),
            pw is None,
            -(pw if pw is not None else 0.0),
            r["name"],
        )

    return sorted(rows, key=key)


# A track's comparison figures: its ``metrics`` (results["tracks"], from its TrackSpec) are paths into an
# experiment's results row ("difficulty_rho", "robustness.drop", "test.<scorer key>"); a mean-and-CI object
# shows its mean. Titles and formats for the known ones; any other path shows as a number under its own name.
METRIC_COLUMNS: dict[str, tuple[str, Callable[[Any], str]]] = {
    "difficulty_rho": ("Difficulty rho", lambda x: fmt_number(x)),
    "robustness.drop": ("Robustness", lambda x: fmt_percent(x)),
    "competition_rho": ("Competition rho", lambda x: fmt_number(x)),
    "stop_auc": ("STOP AUC", lambda x: fmt_number(x)),
    "test.r2": ("Test R2", lambda x: fmt_number(x)),
    "test.pairwise_accuracy": ("Test pairwise", lambda x: fmt_percent(x)),
}


def figure(experiment: Mapping[str, Any], path: str) -> float | None:
    """The figure at a dotted ``path`` of an experiment's results row (a {"mean", ...} object gives its mean)."""
    value: Any = experiment
    for part in path.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    if isinstance(value, Mapping):
        value = value.get("mean")
    return finite(value)


def column(path: str) -> tuple[str, Callable[[Any], str]]:
    return METRIC_COLUMNS.get(path, (path, lambda x: fmt_number(x)))


def track_spec(results: Mapping[str, Any], track: str) -> Mapping[str, Any]:
    """What the run recorded of ``track`` (``results["tracks"]``; empty for a run that recorded none)."""
    return next((t for t in results.get("tracks") or [] if isinstance(t, Mapping) and t.get("name") == track), {})


def track_metrics(results: Mapping[str, Any], track: str) -> list[str]:
    """The figures ``track``'s comparison table shows beside R2 and pairwise, as the run recorded them."""
    return list(track_spec(results, track).get("metrics") or DEFAULT_TRACK_METRICS)


def comparison_data(results: Mapping[str, Any], track: str) -> TableData:
    """The seed's comparison table for one track, as display strings."""
    rows = comparison_rows(results, track)
    unit = hours_unit(results, track)
    shown = track_metrics(results, track)
    columns = ["Experiment", "R2", "Pairwise", *(column(m)[0] for m in shown), f"{unit}-hours", "Round", "Status"]
    cells = [
        [
            r["experiment"],
            fmt_mean_ci(r["r2"], r["r2_ci"], percent=False),
            fmt_mean_ci(r["pairwise"], r["pairwise_ci"], percent=True),
            *(column(m)[1](r["figures"].get(m)) for m in shown),
            fmt_hours(r["hours"]),
            r["furthest_round"] or MISSING,
            (r["status"] or MISSING) + (" ★" if r["winner"] and r["status"] != "winner" else ""),
        ]
        for r in rows
    ]
    note = ("R2 and pairwise: Round-2 rows are the mean over folds of validation ± half the 95% CI; Round-1 rows "
            "are fold 0 only.")
    if "robustness.drop" in shown:
        vetoes = track_spec(results, track).get("robustness_veto") is not False
        note += (" Robustness: relative drop of pairwise accuracy under augmentation "
                 + ("(veto over 15%)." if vetoes else "(reported; no veto on this track)."))
    groups = sorted({r["stop_group"] for r in rows if r["stop_group"] and r["stop_auc"] is not None})
    if "stop_auc" in shown and groups:
        note += (f" STOP AUC: a logistic probe on z, leaving one {' or '.join(groups)} out at a time"
                 + (" (this corpus has no recordings, the seed's group, so performers stand in)."
                    if groups == ["performer"] else "."))
    if unit == "CPU":
        note += " No GPU was used for this track: the hours column is CPU-hours."
    return TableData(
        title=f"{track.capitalize()} track",
        columns=columns,
        rows=cells,
        highlight=[r["winner"] for r in rows],
        styles=[STATUS_STYLE.get(r["status"] or "") for r in rows],
        note=note,
    )


def comparison_table(results: Mapping[str, Any], track: str) -> Table:
    """The seed's comparison table for ``track`` as a rich Table (winner in bold green)."""
    return to_rich(comparison_data(results, track))


def comparison_markdown(results: Mapping[str, Any], track: str) -> str:
    """The same comparison table as GitHub markdown (winner row in bold)."""
    return to_markdown(comparison_data(results, track))


# ------------------------------------------------------------------------------------------- decisions


def decision_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The Round-1 rung decisions as plain rows, ordered by round, rung, track, then stops before continues
    and by metric (best first). Keys as in the results' ``decisions`` entries; numbers None when missing."""
    rows = []
    for d in results.get("decisions") or []:
        rows.append(
            {
                "round": d.get("round"),
                "rung": d.get("rung"),
                "experiment": d.get("experiment"),
                "track": d.get("track"),
                "metric": finite(d.get("metric")),
                "leader": d.get("leader"),
                "leader_metric": finite(d.get("leader_metric")),
                "gap_points": finite(d.get("gap_points")),
                "decision": d.get("decision"),
                "reason": d.get("reason") or "",
                "time": d.get("time"),
            }
        )

    def key(r: dict[str, Any]) -> tuple:
        rung = finite(r["rung"])
        return (
            str(r["round"] or ""),
            rung if rung is not None else math.inf,
            str(r["track"] or ""),
            r["decision"] != "stop",
            -(r["metric"] if r["metric"] is not None else -math.inf),
            str(r["experiment"] or ""),
        )

    return sorted(rows, key=key)


def decisions_data(results: Mapping[str, Any]) -> TableData:
    rows = decision_rows(results)
    columns = ["Round", "Rung (epoch)", "Track", "Experiment", "Pairwise", "Leader", "Gap (pts)", "Decision", "Reason"]
    cells = [
        [
            str(r["round"] or MISSING),
            str(r["rung"]) if r["rung"] is not None else MISSING,
            str(r["track"] or MISSING),
            str(r["experiment"] or MISSING),
            fmt_percent(r["metric"]),
            f"{r['leader'] or MISSING} ({fmt_percent(r['leader_metric'])})" if r["leader"] else MISSING,
            fmt_number(r["gap_points"], 1),
            str(r["decision"] or MISSING),
            r["reason"] or MISSING,
        ]
        for r in rows
    ]
    return TableData(
        title="Round-1 rung decisions",
        columns=columns,
        rows=cells,
        highlight=[r["decision"] == "stop" for r in rows],
        styles=["red" if r["decision"] == "stop" else None for r in rows],
        highlight_kind="stop",
        note="A trial more than the gap (10 points by default) behind its track's leader at a rung is stopped.",
    )


def decisions_table(results: Mapping[str, Any]) -> Table:
    """The Round-1 rung decisions (stops in red) as a rich Table."""
    return to_rich(decisions_data(results))


def decisions_markdown(results: Mapping[str, Any]) -> str:
    return to_markdown(decisions_data(results))


# ---------------------------------------------------------------------------------------------- search


def searched(results: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The experiments Round 1 screened as several configurations (``search`` set), in the results' order;
    a results dict from before the search has no ``search`` key and gives []."""
    return [e for e in _experiments(results) if e.get("search")]


def searched_row(results: Mapping[str, Any], experiment: str) -> Mapping[str, Any]:
    """The results row of the searched ``experiment`` (its ``search`` object under "search"; {} if not searched)."""
    return next((e for e in searched(results) if e.get("name") == experiment), {})


def search_params(search: Mapping[str, Any]) -> list[str]:
    """The searched parameters (dotted paths): the space's, in its order, then any a configuration has beyond it."""
    return list(dict.fromkeys([*(search.get("space") or {}),
                               *(p for c in search.get("configs") or [] for p in c.get("params") or {})]))


def param_headers(params: Sequence[str]) -> dict[str, str]:
    """A short name per parameter: its last dotted part ("optim.lr" -> "lr"), the whole path where two would
    share one."""
    short = [p.rsplit(".", 1)[-1] for p in params]
    return {p: s if short.count(s) == 1 else p for p, s in zip(params, short)}


def fmt_param(value: Any, spec: Mapping[str, Any] | None) -> str:
    """A configuration's value of one parameter: ints as ints, log-scale floats as "4.86e-04", other floats
    to 3 significant digits, categorical values as they are. ``spec``: the parameter's entry of the space."""
    spec = spec or {}
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return MISSING if value is None else str(value)
    v = finite(value)
    if v is None:
        return MISSING
    if spec.get("type") == "int" or (isinstance(value, int) and spec.get("type") != "float"):
        return str(int(v))
    return f"{v:.2e}" if spec.get("log") else f"{v:.3g}"


def _state_text(config: Mapping[str, Any]) -> str:
    if config.get("state") == "pruned":
        rung = config.get("stopped_at")
        return f"stopped at rung {rung}" if rung is not None else "stopped"
    return str(config.get("state") or MISSING)


def _whole(x: Any) -> str:
    v = finite(x)
    return MISSING if v is None else str(int(v))


def search_data(results: Mapping[str, Any], experiment: str) -> TableData:
    """A searched experiment's configurations, one row each in the order they were drawn: id (the one Round 2
    took under the experiment's name marked "(best)" and highlighted, another promoted under its own name
    "(promoted)"), one column per searched parameter, state, the last rung reached, validation pairwise
    accuracy there, epochs trained and resource-hours (in the unit of the experiment's track table)."""
    row = searched_row(results, experiment)
    search, unit = row.get("search") or {}, hours_unit(results, row.get("track"))
    params = search_params(search)
    headers = param_headers(params)
    space = search.get("space") or {}
    best, promoted = search.get("best"), set((search.get("promoted") or {}).values())
    configs = search.get("configs") or []
    cells = []
    for c in configs:
        cid = str(c.get("id") or MISSING)
        mark = " (best)" if cid == best else " (promoted)" if cid in promoted else ""
        hours = c.get("resource_hours") or {}
        cells.append([cid + mark, *(fmt_param((c.get("params") or {}).get(p), space.get(p)) for p in params),
                      _state_text(c), _whole(c.get("rung")), fmt_percent(c.get("value")), _whole(c.get("epochs")),
                      fmt_hours(hours.get("gpu_hours" if unit == "GPU" else "cpu_hours"))])
    note = ("Configurations in the order they were drawn (c<k>: trial k of the experiment's Optuna study). Pairwise: "
            "validation pairwise accuracy at the last rung reached (fold 0).")
    if unit == "CPU":
        note += " No GPU was used for this track: the hours column is CPU-hours."
    return TableData(
        title=f"Search: {experiment}",
        columns=["Configuration", *(headers[p] for p in params), "State", "Rung", "Pairwise", "Epochs",
                 f"{unit}-hours"],
        rows=cells,
        highlight=[c.get("id") == best for c in configs],
        styles=["bold green" if c.get("id") == best else "dim" if c.get("state") == "pruned" else None
                for c in configs],
        note=note,
    )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def search_text(results: Mapping[str, Any], experiment: str) -> str:
    """One paragraph on a searched experiment: how many configurations, how many completed Round 1, were stopped
    (at which rungs), failed or still run; which went to Round 2 under which name; and, when Round 1 recorded
    them, the parameters' importances."""
    search = searched_row(results, experiment).get("search") or {}
    configs = search.get("configs") or []
    states = Counter(c.get("state") for c in configs)
    stops = Counter(c.get("stopped_at") for c in configs if c.get("state") == "pruned")
    rungs = sorted(stops, key=lambda r: (r is None, r or 0))
    at = {r: f"at rung {r}" if r is not None else "at an unrecorded rung" for r in rungs}
    where = at[rungs[0]] if len(rungs) == 1 else "(" + ", ".join(f"{stops[r]} {at[r]}" for r in rungs) + ")"
    outcomes = [f"{states['complete']} completed" if states["complete"] else "",
                f"{states['pruned']} stopped {where}" if rungs else "",
                f"{states['failed']} failed" if states["failed"] else "",
                f"{states['running']} still running" if states["running"] else ""]
    were = "was" if len(configs) == 1 else "were"
    text = f"{_count(len(configs), 'configuration')} of {experiment} {were} screened in Round 1"
    text += (": " + ", ".join(o for o in outcomes if o) if any(outcomes) else "") + "."
    promoted = sorted((search.get("promoted") or {}).items(), key=lambda nc: nc[1] != search.get("best"))
    if promoted:
        text += " " + "; ".join(f"{c} went to Round 2 as {n}" if c != n else f"{c} went to Round 2 under its own name"
                                for n, c in promoted) + "."
    else:
        text += " No configuration has gone to Round 2" + (" yet." if states["running"] else ".")
    importance = search.get("importance") or {}
    if importance:
        headers = param_headers(search_params(search))
        ranked = sorted(importance.items(), key=lambda pv: -(finite(pv[1]) or 0.0))
        text += (f" Parameter importance over {_count(states['complete'], 'completed configuration')} (fANOVA; "
                 "indicative only with this few): "
                 + ", ".join(f"{headers.get(p, p)} {fmt_percent(v, 0)}" for p, v in ranked) + ".")
    return text


# ------------------------------------------------------------------------------------------- fusion


def fusion_data(results: Mapping[str, Any]) -> TableData:
    """Round 3: one row per fusion, against the best single encoder it fuses, on the test parts (the mean
    validation pairwise accuracy chose nothing here: it is shown for the fusion track's own ranking)."""
    fusion = results.get("fusion") or {}
    rows = {e.get("name"): e for e in _experiments(results)}
    single = fusion.get("best_single")
    final = (fusion.get("final") or {}).get("model")
    cells, highlight = [], []
    for name, c in (fusion.get("comparisons") or {}).items():
        row = rows.get(name) or {}
        test = row.get("test") or {}
        r2_ci = c.get("r2_ci") or [None, None]
        cells.append([name, fmt_percent((row.get("pairwise_accuracy") or {}).get("mean")),
                      fmt_percent((test.get("pairwise_accuracy") or {}).get("mean")), _text(c.get("versus")),
                      fmt_points(c.get("gap_points")), fmt_ci_points(c.get("ci_points")), _text(c.get("verdict")),
                      _signed(c.get("r2_gap")), MISSING if None in (finite(x) for x in r2_ci) else
                      f"{_signed(r2_ci[0])} to {_signed(r2_ci[1])}", _text(c.get("r2_verdict"))])
        highlight.append(name == final)
    return TableData(
        title="Fusions against the best single encoder",
        columns=["Fusion", "Val pairwise", "Test pairwise", "Best single", "Gap (points)", "95% CI", "Verdict",
                 "R2 gap", "R2 95% CI", "R2 verdict"],
        rows=cells, highlight=highlight,
        note=f"Gaps: the fusion's test pairwise accuracy (and test R2) minus {single or 'the best single encoder'}'s, "
             "per fold on the same passages, with a paired bootstrap over passages across folds. A fusion is the "
             "final model only when its whole pairwise CI is above zero.")


def planted_data(results: Mapping[str, Any]) -> TableData:
    """Round 3's planted score-conditioned pairs: one row per fusion, then per fused winner, with the accuracy
    of telling a take with expressive timing and dynamics from one with wrong notes (chance 50%), pooled over the
    folds' test passages, and its CI over passages."""
    fusion = results.get("fusion") or {}
    planted = fusion.get("planted") or {}
    final = (fusion.get("final") or {}).get("model")
    cells, highlight = [], []
    for name in _fusions_first(fusion, planted):
        p = planted[name]
        ci = p.get("ci") or [None, None]
        cells.append([name, "fusion" if name in (fusion.get("comparisons") or {}) else "single",
                      fmt_percent(p.get("accuracy")), MISSING if None in (finite(x) for x in ci) else
                      f"{fmt_percent(ci[0])} to {fmt_percent(ci[1])}", str(p.get("pairs")), str(p.get("passages")),
                      _text(p.get("verdict"))])
        highlight.append(name == final)
    return TableData(
        title="Planted score-conditioned pairs",
        columns=["Model", "Kind", "Accuracy", "95% CI", "Pairs", "Passages", "Against chance (50%)"],
        rows=cells, highlight=highlight,
        note="Per pair, two takes of one score by one player: every note right with expressive timing and dynamics, "
             "or wrong notes (pitch errors, missing notes) played as written. A model tells them apart when its "
             "overall score (mean over dimensions) is higher for the expressive take; each fold scores the pairs of "
             "its own test passages, and the CI resamples passages. The demo's ratings never see a wrong note.")


def difficulty_data(results: Mapping[str, Any]) -> TableData:
    """Round 3's difficulty figures: per fusion, then fused winner, the difficulty rho of its head (test parts)
    beside its linear probe's, each the mean over the folds that have it."""
    fusion = results.get("fusion") or {}
    difficulty = fusion.get("difficulty") or {}
    cells = []
    for name in _fusions_first(fusion, difficulty):
        d = difficulty[name]
        cells.append([name, "fusion" if name in (fusion.get("comparisons") or {}) else "single",
                      _rho(d.get("head"), d.get("head_folds")), _rho(d.get("probe"), d.get("probe_folds"))])
    return TableData(
        title="Difficulty: the head against the probe",
        columns=["Model", "Kind", "Head rho (test parts)", "Probe rho"],
        rows=cells, highlight=[False] * len(cells),
        note="Spearman rho against the pieces' grades. The head is an auxiliary regression trained with the fusion "
             "on the graded training segments of pieces the fold does not hold out (a held-out piece's grade is "
             "never trained on: folds keep a passage's music together, not a piece's), scored on the test part's "
             "pieces; the probe is a ridge on z, cross-validated over pieces. Each is the mean over folds.")


def _fusions_first(fusion: Mapping[str, Any], by_model: Mapping[str, Any]) -> list[str]:
    """The models of ``by_model``: the fusions in the fusion table's order, then the single encoders."""
    fusions = [n for n in (fusion.get("comparisons") or {}) if n in by_model]
    return fusions + [n for n in by_model if n not in fusions]


def _rho(x: Any, folds: Any) -> str:
    v = finite(x)
    return MISSING if v is None else f"{v:+.2f} ({folds} folds)"


def planted_text(results: Mapping[str, Any]) -> str:
    """Why Round 3 has no planted-pair figure (empty when it has one, or before Round 3)."""
    fusion = results.get("fusion") or {}
    if fusion.get("planted") or not fusion.get("comparisons"):
        return ""
    return f"No planted score-conditioned pairs were scored: {fusion.get('planted_why') or 'no fold scored one'}."


def _signed(x: Any) -> str:
    v = finite(x)
    return MISSING if v is None else f"{v:+.3f}"


def error_correlation_text(results: Mapping[str, Any]) -> str:
    """One sentence on how alike the fused winners err; when Round 3 compared fusions without that figure, one
    saying why it is missing (empty before Round 3)."""
    fusion = results.get("fusion") or {}
    e = fusion.get("error_correlation") or {}
    r, ci = finite(e.get("mean")), e.get("ci") or [None, None]
    if r is None:
        return ("The fused winners' error correlation is not available: their folds kept no test predictions "
                "(a run scored before they were kept), so the R2 gaps have no CI either.") if (
            fusion.get("comparisons") and not e) else ""
    between = " and ".join(e.get("between") or [])
    ci_text = "" if None in (finite(x) for x in ci) else f" (95% CI {ci[0]:.2f} to {ci[1]:.2f})"
    return (f"The errors of {between} on the test parts correlate at r = {r:.2f}{ci_text}, mean over dimensions, "
            f"{e.get('segments')} segments over {e.get('folds')} folds: the closer to 1, the less a fusion can gain "
            "(the seed's concat fusion lost to audio alone at r = 0.74).")


def fusion_text(results: Mapping[str, Any]) -> str:
    """What Round 3 fused and concluded, in one paragraph (empty before Round 3, or without it)."""
    fusion = results.get("fusion") or {}
    if fusion.get("skipped"):
        final = fusion.get("final") or {}
        return f"Round 3 was skipped: {fusion['skipped']}." + (f" Final model: {final['model']}." if final.get(
            "model") else "")
    final = fusion.get("final")
    if not final:
        return ""
    fuses = ", ".join(f"{t} {w}" for t, w in (fusion.get("fuses") or {}).items())
    against = final_reference_text(results)
    not_run = "".join(f" {f} did not run: {why}." for f, why in (fusion.get("not_run") or {}).items())
    return (f"Round 3 fused the winners ({fuses}), frozen at each fold's best Round-2 model.{not_run} Final model: "
            f"{final.get('model') or MISSING} ({final.get('kind')}): {final.get('reason')}."
            + (f" {against}" if against else ""))


def _text(x: Any) -> str:
    return MISSING if x is None or x == "" else str(x)


# ------------------------------------------------------------------------------------------- selection


def fmt_points(x: Any, *, signed: bool = True) -> str:
    """Percentage points: 0.43 -> "+0.4"."""
    v = finite(x)
    return MISSING if v is None else (f"{v:+.1f}" if signed else f"{v:.1f}")


def fmt_ci_points(ci: Sequence[Any] | None) -> str:
    """A CI in points: "-2.1 to +2.9" (an em dash when there is none)."""
    if not ci or len(ci) != 2 or finite(ci[0]) is None or finite(ci[1]) is None:
        return MISSING
    return f"{fmt_points(ci[0])} to {fmt_points(ci[1])}"


def _selection(results: Mapping[str, Any], track: str) -> Mapping[str, Any]:
    return (results.get("selection") or {}).get(track) or {}


def _support(d: Mapping[str, Any]) -> str:
    n, p = finite(d.get("folds")), finite(d.get("passages"))
    text = f"{int(n)} fold{'s' if n != 1 else ''}, {int(p)} passages" if n and p else ""
    left = finite(d.get("passages_left_out"))
    if left:
        text += f", {int(left)} left out (not scored alike)"
    return text


def margin_text(results: Mapping[str, Any], track: str) -> str | None:
    """One sentence on the winner's margin over the runner-up (inner validation), or None without a winner."""
    m = _selection(results, track).get("margin")
    if not m or not m.get("winner"):
        return None
    if not m.get("runner_up"):
        return f"{m['winner']} had no runner-up: it was the only candidate of the {track} track in Round 2."
    how = " (chosen on R2 among candidates within the tie tolerance)" if m.get("decided_by") == "r2" else ""
    head = (f"Margin of {m['winner']}{how} over the runner-up {m['runner_up']} on the inner validation splits: "
            f"{fmt_points(m.get('gap_points'))} points")
    ci = m.get("ci_points")
    if finite((ci or [None])[0]) is None:
        return head + " (no per-passage statistics recorded, so no CI)."
    tie = m.get("statistical_tie")
    verdict = ("a statistical tie: the CI covers 0, so this data does not separate the two" if tie
               else "the lead holds: the CI excludes 0")
    return f"{head} (95% CI {fmt_ci_points(ci)}; {_support(m)}): {verdict}."


def _verdict_text(verdict: Any) -> str:
    return {"beats": "beats it", "below": "falls below it",
            "no clear difference": "no clear difference (the CI covers 0)"}.get(verdict, "not decided (no CI)")


def reference_text(results: Mapping[str, Any], track: str) -> str | None:
    """One sentence on whether the winner beats the track's best reference on the test parts, or None without
    a winner."""
    sel = _selection(results, track)
    v = sel.get("versus_reference")
    if not sel.get("winner"):
        return None
    if not v:
        return f"{sel['winner']} has no reference to beat: no reference of the {track} track reached Round 2."
    return versus_text(v)


def final_reference_text(results: Mapping[str, Any]) -> str | None:
    """One sentence on the run's final model (Round 3's verdict) against the strongest reference of the fused
    tracks on the test parts, as :func:`reference_text` says it of a track's winner; None without one."""
    v = ((results.get("fusion") or {}).get("final") or {}).get("versus_references")
    return versus_text(v) if v else None


def versus_text(v: Mapping[str, Any]) -> str:
    """A model against its best reference and the others (``selection.versus_references``' shape)."""
    text = (f"{v['winner']} against the best reference, {v['reference']}, on the test parts (reported, never used "
            f"to choose): {fmt_points(v.get('gap_points'))} points")
    if finite((v.get("ci_points") or [None])[0]) is not None:
        text += f" (95% CI {fmt_ci_points(v.get('ci_points'))}; {_support(v)})"
    text += f": {_verdict_text(v.get('verdict'))}."
    others = [r for r in v.get("references") or [] if r.get("reference") != v.get("reference")]
    if others:
        text += " Other references: " + "; ".join(
            f"{r['reference']} {fmt_points(r.get('gap_points'))} ({fmt_ci_points(r.get('ci_points'))}): "
            f"{_verdict_text(r.get('verdict'))}" for r in others) + "."
    return text


def margin_data(results: Mapping[str, Any]) -> TableData:
    """Per track: the winner, the runner-up, the margin on inner validation with its paired CI, and whether it
    is a statistical tie."""
    cells, tie_flags = [], []
    for track in sorted(set(track_names(results)) | set((results.get("selection") or {}))):
        m = _selection(results, track).get("margin")
        if not m or not m.get("winner"):
            continue
        tie = m.get("statistical_tie")
        cells.append([track, str(m["winner"]), str(m.get("runner_up") or MISSING), fmt_percent(m.get("winner_mean")),
                      fmt_percent(m.get("runner_up_mean")), fmt_points(m.get("gap_points")),
                      fmt_ci_points(m.get("ci_points")),
                      MISSING if tie is None else ("statistical tie" if tie else "lead holds"),
                      "R2 (within tolerance)" if m.get("decided_by") == "r2" else "pairwise"])
        tie_flags.append(bool(tie))
    tol = next((finite(_selection(results, t).get("tie_tolerance_points")) for t in (results.get("selection") or {})
                if finite(_selection(results, t).get("tie_tolerance_points")) is not None), None)
    note = ("Mean validation pairwise accuracy over the Round-2 folds; margin = winner - runner-up in points, 95% CI "
            "from a paired bootstrap over inner-validation passages, stratified by fold. A CI that covers 0 is a "
            "statistical tie.")
    if tol is not None:
        note += f" R2 decides only between candidates within {tol:.1f} points of the leader."
    return TableData(
        title="Winner margins (inner validation)",
        columns=["Track", "Winner", "Runner-up", "Winner pairwise", "Runner-up pairwise", "Margin (pts)", "95% CI",
                 "Verdict", "Decided by"],
        rows=cells, highlight=tie_flags, styles=["yellow" if t else None for t in tie_flags], note=note)


def reference_data(results: Mapping[str, Any]) -> TableData:
    """Per track and reference: the winner's test pairwise accuracy minus the reference's, with the paired CI
    over test passages; the best reference (highest test pairwise) first and highlighted."""
    cells, best = [], []
    for track in sorted(set(track_names(results)) | set((results.get("selection") or {}))):
        v = _selection(results, track).get("versus_reference")
        if not v:
            continue
        for i, r in enumerate(v.get("references") or [v]):
            cells.append([track, str(v.get("winner")), str(r.get("reference")), fmt_percent(v.get("winner_mean")),
                          fmt_percent(r.get("reference_mean")), fmt_points(r.get("gap_points")),
                          fmt_ci_points(r.get("ci_points")), str(r.get("verdict") or MISSING)])
            best.append(i == 0)
    return TableData(
        title="Winners against references (test parts)",
        columns=["Track", "Winner", "Reference", "Winner test pairwise", "Reference test pairwise", "Gap (pts)",
                 "95% CI", "Verdict"],
        rows=cells, highlight=best,
        note=("Test parts are reported, never used to choose. Gap = winner - reference in points, 95% CI from a "
              "paired bootstrap over test passages, stratified by fold; 'beats' only when the whole CI is above 0. "
              "The first row of a track is its best reference."))


# ----------------------------------------------------------------------------------- folds and hours


def fold_data(results: Mapping[str, Any]) -> TableData:
    """Per-fold figures of every experiment that has folds (Round 2), experiments in comparison order."""
    order = {r["name"]: i for t in track_names(results) for i, r in enumerate(comparison_rows(results, t))}
    exps = sorted(
        (e for e in _experiments(results) if e.get("folds")),
        key=lambda e: (str(e.get("track")), order.get(e.get("name"), 1 << 30)),
    )
    cells = []
    for e in exps:
        for f in sorted(e["folds"], key=lambda f: finite(f.get("fold")) or 0):
            cells.append(
                [
                    str(e.get("name")),
                    str(e.get("track") or MISSING),
                    str(f.get("fold", MISSING)),
                    fmt_percent(f.get("val_pairwise")),
                    fmt_number(f.get("val_r2")),
                    fmt_percent(f.get("test_pairwise")),
                    fmt_number(f.get("test_r2")),
                    _epoch_text(f.get("best_epoch"), f.get("epochs")),
                ]
            )
    return TableData(
        title="Per-fold results",
        columns=["Experiment", "Track", "Fold", "Val pairwise", "Val R2", "Test pairwise", "Test R2", "Best / epochs"],
        rows=cells,
    )


def _epoch_text(best: Any, total: Any) -> str:
    b, t = finite(best), finite(total)
    return f"{int(b) if b is not None else MISSING} / {int(t) if t is not None else MISSING}"


def resource_data(results: Mapping[str, Any]) -> TableData:
    """GPU- and CPU-hours per experiment, with a total row."""
    cells, gpu_total, cpu_total = [], 0.0, 0.0
    for t in track_names(results):
        for r in comparison_rows(results, t):
            gpu_total += r["gpu_hours"] or 0.0
            cpu_total += r["cpu_hours"] or 0.0
            cells.append([r["experiment"], t, r["furthest_round"] or MISSING, fmt_hours(r["gpu_hours"]),
                          fmt_hours(r["cpu_hours"])])
    highlight = [False] * len(cells)
    if cells:
        cells.append(["Total", "", "", fmt_hours(gpu_total), fmt_hours(cpu_total)])
        highlight.append(True)
    return TableData(
        title="Resource hours",
        columns=["Experiment", "Track", "Furthest round", "GPU-hours", "CPU-hours"],
        rows=cells,
        highlight=highlight,
        note="Hours are resources held x wall time, summed over every trial and fold of the experiment.",
    )


def track_names(results: Mapping[str, Any], *, present: bool = True) -> list[str]:
    """The run's tracks in the order it recorded (``results["tracks"]``, from the registry), then any other
    an experiment names; with ``present`` only those some experiment belongs to."""
    recorded = [str(t["name"]) for t in results.get("tracks") or [] if isinstance(t, Mapping) and t.get("name")]
    seen = [str(e["track"]) for e in _experiments(results) if e.get("track")]
    names = list(dict.fromkeys(recorded + seen))
    return [t for t in names if t in seen] if present else names



# -------------------------------------------------------------------------------------------- renderers


_MD_ACTIVE = set("\\`*_[]<>|")


def md_text(text: Any) -> str:
    """``text`` safe inside markdown: characters markdown would act on (emphasis, links, raw HTML such as
    ``<script>``, table pipes) are backslash-escaped, and newlines flattened so a table row stays one line."""
    return "".join("\\" + ch if ch in _MD_ACTIVE else ch for ch in str(text)).replace("\n", " ")


def to_markdown(data: TableData) -> str:
    """GitHub markdown: a header row, a separator, one line per row (highlighted rows in bold)."""
    lines = ["| " + " | ".join(md_text(c) for c in data.columns) + " |",
             "|" + "|".join("---" for _ in data.columns) + "|"]
    if not data.rows:
        lines.append("| " + " | ".join(["_(none)_"] + [""] * (len(data.columns) - 1)) + " |")
    for i, row in enumerate(data.rows):
        bold = i < len(data.highlight) and data.highlight[i]
        lines.append("| " + " | ".join(
            (f"**{md_text(c)}**" if bold and c else md_text(c)) for c in row) + " |")
    return "\n".join(lines) + "\n"


def to_rich(data: TableData) -> Table:
    table = Table(title=data.title, caption=data.note or None, caption_justify="left")
    for i, c in enumerate(data.columns):
        table.add_column(c, justify="left" if i == 0 or c in ("Reason", "Status", "Decision") else "right")
    for i, row in enumerate(data.rows):
        style = data.styles[i] if i < len(data.styles) else None
        if i < len(data.highlight) and data.highlight[i] and not style:
            style = "bold"
        table.add_row(*row, style=style)
    return table


__all__: Sequence[str] = [
    "TableData",
    "comparison_rows",
    "comparison_data",
    "comparison_table",
    "comparison_markdown",
    "decision_rows",
    "decisions_data",
    "decisions_table",
    "decisions_markdown",
    "searched",
    "searched_row",
    "search_data",
    "search_text",
    "fold_data",
    "resource_data",
    "margin_data",
    "reference_data",
    "margin_text",
    "reference_text",
    "hours_unit",
    "to_markdown",
    "md_text",
    "to_rich",
    "track_names",
    "finite",
]
