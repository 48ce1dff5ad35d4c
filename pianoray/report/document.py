"""The run report as files: report.md, report.html (self-contained apart from the PNGs beside it, referenced
by relative path), the PNG figures and results.json, all written into one folder.

The document is first built as a list of blocks (heading, paragraph, list, table, image); the markdown and
HTML renderers walk the same blocks, so the two files always carry the same content. Every piece of text
that came from the run (experiment names, reasons, explanations, paths) is escaped for the format it lands
in. Each file is written to a temporary name and renamed, so a reader (a browser refreshing a report of a
run still in progress) never sees half a file.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

from pianoray.files import atomic_write
from pianoray.report.plots import gates_key, importance_key, plot_all
from pianoray.report.tables import (
    MISSING,
    TableData,
    comparison_data,
    decisions_data,
    difficulty_data,
    error_correlation_text,
    fold_data,
    fusion_data,
    fusion_text,
    margin_data,
    margin_text,
    md_text,
    planted_data,
    planted_text,
    reference_data,
    reference_text,
    resource_data,
    search_data,
    search_text,
    searched,
    to_markdown,
    track_names,
)

# Published figures, for context only: other labels (19 raw PercePiano dims, not our composites) and other folds.
ANCHORS_NOTE = "For context, not comparable: different labels/folds."
ANCHORS = TableData(
    title="Published anchors",
    columns=["Model", "Source", "Split", "R2", "Pairwise"],
    rows=[
        ["Bi-LSTM", "PercePiano (Park et al., Sci. Rep. 2024)", "piece", "0.185", MISSING],
        ["MidiBERT", "PercePiano (Park et al., Sci. Rep. 2024)", "piece", "0.313", MISSING],
        ["Bi-LSTM + score alignment", "PercePiano (Park et al., Sci. Rep. 2024)", "piece", "0.360", MISSING],
        ["Bi-LSTM + score alignment + HAN", "PercePiano (Park et al., Sci. Rep. 2024)", "piece", "0.397", MISSING],
        ["Frozen MuQ (regression)", "seed baseline", "seed folds", "0.537", MISSING],
        ["Contrastive ranker", "seed baseline", "seed folds", MISSING, "84%"],
    ],
    note=ANCHORS_NOTE + " PercePiano reports R2 over its 19 dimensions; the seed's folds later proved to leak passages.",
)


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Bullets:
    items: list[str]


@dataclass(frozen=True)
class Image:
    src: str  # relative to the report folder
    alt: str


@dataclass(frozen=True)
class TableBlock:
    data: TableData


Block = Union[Heading, Paragraph, Bullets, Image, TableBlock]


# ----------------------------------------------------------------------------------------------- content


def _text(x: Any) -> str:
    return MISSING if x is None or x == "" else str(x)


def build_blocks(results: Mapping[str, Any], images: Mapping[str, Path]) -> list[Block]:
    """The report's content, in order. ``images`` maps figure keys (as :func:`plot_all` returns them) to
    PNG paths; only their file names are used (the PNGs sit beside the report)."""
    run = results.get("run") or {}
    blocks: list[Block] = [Heading(f"pianoray run report: {_text(run.get('name'))}", 1)]
    blocks.append(Bullets([
        f"Status: {_text(run.get('status'))}",
        f"Started: {_text(run.get('started'))}; finished: {_text(run.get('finished'))}",
        f"Config: {_text(run.get('config'))}",
        f"Storage: {_text(run.get('storage'))}",
        f"Dashboard: {_text(run.get('dashboard'))}",
        f"Label dimensions: {', '.join(map(str, results.get('dimensions') or [])) or MISSING}",
        f"Folds: {_text((run.get('folds') or {}).get('statement'))}",
    ]))

    blocks.append(Heading("Summary"))
    winners = results.get("winners") or {}
    selection = results.get("selection") or {}
    tracks = track_names(results) or track_names(results, present=False)
    summary = []
    for track in sorted(set(tracks) | set(winners) | set(selection), key=lambda t: (t not in tracks, t)):
        sel = selection.get(track) or {}
        winner = winners.get(track) or sel.get("winner")
        head = f"{track.capitalize()} winner: {winner}" if winner else f"{track.capitalize()}: no winner selected"
        why = sel.get("explanation")
        summary.append(head + (f". {why}" if why else "."))
        summary += [line for line in (margin_text(results, track), reference_text(results, track)) if line]
    blocks.append(Bullets(summary or ["No track recorded yet: no winner selected."]))
    tol = next((sel.get("tie_tolerance_points") for sel in selection.values()
                if isinstance(sel, Mapping) and sel.get("tie_tolerance_points") is not None), None)
    blocks.append(Paragraph(
        "Winners are chosen per track by mean validation pairwise accuracy over the Round-2 folds; R2 decides only "
        "between candidates within " + (f"{tol:.1f} points" if tol is not None else "the tie tolerance") + " of the "
        "leader; an experiment whose pairwise accuracy drops more than 15% under augmentation is vetoed. The "
        "margin's CI and the comparison with the references come from paired bootstraps over passages, stratified "
        "by fold; the test parts are reported, never used to choose."))
    blocks += [Heading("Selection: margins and references"), TableBlock(margin_data(results)),
               TableBlock(reference_data(results))]

    blocks += pretraining_blocks(results)
    if text := fusion_text(results):
        blocks.append(Heading("Round 3: fusion"))
        blocks.append(Paragraph(text))
        if (results.get("fusion") or {}).get("comparisons"):
            blocks.append(TableBlock(fusion_data(results)))
        if text := error_correlation_text(results):
            blocks.append(Paragraph(text))
        if (results.get("fusion") or {}).get("planted"):
            blocks.append(TableBlock(planted_data(results)))
        elif text := planted_text(results):
            blocks.append(Paragraph(text))
        if (results.get("fusion") or {}).get("difficulty"):
            blocks.append(TableBlock(difficulty_data(results)))
        for fusion in (results.get("fusion") or {}).get("gates") or {}:
            if gates_key(fusion) in images:
                blocks.append(_image(images, gates_key(fusion), f"Mean gate per dimension, {fusion}"))

    blocks.append(Heading("Comparison per track"))
    for track in track_names(results):
        data = comparison_data(results, track)
        blocks += [Heading(data.title, 3), TableBlock(data)]
    if not track_names(results):
        blocks.append(Paragraph("No experiments recorded yet."))

    blocks.append(Heading("Per-dimension pairwise accuracy"))
    blocks.append(_image(images, "per_dimension", "Per-dimension pairwise accuracy per experiment"))

    blocks.append(Heading("Learning curves"))
    blocks.append(Paragraph("Validation pairwise accuracy per supervised epoch (the epochs the scheduler counts, so "
                            "a self-supervised stage, dashed, sits at epoch 0 and before). Round 1: fold 0, with a "
                            "dotted line at each rung and an X where a trial was stopped (its gap to the leader in "
                            "points). Round 2: each fold faint, the mean over folds bold."))
    for key in sorted(k for k in images if k.startswith("learning_curves_")):
        blocks.append(_image(images, key, key.replace("learning_curves_", "Learning curves, ")))

    blocks.append(Heading("Elimination timeline"))
    blocks.append(_image(images, "timeline", "Elimination timeline"))

    decisions = decisions_data(results)
    blocks += [Heading("Round-1 decisions"), TableBlock(decisions)]
    blocks += search_blocks(results, images)
    folds = fold_data(results)
    blocks += [Heading("Per-fold results"), TableBlock(folds)]
    blocks += [Heading("Resource hours"), TableBlock(resource_data(results))]
    blocks += [Heading("Published anchors"), Paragraph(ANCHORS_NOTE), TableBlock(ANCHORS)]
    return blocks


def pretraining_blocks(results: Mapping[str, Any]) -> list[Block]:
    """One sentence per pretrained experiment: whether its self-supervised pretraining saw the evaluation
    folds' MIDI (a shared pretraining over the corpus does; its labels never), since that bears on every
    test figure of the encoders that start from it."""
    from pianoray.training.provenance import describe

    records = results.get("pretraining") or {}
    if not records:
        return [Heading("Self-supervised pretraining"), Paragraph("No self-supervised pretraining is recorded for this run.")]
    return [Heading("Self-supervised pretraining"), Bullets([describe(records[n]) for n in sorted(records)])]


def search_blocks(results: Mapping[str, Any], images: Mapping[str, Path]) -> list[Block]:
    """The "Round-1 search" section: per searched experiment its configurations' table, a paragraph on how they
    fared and which went to Round 2, and its parameter-importance figure when Round 1 recorded importances.
    Empty for a run without a search, so its report is as before."""
    blocks: list[Block] = []
    for e in searched(results):
        name = str(e.get("name"))
        data = search_data(results, name)
        blocks += [Heading(data.title, 3), TableBlock(data), Paragraph(search_text(results, name))]
        if importance_key(name) in images:
            blocks.append(_image(images, importance_key(name), f"Parameter importance, {name}"))
    return [Heading("Round-1 search"), *blocks] if blocks else []


def _image(images: Mapping[str, Path], key: str, alt: str) -> Block:
    path = images.get(key)
    return Image(Path(path).name, alt) if path is not None else Paragraph(f"({alt}: no figure)")


# --------------------------------------------------------------------------------------------- renderers


def render_markdown(blocks: Sequence[Block]) -> str:
    out: list[str] = []
    for b in blocks:
        if isinstance(b, Heading):
            out.append("#" * b.level + " " + md_text(b.text))
        elif isinstance(b, Paragraph):
            out.append(md_text(b.text))
        elif isinstance(b, Bullets):
            out.append("\n".join(f"- {md_text(i)}" for i in b.items))
        elif isinstance(b, Image):
            out.append(f"![{md_text(b.alt)}]({b.src})")
        elif isinstance(b, TableBlock):
            out.append(to_markdown(b.data).rstrip("\n") + (f"\n\n_{md_text(b.data.note)}_" if b.data.note else ""))
    return "\n\n".join(out) + "\n"


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; max-width: 1200px; margin: 2em auto;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; vertical-align: top; }
th { background: #f3f3f3; }
td:first-child, th:first-child, td.text { text-align: left; }
tr.highlight td { font-weight: bold; background: #eef8ee; }
tr.stop td { background: #fbeeee; }
p.note { color: #555; font-size: 0.88em; margin-top: 0; }
img { max-width: 100%; border: 1px solid #eee; }
"""
_TEXT_COLUMNS = {"Reason", "Status", "Decision", "Source", "Model", "Experiment", "Track", "Leader", "Winner",
                 "Runner-up", "Reference", "Verdict", "Decided by", "Configuration", "State"}


