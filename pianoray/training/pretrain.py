"""Self-supervised pretraining of an encoder on a MIDI folder, before fine-tuning through ``fit``.

An encoder that pretrains gives its registry entry a ``pretrain`` factory returning a
:class:`PretrainTask`: the views it needs per MIDI file, the task's own heads, and the loss (MLM for S1,
link prediction + masked attributes for S2, per-edge-type link prediction for S2H, wav2vec-style
contrastive for S3). This module owns the loop, the data, and the cache:

- data: every MIDI file is one sample; its views come from the same view registry as fine-tuning
  (so the symbolic feature cache is reused). Every sample also carries piece and performer ids
  (``inputs["piece"]``, ``inputs["performer"]``, long [B], -1 = unknown; :func:`rendition_groups`), and a
  task with ``grouped = True`` (S1's cross-performer term) gets batches made of pairs of renditions of one
  piece by different performers (:func:`_batches`), so every batch has positives;
- loop: AdamW + cosine with warmup + clipping, seeded, one mean loss (and parts) per epoch;
- cache: the encoder's weights are stored under ``<cache>/<key>/encoder.pt``, keyed by the corpus hash
  (sha256 of the sorted file hashes), the task, the encoder config, the epochs and the files left out (per-fold
  pretraining: a fold's validation/test MIDI), and written atomically; a second call with the same key loads
  instead of training.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Iterator, Protocol

import numpy as np
import torch
from torch import Tensor, nn

from pianoray.data.midi import file_sha256
from pianoray.data.views import SegmentContext, get_view
from pianoray.errors import InputError, MissingInputError
from pianoray.models.contract import Encoder
from pianoray.training.step import make_optimizer, train_step

ENCODER_FILE = "encoder.pt"
LOG_FILE = "pretrain.json"


class PretrainTask(Protocol):
    """A pretraining objective for one encoder.

    name: short id (part of the cache key); views: the inputs each sample needs (view names).
    build_heads(encoder) -> nn.Module: the task's own trainable heads (discarded after pretraining).
    loss(encoder, heads, inputs, generator) -> (scalar loss, {part: float}): one batch's loss, where
    ``inputs`` is the collated views (as in ``Batch.inputs``) plus ``piece``/``performer`` long [B] ids
    (-1 = unknown) and ``generator`` the seeded torch RNG for masking / negative sampling.
    An optional attribute ``grouped = True`` asks for batches of cross-performer pairs.
    """

    name: str
    views: tuple[str, ...]

    def build_heads(self, encoder: Encoder) -> nn.Module: ...

    def loss(
        self, encoder: Encoder, heads: nn.Module, inputs: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float]]: ...


@dataclass
class PretrainResult:
    path: Path  # the folder holding encoder.pt and pretrain.json
    key: str
    losses: list[float]  # mean loss per epoch (from the log when loaded from cache)
    parts: list[dict[str, float]] = field(default_factory=list)
    cached: bool = False
    skipped: list[str] = field(default_factory=list)  # files that could not be read, with reasons
    read: set[str] = field(default_factory=set)  # content hashes of the files pretraining read (provenance)
    left_out: int = 0  # files of the configured corpus left out (per fold: its validation/test MIDI)


@dataclass
class _Files:
    """The minimal corpus a view loader needs: a root for relative paths and an optional feature cache."""

    root: Path
    symbolic_cache: Any = None


def corpus_hash(files: list[Path]) -> str:
    shas = sorted(file_sha256(f) for f in files)
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


# What pretraining computes from the same inputs. Bump it whenever a change gives other weights for them (the
# tokens or features read, the tasks, their losses, the sampling or the seeding), so that no cache written by the
# code before is served as this code's. 2: the encoder built after seeding (before, its initial weights came
# from a fresh process's RNG state, and a cache of that code differs from what this code trains).
PRETRAIN_FORMAT = 2


def pretrain_key(files_hash: str, task: str, encoder_config: dict[str, Any], epochs: int,
                 left_out: Collection[str] = ()) -> str:
    """The cache key: the corpus, the task, the encoder config, the epochs and :data:`PRETRAIN_FORMAT`.
    ``left_out`` (content hashes removed from the configured corpus) enters it only when non-empty, so a shared
    pretraining keeps its key and each fold's own pretraining gets its own."""
    parts: dict[str, Any] = {"files": files_hash, "task": task, "config": encoder_config, "epochs": epochs,
                             "format": PRETRAIN_FORMAT}
    if left_out:
        parts["left_out"] = hashlib.sha256("\n".join(sorted(left_out)).encode()).hexdigest()
    blob = json.dumps(parts, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


# File stems that are scores, not performances (ASAP's midi_score.mid): no performer, no piece group.
_SCORE_STEMS = ("midi_score", "score")


def rendition_groups(files: list[Path], known: dict[Path, tuple[str, str]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Piece and performer ids per file, for cross-performer objectives (-1 = unknown).

    In order of precedence: ``known`` (resolved path -> (piece, performer), e.g. from a corpus manifest's
    passage and performer columns); a PercePiano segment name (``<piece>_<N>bars_<player>_<segment>``:
    piece = the passage, performer = the player); otherwise a folder of renditions, ASAP's layout
    (``Composer/Work/Piece/<Performer>.mid``: piece = the parent folder, performer = the file stem).
    Score files (``midi_score.mid``) get piece -1 and performer -1.

    Returns:
        (piece long [N], performer long [N]): dense ids in order of first appearance.
    """
    from pianoray.data.percepiano import PercePianoError, parse_segment_name

    known = known or {}
    pieces: dict[str, int] = {}
    performers: dict[str, int] = {}
    piece, performer = np.full(len(files), -1, np.int64), np.full(len(files), -1, np.int64)
    for i, f in enumerate(files):
        f = Path(f)
        if f in known:
            pk, who = (str(x) for x in known[f])
            pk, who = f"corpus:{pk}", f"corpus:{who}"
        elif f.stem.strip().lower().startswith(_SCORE_STEMS):
            continue
        else:
            try:
                name = parse_segment_name(f.name)
                pk, who = f"percepiano:{name.passage}", f"percepiano:{name.performer}"
            except PercePianoError:
                pk, who = f"folder:{f.parent}", f"folder:{f.parent}/{f.stem}"
        piece[i] = pieces.setdefault(pk, len(pieces))
        performer[i] = performers.setdefault(who, len(performers))
    return piece, performer


def _load_samples(files: list[Path], views: tuple[str, ...], max_len: int, cache: Any, seed: int,
                  epoch: int) -> tuple[list[dict[str, Any]], list[str]]:
    """One item per view per file (cropped with an (seed, epoch)-seeded RNG) plus ``"_file"`` (its index in
    ``files``); unreadable files are skipped."""
    from pianoray.data.midi import MidiError

    corpus = _Files(Path("/"), cache)
    samples, skipped = [], []
    for i, f in enumerate(files):
        rng = np.random.default_rng([seed, epoch, i])
        row = {"perf_midi": str(f), "perf_midi_sha": None, "segment_id": str(f)}
        ctx = SegmentContext(row=row, corpus=corpus, train=True, rng=rng, max_len=max_len)
        try:
            samples.append({v: get_view(v).load(ctx) for v in views} | {"_file": i})
        except MidiError as e:
            skipped.append(str(e))
    return samples, skipped


def grouped_order(piece: np.ndarray, performer: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of sample indices in which renditions of one piece by different performers come in
    adjacent pairs (so an even-sized batch holds whole pairs); the pairs in random order, then every sample
    left over (unknown piece, a piece with one performer, odd ones out) in random order.

    Args: piece, performer: long [N] (-1 = unknown). Returns: long [N], each index once.
    """
    pairs, rest = [], []
    for p in rng.permutation(np.unique(piece[piece >= 0])):
        members = rng.permutation(np.flatnonzero(piece == p))
        # Greedily pair members whose performers differ (an unknown performer differs from everyone).
        pending: list[int] = []
        for m in members:
            mate = next((q for q in pending if performer[q] != performer[m] or performer[m] < 0), None)
            if mate is None:
                pending.append(int(m))
            else:
                pending.remove(mate)
                pairs.append((mate, int(m)))
        rest += pending
    rest += np.flatnonzero(piece < 0).tolist()
    order = [i for k in rng.permutation(len(pairs)) for i in pairs[k]] if pairs else []
    return np.array(order + [rest[k] for k in rng.permutation(len(rest))], dtype=np.int64)


def _batches(samples: list[dict[str, Any]], views: tuple[str, ...], batch_size: int,
             rng: np.random.Generator, groups: tuple[np.ndarray, np.ndarray] | None = None,
             grouped: bool = False) -> Iterator[dict[str, Any]]:
    """Collated batches of ``samples``; with ``groups`` (piece, performer per file) each batch also has
    ``piece``/``performer`` long [B], and ``grouped`` orders samples in cross-performer pairs."""
    files = np.array([s["_file"] for s in samples], dtype=np.int64)
    if groups is not None:
        piece, performer = groups[0][files], groups[1][files]
    else:
        piece = performer = np.full(len(samples), -1, np.int64)
    if grouped:
        if batch_size % 2:
            raise InputError(f"pretrain.batch_size must be even for cross-performer pairs, got {batch_size}")
        order = grouped_order(piece, performer, rng)
    else:
        order = rng.permutation(len(samples))
    for i in range(0, len(order), batch_size):
        idx = order[i : i + batch_size]
        chunk = [samples[j] for j in idx]
        inputs: dict[str, Any] = {"piece": torch.from_numpy(piece[idx]), "performer": torch.from_numpy(performer[idx])}
        for v in views:
            inputs.update(get_view(v).collate([s[v] for s in chunk]))
        yield inputs


def pretrain(
    encoder: Encoder,
    task: PretrainTask,
    files: list[Path],
    *,
    epochs: int,
    out_dir: str | Path,
    encoder_config: dict[str, Any],
    batch_size: int = 16,
    lr: float = 1e-3,
    weight_decay: float = 0.01,
    max_len: int = 512,
    seed: int = 42,
    symbolic_cache: Any = None,
    on_epoch: Callable[[int, float, dict[str, float]], None] | None = None,
    groups: tuple[np.ndarray, np.ndarray] | None = None,
    left_out: Collection[str] = (),
) -> PretrainResult:
    """Pretrain ``encoder`` in place on ``files`` (or load the cached result) and return where it is stored.

    groups: (piece, performer) long [len(files)] (default :func:`rendition_groups` of the paths).
    left_out: content hashes removed from the configured corpus (part of the cache key)."""
    if not files:
        raise InputError("pretraining needs at least one MIDI file")
    key = pretrain_key(corpus_hash(files), task.name, encoder_config, epochs, left_out)
    final = Path(out_dir) / key
    if (final / ENCODER_FILE).is_file():
        encoder.load_state_dict(torch.load(final / ENCODER_FILE, map_location="cpu"))
        log = json.loads((final / LOG_FILE).read_text())
        return PretrainResult(final, key, log["losses"], log.get("parts", []), cached=True, skipped=log.get("skipped", []))

    if groups is None:
        groups = rendition_groups(files)
    cache_pretraining_features(files, symbolic_cache)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    heads = task.build_heads(encoder)
    params = [p for m in (encoder, heads) for p in m.parameters() if p.requires_grad]
    steps = epochs * max(1, -(-len(files) // batch_size))
    optimizer, scheduler = make_optimizer(params, lr=lr, weight_decay=weight_decay, total_steps=steps,
                                          warmup_fraction=0.05)
    losses: list[float] = []
    parts_log: list[dict[str, float]] = []
    skipped: list[str] = []
    encoder.train()
    heads.train()
    for epoch in range(1, epochs + 1):
        t0 = time.perf_counter()
        samples, skipped = _load_samples(files, task.views, max_len, symbolic_cache, seed, epoch)
        if not samples:
            raise InputError(f"no readable MIDI among {len(files)} files: {skipped[:3]}")
        total, n, sums = 0.0, 0, {}
        batches = _batches(samples, task.views, batch_size, np.random.default_rng([seed, epoch]),
                           groups, grouped=bool(getattr(task, "grouped", False)))
        for inputs in batches:
            loss, parts = task.loss(encoder, heads, inputs, generator)
            train_step(loss, optimizer, scheduler, params, grad_clip=1.0)
            total += float(loss.detach())
            n += 1
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + float(v)
        losses.append(total / n)
        parts_log.append({k: v / n for k, v in sums.items()} | {"seconds": time.perf_counter() - t0})
        if on_epoch is not None:
            on_epoch(epoch, losses[-1], parts_log[-1])

    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=final.parent))
    torch.save(encoder.state_dict(), tmp / ENCODER_FILE)
    (tmp / LOG_FILE).write_text(json.dumps({"task": task.name, "key": key, "epochs": epochs, "files": len(files),
                                            "losses": losses, "parts": parts_log, "skipped": skipped}, indent=1))
    os.replace(tmp, final)
    return PretrainResult(final, key, losses, parts_log, skipped=skipped)


def pretraining_files(cfg: Any, corpus: Any) -> list[Path]:
    """The MIDI files pretraining reads: the configured folders plus (by default) the corpus's own
    performance MIDI, de-duplicated, sorted, and capped by a seeded sample when ``max_files`` is set.

    Per-fold pretraining removes a fold's files from this list afterwards (:func:`without`), so the folds'
    corpora differ only by what each leaves out."""
    files: set[Path] = set()
    for folder in cfg.pretrain.midi:
        folder = Path(folder)
        if not folder.is_dir():
            raise MissingInputError(f"pretrain.midi: {folder}: no such folder")
        files |= {p.resolve() for p in folder.rglob("*") if p.suffix.lower() in (".mid", ".midi")}
    if cfg.pretrain.include_corpus_midi:
        from pianoray.data.symbolic.prepare import corpus_midi_files

        files |= {p.resolve() for p in corpus_midi_files(corpus)}
    out = sorted(files)
    if cfg.pretrain.max_files is not None and len(out) > cfg.pretrain.max_files:
        rng = np.random.default_rng(cfg.seed)
        out = sorted(out[i] for i in rng.choice(len(out), cfg.pretrain.max_files, replace=False))
    return out


def without(files: list[Path], exclude: Collection[str]) -> tuple[list[Path], list[str], set[str]]:
    """``files`` less those whose content hash is in ``exclude`` (so a byte-identical copy under another name
    goes too). Returns (kept files, hashes removed, hashes kept)."""
    sha = {f: file_sha256(f) for f in files}
    kept = [f for f in files if sha[f] not in exclude]
    return kept, sorted({sha[f] for f in files} - {sha[f] for f in kept}), {sha[f] for f in kept}


def cache_pretraining_features(files: list[Path], cache: Any) -> None:
    """Build the pretraining files that the corpus's symbolic cache lacks (external folders such as ASAP)
    into it, so every epoch reads stored features instead of recomputing them through the small in-process
    memo. Incremental by content hash: a second call only hashes."""
    if getattr(cache, "out_dir", None) is None:
        return
    from pianoray.data.symbolic.cache import build_symbolic_cache

    build_symbolic_cache(files, cache.out_dir, workers=os.cpu_count() or 1)


def pretrain_experiment(cfg: Any, experiment: str, data: Any, *,
                        on_epoch: Callable[[int, float, dict[str, float]], None] | None = None,
                        exclude: Collection[str] = ()) -> PretrainResult | None:
    """Pretrain ``experiment``'s encoder if its registry entry has a task (or load the cached result).

    exclude: content hashes of MIDI to leave out of the corpus (per-fold pretraining: the fold's validation
    and test MIDI); the result records what it read (``read``) and how many files it left out.
    Returns None when the encoder has no pretraining task or the budget is 0 epochs.
    """
    from pianoray.config import model_config
    from pianoray.models import registry

    spec = registry.get(cfg.encoder_name(experiment))
    epochs = cfg.experiments[experiment].pretrain_epochs
    epochs = cfg.pretrain.epochs if epochs is None else epochs
    if spec.pretrain is None or epochs == 0:
        return None
    mcfg = model_config(cfg, experiment)
    # Seeded before the encoder is built: its initial weights (and so the cached result) must not depend on
    # whatever drew from torch's global RNG earlier in this process (a fresh process starts from a random seed).
    torch.manual_seed(cfg.seed)
    encoder = spec.build(mcfg, data.data_spec())
    task = spec.pretrain(mcfg)
    files, left_out, read = without(pretraining_files(cfg, data.corpus), set(exclude))
    groups = rendition_groups(files, corpus_renditions(data.corpus))
    cache = getattr(data.corpus, "symbolic_cache", None)
    result = pretrain(
        encoder, task, files, epochs=epochs, out_dir=Path(cfg.pretrain.cache).expanduser(),
        encoder_config={"encoder": spec.name, **mcfg.model_dump(mode="json")},
        batch_size=cfg.pretrain.batch_size, lr=cfg.pretrain.lr, max_len=cfg.pretrain.max_notes, seed=cfg.seed,
        symbolic_cache=cache, on_epoch=on_epoch, groups=groups, left_out=left_out,
    )
    result.read, result.left_out = read, len(left_out)
    return result


def corpus_renditions(corpus: Any) -> dict[Path, tuple[str, str]]:
    """Resolved performance MIDI path -> (passage, performer) from every tier manifest that has them."""
    out: dict[Path, tuple[str, str]] = {}
    for tier in corpus.tiers:
        m = corpus.manifest(tier)
        if not {"perf_midi", "passage", "performer"} <= set(m.columns):
            continue
        for path, passage, who in m[["perf_midi", "passage", "performer"]].dropna().itertuples(index=False):
            out[corpus.path(path).resolve()] = (str(passage), str(who))
    return out
