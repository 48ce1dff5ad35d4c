"""Checks run before anything trains: config, data, labels, folds, tiers, and what each experiment needs.

``validate_all`` returns one-line problems naming the file, key or field; the CLI prints them and exits 2.
It never raises for a data problem it can describe.
"""

from __future__ import annotations

from pathlib import Path

from pianoray.config import ProtocolConfig
from pianoray.data.tiers import Tier
from pianoray.feedback import Feedback, or_default


def prepare_data(cfg: ProtocolConfig, feedback: Feedback | None = None) -> None:
    """Make the data a run needs: the demo corpus when asked for and absent, then the symbolic feature
    cache (by MIDI content hash, incremental) when an enabled experiment reads a symbolic view.
    ``feedback`` hears what was made (None: logged)."""
    feedback = or_default(feedback)
    from pianoray.data.remote import is_remote_uri

    root = Path(cfg.data.root)
    remote = is_remote_uri(cfg.data.root)  # a remote cache is never generated, only mirrored when opened
    if not remote and cfg.data.source == "cache" and cfg.data.demo is not None:
        from pianoray.data.demo import ensure_demo

        # Absent, or written by an older demo generator: (re)generate it, so the demo follows the code.
        done = ensure_demo(root, seed=cfg.data.demo.seed, scale=cfg.data.demo.scale)
        if done is not None:
            feedback.say(f"demo corpus {root}: {done}")
    views = needed_views(cfg)
    if not views:
        return
    from pianoray.data.corpus import open_corpus
    from pianoray.data.midi import MidiError
    from pianoray.data.symbolic.prepare import ensure_symbolic_cache

    try:
        corpus = open_corpus(cfg.data)
    except (FileNotFoundError, ValueError, KeyError, MidiError):
        return  # validate_all reports why the corpus cannot be opened; nothing to build from
    ensure_symbolic_cache(cfg.data, views, corpus, feedback=feedback)


def needed_views(cfg: ProtocolConfig) -> set[str]:
    """The views the enabled experiments' encoders read (unknown encoders skipped: validate_all names them)."""
    from pianoray.models import registry

    views: set[str] = set()
    for name in cfg.enabled_experiments():
        try:
            views.update(registry.get(cfg.encoder_name(name)).views)
        except KeyError:
            continue
    return views


def validate_all(cfg: ProtocolConfig) -> tuple[list[str], list[str]]:
    """(problems, summary lines) for ``cfg`` and the data it names."""
    from pianoray.data.corpus import open_corpus
    from pianoray.data.midi import MidiError
    from pianoray.models import registry

    problems: list[str] = []
    summary: list[str] = []
    from pianoray.data.remote import is_remote_uri

    remote = is_remote_uri(cfg.data.root)  # an s3:// root is checked by opening it (mirrored locally)
    root = cfg.data.root if remote else Path(cfg.data.root)
    if not remote and not root.exists():
        hint = " (run `pianoray data demo --out DIR` or `pianoray run`, which generates it)" if cfg.data.demo else ""
        return [f"data.root: {root}: no such folder{hint}"], summary
    try:
        corpus = open_corpus(cfg.data)
    except (FileNotFoundError, ValueError, KeyError, MidiError) as e:
        return [str(e.args[0] if isinstance(e, KeyError) else e)], summary
    summary.append(
        f"corpus {root}: "
        + ", ".join(f"{t.name} {len(corpus.manifest(t))} segments" for t in corpus.tiers)
    )
    problems.extend(corpus.check())

    # Labels: the taxonomy must load and every T1 segment needs labels.
    try:
        names, values = corpus.labels(cfg.data.labels, _taxonomy(cfg))
        summary.append(f"labels: {cfg.data.labels}, {len(names)} dimensions")
    except (FileNotFoundError, ValueError, KeyError) as e:
        problems.append(f"data.labels: {e}")

    # Tiers the rounds train on must be present and non-empty.
    for field, tiers in (("round1.tiers", cfg.round1.tiers), ("round2.tiers", cfg.round2.tiers)):
        for t in tiers:
            if t not in corpus.tiers or len(corpus.manifest(t)) == 0:
                problems.append(f"{field}: tier {t.name} is empty in {root}")

    # Folds: a given file must never split its own groups nor separate music; say how folds group segments.
    problems.extend(_fold_problems(cfg, corpus, summary))

    # Each enabled experiment's views must be servable by this corpus.
    has_frames = corpus.has_frames()
    for name in cfg.enabled_experiments():
        spec = registry.get(cfg.encoder_name(name))
        if "frames" in spec.views and not has_frames:
            problems.append(f"experiments.{name}: encoder {spec.name} reads cached frames, but {root} has none")
    summary.append(f"experiments: {', '.join(cfg.enabled_experiments()) or '(none)'}")
    return problems, summary