def _html_table(data: TableData) -> str:
    e = html.escape
    head = "".join(f"<th>{e(c)}</th>" for c in data.columns)
    text_cols = {j for j, c in enumerate(data.columns) if c in _TEXT_COLUMNS}
    body = []
    for i, row in enumerate(data.rows):
        hl = i < len(data.highlight) and data.highlight[i]
        cls = data.highlight_kind if hl else ""
        cells = "".join(f'<td class="text">{e(c)}</td>' if j in text_cols else f"<td>{e(c)}</td>"
                        for j, c in enumerate(row))
        body.append(f'<tr class="{cls}">{cells}</tr>' if cls else f"<tr>{cells}</tr>")
    if not data.rows:
        body.append(f'<tr><td colspan="{len(data.columns)}"><em>(none)</em></td></tr>')
    note = f'<p class="note">{e(data.note)}</p>' if data.note else ""
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n" + "\n".join(body) + "\n</tbody>\n</table>\n" + note


def render_html(blocks: Sequence[Block]) -> str:
    e = html.escape
    title = next((b.text for b in blocks if isinstance(b, Heading) and b.level == 1), "pianoray report")
    parts = []
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{e(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{e(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Image):
            parts.append(f'<figure><img src="{e(b.src)}" alt="{e(b.alt)}"></figure>')
        elif isinstance(b, TableBlock):
            parts.append(_html_table(b.data))
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{e(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
            + "\n".join(parts) + "\n</body>\n</html>\n")


# ------------------------------------------------------------------------------------------------ writing


def json_safe(obj: Any) -> Any:
    """``obj`` with NaN/inf replaced by None, so results.json is strict JSON (NaN is not JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def _write_text(path: Path, text: str) -> Path:
    return atomic_write(path, text)


def write_report(results: Mapping[str, Any], out_dir: Path | str) -> dict[str, Path]:
    """Write the whole report into ``out_dir`` (created if needed) and return what was written:
    ``markdown`` (report.md), ``html`` (report.html), ``json`` (results.json) and one key per PNG
    (``per_dimension``, ``timeline``, ``learning_curves_<round>``, ``importance_<experiment>`` of a searched
    experiment with importances). Re-running overwrites in place."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images = plot_all(results, out)
    blocks = build_blocks(results, images)
    written: dict[str, Path] = dict(images)
    written["json"] = _write_text(out / "results.json",
                                  json.dumps(json_safe(results), indent=2, sort_keys=True, allow_nan=False) + "\n")
    written["markdown"] = _write_text(out / "report.md", render_markdown(blocks))
    written["html"] = _write_text(out / "report.html", render_html(blocks))
    return written
