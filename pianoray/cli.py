"""The ``pianoray`` command line.

Every problem a user can cause (a bad config field, a missing file, corrupt MIDI) ends as one line on
stderr naming the file, key or field, with exit code 2 and no traceback.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.table import Table

from pianoray.config import ProtocolConfig, load_config
from pianoray.errors import PianorayError
from pianoray.feedback import Feedback
from pianoray.settings import shared_data_dir
from pianoray.terminal import console_for

app = typer.Typer(
    help="Staged elimination of piano-performance evaluation encoders on Ray.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Build and inspect data: demo corpus, folds, labels, symbolic caches.", no_args_is_help=True)
app.add_typer(data_app, name="data")

console = console_for()
err = console_for(stderr=True)

EXIT_USAGE = 2
RUN_FOLDER_HELP = "The run folder (STORAGE/NAME), local or s3:// (default: where a plain `pianoray run` writes)."


class UserError(PianorayError):
    """A problem the user can fix; printed as-is, exit 2."""


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn the project's error types (``pianoray.errors.PianorayError``: a problem the user can fix, raised
    where it is found) into one-line messages and exit code 2; so too an operating-system error on a path (an
    ``--out`` that is a folder, a ``--storage`` under a regular file, no permission, a full disk): one line
    naming the path. Any other exception is a bug: it propagates with its traceback."""
    try:
        yield
    except PianorayError as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        _error_lines(str(msg))
        raise typer.Exit(EXIT_USAGE) from None
    except OSError as e:
        if e.filename is None:
            raise  # no path to name: not the user's to fix from a message
        where = f"{e.filename} -> {e.filename2}" if e.filename2 else str(e.filename)
        _error_lines(f"{where}: {e.strerror or type(e).__name__}")
        raise typer.Exit(EXIT_USAGE) from None


def _error_lines(msg: str) -> None:
    for line in msg.splitlines() or ["error"]:
        err.print(f"[red]error:[/red] {line}", highlight=False, soft_wrap=True)


def _feedback(as_json: bool = False) -> Feedback:
    """Lines and bars for a person: on stdout, or on stderr when stdout carries one JSON object."""
    from pianoray.terminal import RichFeedback

    return RichFeedback(err if as_json else console)


def _config(config: Optional[Path], data: Optional[Path]) -> ProtocolConfig:
    overrides = {"data": {"root": str(data.resolve())}} if data is not None else None
    return load_config(config, overrides)


def _default_percepiano() -> Path:
    return shared_data_dir() / "percepiano"


# --------------------------------------------------------------------------------------------- data