def _fold_problems(cfg: ProtocolConfig, corpus, summary: list[str]) -> list[str]:
    """Problems of ``data.folds`` (or of generating folds) against the corpus; adds the fold-unit line to
    ``summary``. A folds file of unit passage or music that separates passages sharing music is refused
    with one line naming both passages; a performer file passes with a note (it is meant to reuse music)."""
    from pianoray.data.folds import (
        FoldError,
        FoldSet,
        check_folds,
        corpus_folds,
        describe_unit,
        fold_units,
        holdout_segments,
        music_leaks,
    )
    from pianoray.data.music import MusicGroupsUnavailable, corpus_music_groups

    try:
        music, why = corpus_music_groups(corpus), ""
    except MusicGroupsUnavailable as e:
        music, why = None, str(e)
    t1 = corpus.manifest(Tier.T1)["segment_id"].astype(str).tolist()
    try:
        held = holdout_segments(corpus, t1, cfg.data.holdout_groups)
    except FoldError as e:
        return [str(e)]
    if held:
        summary.append(f"data.holdout_groups: {len(cfg.data.holdout_groups)} music groups, {len(held)} segments "
                       "held out of every fold")
    if cfg.data.folds is None:
        try:
            fs = corpus_folds(corpus, [k for k in t1 if k not in held] if held else None, k=cfg.data.k,
                              unit=cfg.data.fold_unit, val_fraction=cfg.data.val_fraction, seed=cfg.seed)
        except (KeyError, ValueError) as e:
            return [f"data.fold_unit: cannot make {cfg.data.k} {cfg.data.fold_unit} folds: {e}"]
        summary.append(describe_unit(fs))
        return []
    try:
        fs = FoldSet.load(cfg.data.folds)
    except FoldError as e:
        return [f"data.folds: {e}"]
    summary.append(f"data.folds {cfg.data.folds}: {describe_unit(fs)}")
    inside = sorted(held & set(fs.keys))
    if inside:
        return [f"data.folds: {cfg.data.folds}: {len(inside)} segments of data.holdout_groups are in the folds, "
                f"e.g. {inside[0]!r}"]
    if fs.unit == "music" and music is None:
        return [f"data.folds: {cfg.data.folds}: unit music, but this corpus's music groups cannot be computed ({why})"]
    m = corpus.manifest(Tier.T1)
    keys, groups, _ = fold_units(m, fs.unit, music.group_of if music is not None else None)
    problems = [f"data.folds: {p}" for p in check_folds(fs, dict(zip(keys, groups)))]
    if fs.unit == "performer":
        pass  # describe_unit already says that performer folds keep known music on both sides, by design
    elif music is not None:
        leaks = music_leaks(fs, dict(zip(m["segment_id"].astype(str), m["passage"].astype(str))), music.pairs)
        if leaks:
            more = f" (and {len(leaks) - 1} more folds)" if len(leaks) > 1 else ""
            problems.append(f"data.folds: {cfg.data.folds}: {leaks[0]}{more}; make music-safe folds with "
                            "`pianoray data folds --unit music`")
    else:
        summary.append(f"data.folds: music sharing not checked: {why}")
    return problems


def _taxonomy(cfg: ProtocolConfig):
    from pianoray.data.taxonomy import Taxonomy

    return Taxonomy.load(cfg.data.taxonomy) if cfg.data.taxonomy is not None else Taxonomy.default()