@data_app.command("demo")
def data_demo(
    out: Path = typer.Option(..., "--out", help="Folder to write the demo corpus into."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same corpus."),
    scale: float = typer.Option(1.0, help="Size multiplier (1 = minutes-long protocol on 2 CPUs)."),
) -> None:
    """Generate the built-in demo corpus (all four tiers, MIDI, labels, grades, STOP labels)."""
    from pianoray.data.demo import generate_demo

    with user_errors():
        if scale <= 0:
            raise UserError(f"--scale: must be > 0, got {scale}")
        with console.status(f"generating demo corpus (seed {seed}, scale {scale})"):
            root = generate_demo(out, seed=seed, scale=scale)
        _print_corpus_summary(root)


def _print_corpus_summary(root: Path) -> None:
    from pianoray.config import DataConfig
    from pianoray.data.corpus import open_corpus

    corpus = open_corpus(DataConfig(root=root))
    table = Table(title=f"corpus {root}")
    table.add_column("tier")
    table.add_column("segments", justify="right")
    table.add_column("frames", justify="right")
    for tier in corpus.tiers:
        m = corpus.manifest(tier)
        frames = int(m["n_frames"].sum()) if "n_frames" in m and len(m) else 0
        table.add_row(tier.name, str(len(m)), str(frames))
    console.print(table)


@data_app.command("folds")
def data_folds(
    out: Path = typer.Option(..., "--out", help="JSON file to write."),
    percepiano: Optional[Path] = typer.Option(None, help="PercePiano folder (default: the shared data's)."),
    asap: Optional[Path] = typer.Option(None, help="ASAP folder instead: a passage (and its music) is the piece."),
    data: Optional[Path] = typer.Option(None, "--data", help="A pianoray cache (e.g. the demo) instead."),
    k: int = typer.Option(4, min=2, help="Number of folds."),
    unit: str = typer.Option("music", help="music (never split music shared by passages), passage, or performer."),
    val_fraction: float = typer.Option(0.2, help="Inner validation share of each training part."),
    seed: int = typer.Option(42),
) -> None:
    """Write piece-stratified k-fold splits (with inner validation splits) as versioned JSON."""
    from pianoray.data import folds as folds_mod

    with user_errors():
        if unit not in folds_mod.UNITS:
            raise UserError(f"--unit: must be one of {', '.join(folds_mod.UNITS)}, got {unit!r}")
        fs, source = _make_cli_folds(percepiano, asap, data, k=k, unit=unit, val_fraction=val_fraction, seed=seed)
        fs.save(out)
        _print_folds(fs, source)
        console.print(f"wrote {out}")


def _make_cli_folds(percepiano: Optional[Path], asap: Optional[Path], data: Optional[Path], **kw):
    import pandas as pd

    from pianoray.data import folds as folds_mod

    chosen = [x for x in (percepiano, asap, data) if x is not None]
    if len(chosen) > 1:
        raise UserError("give only one of --percepiano, --asap, --data")
    if asap is not None:
        meta = asap / "metadata.csv"
        if not meta.is_file():
            raise UserError(f"{meta}: ASAP metadata.csv not found")
        df = pd.read_csv(meta)
        keys = df["midi_performance"].tolist()
        table = pd.DataFrame({"segment_id": keys, "piece": df["folder"],
                              "performer": [Path(p).stem.rstrip("0123456789M").rstrip("_") for p in keys]})
        # ASAP has no passages: a piece (its folder) is the unit of music, so its music group is itself.
        table["passage"] = table["piece"]
        music = {p: p for p in table["piece"]}
        keys, groups, strata = folds_mod.fold_units(table, kw["unit"], music)
        fs = folds_mod.make_folds(keys, groups, strata=strata,
                                  music_groups={p: [p] for p in music} if kw["unit"] == "music" else None, **kw)
        return fs, str(asap)
    from pianoray.config import DataConfig
    from pianoray.data.corpus import open_corpus

    if data is not None:
        corpus, source = open_corpus(DataConfig(root=data)), str(data)
    else:
        root = percepiano or _default_percepiano()
        corpus, source = open_corpus(DataConfig(root=root, source="percepiano")), str(root)
    return folds_mod.corpus_folds(corpus, **kw), source


def _print_folds(fs, source: str) -> None:
    from collections import Counter

    from pianoray.data.folds import describe_unit

    sizes = Counter(fs.groups.values())
    largest, n_largest = sizes.most_common(1)[0]
    passages = len((fs.music_groups or {}).get(largest, ())) if fs.unit == "music" else 1
    console.print(f"{describe_unit(fs)}", highlight=False)
    console.print(f"largest {fs.unit} group: {largest} ({n_largest} segments"
                  + (f", {passages} passages)" if fs.unit == "music" else ")"), highlight=False)
    table = Table(title=f"{fs.k} folds over {len(fs.groups)} segments of {source} (unit: {fs.unit})")
    for col in ("fold", "train", "val", "test", f"test {fs.unit} groups"):
        table.add_column(col, justify="right")
    for i, f in enumerate(fs.folds):
        table.add_row(str(i), str(len(f.train)), str(len(f.val)), str(len(f.test)),
                      str(len({fs.groups[x] for x in f.test})))
    console.print(table)


@data_app.command("labels")
def data_labels(
    out: Path = typer.Option(..., "--out", help="labels.json to write (segment id -> {dimension: value})."),
    percepiano: Optional[Path] = typer.Option(None, help="PercePiano folder (default: the shared data's)."),
    taxonomy: Optional[Path] = typer.Option(None, help="taxonomy.json (default: the shipped 6 dimensions)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Data root holding percepiano/ instead."),
) -> None:
    """Build composite labels from PercePiano's 19 dimensions through a taxonomy."""
    from pianoray.data.labels import build_composite_labels, write_labels_json
    from pianoray.data.percepiano import load_percepiano
    from pianoray.data.taxonomy import Taxonomy

    with user_errors():
        root = percepiano or (data / "percepiano" if data is not None else _default_percepiano())
        tax = Taxonomy.load(taxonomy) if taxonomy is not None else Taxonomy.default()
        df = load_percepiano(root)
        labels = build_composite_labels(dict(zip(df["segment_id"], df["labels19"])), tax)
        write_labels_json(out, labels)
        table = Table(title=f"{len(tax.names)} composite dimensions over {len(labels)} segments")
        for col in ("dimension", "mean", "std", "min", "max"):
            table.add_column(col, justify="right" if col != "dimension" else "left")
        import numpy as np

        values = np.array([[v[n] for n in tax.names] for v in labels.values()])
        for j, name in enumerate(tax.names):
            col = values[:, j]
            table.add_row(name, f"{col.mean():.3f}", f"{col.std():.3f}", f"{col.min():.3f}", f"{col.max():.3f}")
        console.print(table)
        console.print(f"wrote {out}")


# ----------------------------------------------------------------------------------------- validate


@app.command()
def validate(
    config: Path = typer.Option(..., "--config", help="Protocol YAML (e.g. experiments/demo.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
) -> None:
    """Check a config and its data before anything runs: one line per problem, exit 2 if any."""
    from pianoray.validation import validate_all

    with user_errors():
        cfg = _config(config, data)
        with console.status("checking data"):
            problems, summary = validate_all(cfg)
    for line in summary:
        console.print(line, highlight=False)
    if problems:
        for p in problems:
            err.print(f"[red]error:[/red] {p}", highlight=False, soft_wrap=True)
        err.print(f"{len(problems)} problem(s) in {config}")
        raise typer.Exit(EXIT_USAGE)
    console.print(f"[green]ok[/green]: {config} and its data are valid")


# -------------------------------------------------------------------------------------------- train


@app.command()
def train(
    experiment: str = typer.Option(..., "--experiment", help="Registered experiment name (see `pianoray experiments`)."),
    fold: int = typer.Option(0, "--fold", help="Fold index."),
    config: Optional[Path] = typer.Option(None, "--config", help="Protocol YAML (default: experiments/demo.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
    epochs: Optional[int] = typer.Option(None, help="Budget (default: the config's round-2 epochs)."),
    patience: Optional[int] = typer.Option(None, help="Early-stopping patience (default: round 2's)."),
    out: Optional[Path] = typer.Option(None, help="Checkpoint folder (top-3 + latest); resumes if it has one."),
    as_json: bool = typer.Option(False, "--json", help="End with one JSON object on stdout."),
) -> None:
    """Train one experiment on one fold in-process, without Ray (the reference for Ray overhead)."""
    from pianoray.terminal import EpochTable, train_summary
    from pianoray.training.runner import train_one

    shown = err if as_json else console
    with user_errors():
        cfg = _config(config or _default_config(), data)
        _checked(cfg, only=experiment, as_json=as_json)
        table = EpochTable(f"{experiment} · fold {fold} · {cfg.data.labels} labels")
        with table.shown(shown):
            result = train_one(cfg, experiment, fold, epochs=epochs, patience=patience, out=out,
                               feedback=_feedback(as_json), on_epoch=table.add)
    if as_json:
        print(json.dumps(result, default=float))
    else:
        console.print(train_summary(result), highlight=False)


@app.command()
def pretrain(
    experiment: str = typer.Option(..., "--experiment", help="An experiment whose encoder has a pretraining task (S1, S2, S2H, S3)."),
    midi: Optional[Path] = typer.Option(None, "--midi", help="MIDI folder (default: the config's pretrain.midi + corpus MIDI)."),
    epochs: Optional[int] = typer.Option(None, help="Epochs (default: the config's pretrain.epochs)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Protocol YAML (default: experiments/demo.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
) -> None:
    """Pretrain an encoder on a MIDI folder; the result is cached by corpus hash and config."""
    from pianoray.training.data import ExperimentData
    from pianoray.training.runner import ensure_pretrained

    with user_errors():
        over: dict = {}
        if midi is not None:
            if not midi.is_dir():
                raise UserError(f"--midi: {midi}: no such folder")
            over["pretrain"] = {"midi": [str(midi.resolve())], "include_corpus_midi": False}
        if epochs is not None:
            over.setdefault("pretrain", {})["epochs"] = epochs
        if data is not None:
            over["data"] = {"root": str(data.resolve())}
        cfg = load_config(config or _default_config(), over)
        if experiment not in cfg.experiments:
            raise UserError(f"--experiment: {experiment!r} is not in the config's experiments")
        from pianoray.models import registry

        if registry.get(cfg.encoder_name(experiment)).pretrain is None:
            raise UserError(f"--experiment: {experiment} has no pretraining task")
        from pianoray.validation import prepare_data

        feedback = _feedback()
        prepare_data(cfg, feedback)
        cfg = ensure_pretrained(cfg, experiment, ExperimentData.from_config(cfg), feedback)
    exp = cfg.experiments[experiment]
    for fold, path in sorted(exp.init_encoder_folds.items()):
        console.print(f"encoder weights, fold {fold}: {path}")
    if exp.init_encoder is not None or not exp.init_encoder_folds:
        console.print(f"encoder weights: {exp.init_encoder}")


def _default_config() -> Path:
    from pianoray.settings import PROJECT_ROOT

    return PROJECT_ROOT / "experiments" / "demo.yaml"


@app.command()
def experiments(
    config: Optional[Path] = typer.Option(None, "--config", help="Protocol YAML: mark which are enabled."),
) -> None:
    """List the registered experiments: track, role, kind (neural, fitted or fusion), views."""
    from pianoray.models import registry

    with user_errors():
        cfg = load_config(config) if config else None
    table = Table(title="registered experiments")
    for col in ("name", "track", "role", "kind", "views", "in config", "description"):
        table.add_column(col)
    for name, spec in sorted(registry.all_specs().items(), key=lambda kv: (kv[1].track, kv[0])):
        enabled = "-" if cfg is None else ("yes" if name in cfg.enabled_experiments() else "no")
        # a fitted reference summarises the whole performance; a fusion reads the views of the winners it fuses
        views = ",".join(spec.views) or ("(the winners')" if spec.kind == "fusion" else "(whole MIDI)")
        table.add_row(name, spec.track, spec.role, spec.kind, views, enabled, spec.description)
    console.print(table)


# ----------------------------------------------------------------------------------------- protocol


@app.command()
def run(
    config: Optional[Path] = typer.Option(None, "--config", help="Protocol YAML (default: experiments/demo.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Run storage: a path or s3://bucket/prefix."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: the config's name)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming a run of that name."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster (e.g. auto) instead of a local head."),
) -> None:
    """Run (or resume) the staged-elimination protocol: Round 1 screening, Round 2 4-fold Ray Train, selection,
    Round 3 fusion of the track winners."""
    with user_errors():
        results = _checked_run(_config(config or _default_config(), data), storage=storage, name=name, fresh=fresh,
                               address=address)
    _print_results(results)
    paths = _write_report(results)
    console.print(f"report: {paths['html']}  ({paths['markdown']})", soft_wrap=True)
    if results["run"]["status"] == "finished":
        winners = [t for t, w in (results.get("winners") or {}).items() if w]
        ask = not (results.get("fusion") or {}).get("final") and len(winners) > 1
        console.print(f"next: pianoray export --storage {results['run']['storage']} --out model"
                      + (f" --track {'|'.join(winners)}" if ask else ""), soft_wrap=True)


def _checked(cfg: ProtocolConfig, only: str | None = None, as_json: bool = False) -> None:
    """Prepare the data, then run ``validate``'s checks on config and data: every problem one line, raised
    before anything trains (what every command that trains shares). ``only``: the one experiment a command
    trains, whose checks alone apply (another experiment's needs do not stop it). ``as_json``: stdout carries
    one JSON object, so the lines go to stderr."""
    from pianoray.validation import prepare_data, validate_all

    if only is not None and only in cfg.experiments:
        cfg = cfg.model_copy(update={"experiments": {only: cfg.experiments[only]}})
    prepare_data(cfg, _feedback(as_json))
    problems, summary = validate_all(cfg)
    for line in summary:
        (err if as_json else console).print(line, highlight=False)
    if problems:
        raise UserError("\n".join(problems))


def _checked_run(cfg, **run_args) -> dict:
    """:func:`_checked`, then run the protocol (``run_args``: ``run_protocol``'s); what ``run`` and ``search``
    share."""
    from pianoray.protocol.run import ProtocolError, run_protocol

    _checked(cfg)
    try:
        return run_protocol(cfg, feedback=_feedback(), **run_args)
    except ProtocolError as e:
        raise UserError(str(e)) from None


@app.command()
def search(
    experiment: str = typer.Option(..., "--experiment", help="An experiment of the config with a search: block."),
    trials: Optional[int] = typer.Option(None, "--trials", min=1, help="Configurations (default: its search.configs)."),
    config: Optional[Path] = typer.Option(None, "--config", help="Protocol YAML (default: experiments/demo.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Run storage: a path or s3://bucket/prefix."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name (default: <config name>-search-<experiment>)."),
    fresh: bool = typer.Option(False, "--fresh", help="Start over instead of resuming a search of that name."),
    address: Optional[str] = typer.Option(None, "--address", help="Join a Ray cluster (e.g. auto) instead of a local head."),
    out: Optional[Path] = typer.Option(None, "--out", help="YAML to write (default: ./<experiment>.best.yaml)."),
) -> None:
    """Search one experiment alone: Round 1 over its configurations (Optuna, judged by the track-gap scheduler
    against each other), no Round 2. Writes the best as a YAML an experiment config can `extends:`."""
    from pianoray.protocol.search import alone, best_yaml
    from pianoray.records import ROUND1

    with user_errors():
        cfg = alone(_config(config or _default_config(), data), experiment, trials)
        results = _checked_run(cfg, storage=storage, name=name or f"{cfg.name}-search-{experiment}", fresh=fresh,
                               address=address, until=ROUND1)
        (row,) = [x for x in results["experiments"] if x["name"] == experiment]
        found = row["search"]
        best = next((c for c in found["configs"] if c["id"] == found["best"]), None)
        if best is None:
            raise UserError(f"{experiment}: no configuration survived Round 1; see `pianoray report --storage "
                            f"{results['run']['storage']}`")
    from pianoray.report.tables import search_data, search_text, to_rich

    console.print(to_rich(search_data(results, experiment)))
    console.print(search_text(results, experiment), highlight=False)
    path = out or Path(f"{experiment}.best.yaml")
    path.write_text(best_yaml(experiment, best, results["run"]["storage"]))
    console.print(f"{experiment}: best configuration {best['id']} {best['params']}", highlight=False)
    console.print(f"wrote {path}  (a config can start from it: extends: {path.resolve()})", highlight=False)


def _print_results(results: dict) -> None:
    """The comparison tables, one line per elimination, and the winners (the full decisions table, with every
    rung's reasons, is in the report)."""
    from pianoray.report import comparison_table
    from pianoray.report.tables import track_names

    for track in track_names(results):
        console.print(comparison_table(results, track))
    from pianoray.report.tables import search_text, searched

    for row in searched(results):
        console.print(search_text(results, row["name"]), highlight=False)
    decisions = results["decisions"]
    stops = [d for d in decisions if d["decision"] == "stop"]
    console.print(f"round 1: {len(decisions)} rung decisions, {len(stops)} stop(s)")
    for d in stops:
        console.print(f"  rung {d['rung']}: stopped {d['experiment']}: {d['reason']}", highlight=False)
    from pianoray.report.tables import final_reference_text, margin_text, reference_text

    fusion = results.get("fusion") or {}
    if fusion.get("final"):
        final = fusion["final"]
        console.print(f"[bold]final model:[/bold] {final['model'] or '-'} — {final['reason']}", highlight=False)
        if against := final_reference_text(results):
            console.print(f"  {against}", highlight=False)
    elif fusion.get("skipped"):
        console.print(f"round 3 skipped: {fusion['skipped']}", highlight=False)
    for track, sel in results["selection"].items():
        if sel.get("winner") or sel.get("explanation"):
            console.print(f"[bold]{track} winner:[/bold] {sel.get('winner') or '-'} — {sel.get('explanation', '')}",
                          highlight=False)
            for line in (margin_text(results, track), reference_text(results, track)):
                if line:
                    console.print(f"  {line}", highlight=False, markup=False)


def _write_report(results: dict) -> dict:
    """Write the report next to the run (locally), or into a scratch folder and copy it to object storage.

    Returns what was written: local paths, or for object storage the uploaded ``s3://.../report/<file>``
    URIs (the scratch folder is removed, so its paths would point nowhere)."""
    import tempfile

    from pianoray.protocol.storage import RunStorage
    from pianoray.report import write_report

    storage_uri, name = results["run"]["storage"], results["run"]["name"]
    if "://" not in storage_uri:
        return write_report(results, Path(storage_uri) / "report")
    remote = RunStorage(storage_uri[: -len(name) - 1], name)
    with tempfile.TemporaryDirectory(prefix="pianoray-report-") as tmp:
        written = write_report(results, Path(tmp))
        for p in sorted(Path(tmp).iterdir()):  # everything, also files the html links but `written` omits
            if p.is_file():
                remote.write_bytes(f"report/{p.name}", p.read_bytes())
    return {key: f"{remote.uri}/report/{p.name}" for key, p in written.items()}


def _run_storage(storage: Optional[str], name: Optional[str]):
    """The run at ``--storage`` (the run folder, or the storage root with ``--name``); without it, the run a plain
    ``pianoray run`` makes (the demo config's storage and name). One line if there is none."""
    from pianoray.protocol.storage import RunStorage

    default = storage is None
    if default:
        cfg = load_config(_default_config())
        storage, name = cfg.storage, name or cfg.name
    uri, _, last = storage.rstrip("/").rpartition("/")
    if name is None:  # --storage names the run folder itself
        if not uri:
            raise UserError(f"--storage {storage}: give the run folder (STORAGE/NAME) or --name")
        run_storage = RunStorage(uri, last)
    else:
        run_storage = RunStorage(storage, name)
    if not run_storage.exists("run.json"):
        hint = " (where a plain `pianoray run` writes: run it first, or give --storage)" if default else ""
        raise UserError(f"{run_storage.uri}: no pianoray run here (no run.json){hint}")
    return run_storage


def _open_ledger(storage: Optional[str], name: Optional[str]):
    from pianoray.protocol.ledger import Ledger

    return Ledger(_run_storage(storage, name))


@app.command()
def status(
    storage: Optional[str] = typer.Option(None, "--storage", help=RUN_FOLDER_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="Run name, when --storage is the storage root."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Show a run's progress from its ledger, from any shell (during or after the run)."""
    from pianoray.protocol.view import build_results

    with user_errors():
        results = build_results(_open_ledger(storage, name))
    if as_json:
        from pianoray.protocol.schema import status_view

        print(json.dumps(status_view(results), default=str))
        return
    table = Table(title=f"{results['run']['name']} ({results['run']['status']})")
    for col in ("experiment", "track", "round", "status", "pairwise", "R1 epochs", "CPU-h", "GPU-h"):
        table.add_column(col)
    for e in results["experiments"]:
        pw = (e.get("pairwise_accuracy") or {}).get("mean")
        table.add_row(e["name"] + (" (ref)" if e["role"] == "reference" else ""), e["track"], e["furthest_round"],
                      e["status"], "-" if pw is None else f"{100 * pw:.1f}%", str(e["round1"].get("epochs") or "-"),
                      f"{e['resource_hours']['cpu_hours']:.3f}", f"{e['resource_hours']['gpu_hours']:.3f}")
    console.print(table)
    for d in results["decisions"]:
        if d["decision"] == "stop":
            console.print(f"rung {d['rung']}: stopped {d['experiment']}: {d['reason']}", highlight=False)


@app.command()
def report(
    storage: Optional[str] = typer.Option(None, "--storage", help=RUN_FOLDER_HELP),
    name: Optional[str] = typer.Option(None, "--name", help="Run name, when --storage is the storage root."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as one JSON object."),
) -> None:
    """Print the comparison tables and write report.md / report.html with plots."""
    from pianoray.protocol.view import build_results

    with user_errors():
        results = build_results(_open_ledger(storage, name))
    if as_json:
        print(json.dumps(results, default=str))
        return
    _print_results(results)
    paths = _write_report(results)
    console.print(f"report: {paths['html']}  ({paths['markdown']})")


@app.command()
def plan(
    config: Path = typer.Option(..., "--config", help="Protocol YAML (e.g. experiments/protocol.yaml)."),
    data: Optional[Path] = typer.Option(None, "--data", help="Override the config's data root."),
    throughput: Optional[Path] = typer.Option(None, help="Throughput table (default: benchmarks/throughput.json)."),
    eliminated: float = typer.Option(0.5, help="Share of experiments assumed stopped at the first rung."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    calibrate: bool = typer.Option(False, "--calibrate",
                                   help="Measure each experiment's training throughput on this machine's device "
                                        "(a few real steps) and plan with it instead of the table's."),
) -> None:
    """Print the rounds, trials, resources and the estimated GPU-hour budget before anything launches."""
    from pianoray.protocol.plan import plan_for, plan_json

    with user_errors():
        p, measured = plan_for(_config(config, data), throughput=throughput, eliminated=eliminated,
                               calibrate=calibrate, feedback=_feedback(as_json))
    if as_json:
        print(json.dumps(plan_json(p, measured)))
        return
    from pianoray.terminal import render_plan

    for r in render_plan(p):
        console.print(r)


@app.command()
def extract(
    audio: Path = typer.Option(..., "--audio", help="Folder of WAV files (top level)."),
    out: Path = typer.Option(..., "--out", help="Cache folder to write (the tier format; final layer in out/final)."),
    muq_checkpoint: Optional[Path] = typer.Option(None, "--muq-checkpoint", help="MuQ weights (.safetensors/.pt or a folder)."),
    augment: int = typer.Option(0, "--augment", min=0, help="Augmented twins per file, written as T4 pairs."),
    window_seconds: float = typer.Option(10.0, help="Fixed window length (no padding; the last partial window is dropped)."),
    tier: str = typer.Option("T1", help="T1 (labelled) or T3 (cross-performer groups)."),
    labels: Optional[Path] = typer.Option(None, help="PercePiano label JSON for T1 rows."),
    allow_random: bool = typer.Option(False, "--allow-random", help="Tests only: a random MuQ-shaped encoder."),
    seed: int = typer.Option(0),
    overwrite: bool = typer.Option(False, "--overwrite"),
) -> None:
    """Audio -> cached MuQ frames: hidden_states[8] per fixed window (+ the final layer), fp16 shards."""
    from pianoray.extraction import ExtractionError
    from pianoray.extraction import extract as run_extract
    from pianoray.models.audio.muq_tail import MuQCheckpointError

    with user_errors():
        try:
            root = run_extract(audio, out, muq_checkpoint=muq_checkpoint, augment=augment,
                               window_seconds=window_seconds, allow_random=allow_random, seed=seed, tier=tier,
                               labels=labels, overwrite=overwrite, feedback=_feedback())
        except (ExtractionError, MuQCheckpointError) as e:
            raise UserError(str(e)) from None
    _print_corpus_summary(root)


# ------------------------------------------------------------------------------------------ cluster

cluster_app = typer.Typer(help="Cluster YAMLs for `ray up`.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")


@app.command()
def export(
    storage: Optional[str] = typer.Option(None, "--storage", help=RUN_FOLDER_HELP),
    out: Path = typer.Option(..., "--out", help="The model folder to write (an existing model there is replaced)."),
    name: Optional[str] = typer.Option(None, "--name", help="Run name, when --storage is the storage root."),
    track: Optional[str] = typer.Option(None, "--track", help="Export this track's winner instead of the final model."),
    experiment: Optional[str] = typer.Option(None, "--experiment", help="Export this experiment's fold models."),
    refit: bool = typer.Option(False, "--refit", help="One model trained on every segment of the folds (early "
                                                      "stopping on fold 0's inner validation music), not the fold models' mean."),
) -> None:
    """Write the run's chosen model (the final model, or --track's winner) as a self-contained artifact: the mean
    ensemble of its fold models, the fitted reference and the fingerprints of the music it trained on."""
    from pianoray.protocol.export import export_run

    with user_errors():
        m = export_run(_run_storage(storage, name), out, track=track, experiment=experiment, refit=refit,
                       feedback=_feedback())
    console.print(f"model: {out}  ({m.experiment}, {len(m.members)} members, labels {m.labels.set}; "
                  f"`pianoray evaluate --model {out} --data DIR`, `pianoray predict --model {out} FILE.mid`)", soft_wrap=True)


def _artifact(model: Path, feedback: Feedback):
    from pianoray.inference.artifact import ModelArtifact

    art = ModelArtifact.load(model)
    for note in art.notes:
        feedback.say(f"note: {note}")
    return art


@app.command()
def evaluate(
    model: Path = typer.Option(..., "--model", help="A model folder written by `pianoray export`."),
    data: Path = typer.Option(..., "--data", help="A labelled dataset: a pianoray cache or the PercePiano layout."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (docs/export.md)."),
    n_boot: int = typer.Option(1000, "--n-boot", min=0, help="Bootstrap resamples of passages for the CIs."),
) -> None:
    """Score the model and its reference on labelled data, split into music the model saw and music it did not."""
    from pianoray.inference.assess import evaluate_artifact

    feedback = _feedback(as_json)
    with user_errors():
        result = evaluate_artifact(_artifact(model, feedback), data, n_boot=n_boot, feedback=feedback)
    if as_json:
        print(json.dumps(result))
        return
    from pianoray.terminal import evaluation_table

    console.print(evaluation_table(result))


@app.command()
def predict(
    inputs: list[Path] = typer.Argument(..., help="MIDI files or folders of them, or pianoray cache folders."),
    model: Path = typer.Option(..., "--model", help="A model folder written by `pianoray export`."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV, one row per input."),
    passage: Optional[str] = typer.Option(None, "--passage",
                                          help="The MIDI inputs are performances of this one passage: rank them "
                                               "together (default: group them by their music)."),
) -> None:
    """Score new performances: each dimension, its rank among performances of the same passage, a summary line."""
    from pianoray.inference.predict import csv_text, definitions, predict_inputs

    if as_json and as_csv:
        _error_lines("--json and --csv: choose one")
        raise typer.Exit(EXIT_USAGE)
    feedback = _feedback(as_json or as_csv)
    with user_errors():
        art = _artifact(model, feedback)
        predictions = predict_inputs(art, inputs, passage)
    if as_json:
        print(json.dumps({"model": art.manifest.experiment, "labels": art.manifest.labels.set,
                          "dimensions": [{"name": n, "definition": d} for n, d in definitions(art).items()],
                          "predictions": [p.to_json() for p in predictions]}))
        return
    if as_csv:
        sys.stdout.write(csv_text(predictions, art.label_names))
        return
    from pianoray.terminal import prediction_table

    console.print(prediction_table(predictions, definitions(art)))
    for p in predictions:
        console.print(p.summary(), highlight=False, soft_wrap=True)


def _default_cluster_config() -> Path:
    """The protocol YAML that docs/cluster.md runs on the cluster."""
    from pianoray.settings import PROJECT_ROOT

    return PROJECT_ROOT / "experiments" / "protocol.yaml"


@cluster_app.command("check")
def cluster_check(
    file: Path = typer.Argument(..., help="cluster.yaml or cluster-gcp.yaml"),
    ready: bool = typer.Option(False, "--ready", help="Also fail on placeholders (REPLACEME) left to fill in."),
    config: Optional[Path] = typer.Option(None, "--config",
                                          help="Protocol YAML whose Round-2 fold jobs should fit on one node "
                                               "(default: experiments/protocol.yaml)."),
) -> None:
    """Validate a cluster YAML offline (Ray's schema and checks) and against our security rules; warn when a
    Round-2 fold job needs more GPUs than one node has (a warning: exit code 0)."""
    from pianoray.protocol.cluster import check_cluster_yaml, fold_placement_warnings

    protocol = config or _default_cluster_config()
    if config is None and not protocol.is_file():
        warnings = [f"{protocol} not found: Round-2 fold jobs not checked against a protocol config (give --config)"]
        checked = ""
    else:
        with user_errors():
            warnings = fold_placement_warnings(file, load_config(protocol), str(protocol))
        checked = f"Round-2 fold jobs checked against {protocol}"
    problems = check_cluster_yaml(file, require_filled=ready)
    for w in warnings:
        err.print(f"[yellow]warning:[/yellow] {w}", highlight=False, soft_wrap=True)
    for p in problems:
        err.print(f"[red]error:[/red] {p}", highlight=False, soft_wrap=True)
    if problems:
        raise typer.Exit(EXIT_USAGE)
    notes = [n for n in (checked, f"{len(warnings)} warning(s)" if warnings else "") if n]
    console.print(f"[green]ok[/green]: {file} ({'; '.join(notes)})", highlight=False, soft_wrap=True)


# ----------------------------------------------------------------------------------------- symbolic


@data_app.command("symbolic")
def data_symbolic(
    midi: Path = typer.Option(..., "--midi", help="Folder of MIDI files (searched recursively)."),
    out: Path = typer.Option(..., "--out", help="Symbolic feature cache folder (incremental)."),
    workers: Optional[int] = typer.Option(None, help="Processes (default: all cores)."),
) -> None:
    """Build REMI tokens, note graphs and curves for every MIDI file, keyed by content hash."""
    import os

    from pianoray.data.symbolic import build_symbolic_cache

    with user_errors():
        if not midi.is_dir():
            raise UserError(f"--midi: {midi}: no such folder")
        files = sorted(p for p in midi.rglob("*") if p.suffix.lower() in (".mid", ".midi"))
        if not files:
            raise UserError(f"--midi: {midi}: no .mid/.midi files")
        rep = build_symbolic_cache(files, out, workers=workers or os.cpu_count() or 1, feedback=_feedback())
        if len(rep.failed) == len(files):  # nothing usable: not a cache to go on with
            raise UserError(f"--midi: {midi}: none of its {len(files)} MIDI files could be used; the first: "
                            f"{rep.failed[0][1]}")
    console.print(f"{len(files)} files: {rep.computed} computed, {rep.reused} reused, {len(rep.failed)} failed"
                  + (f" ({rep.damaged} damaged entries computed again)" if rep.damaged else ""))
    for path, reason in rep.failed:
        err.print(f"[yellow]skipped:[/yellow] {reason}", highlight=False, soft_wrap=True)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
