"""Music groups: passages that share music, so that folds never put the same music on both sides.

On PercePiano a passage key (``<piece>_<N>bars_<segment>``) is not a unit of music: Schubert D960 mv2/mv3
are cut both into 8-bar and 16-bar segments (a 16-bar score contains one or two 8-bar scores, and the
8- and 16-bar performances of one pianist are cuts of the same take), and mv3 repeats whole sections. A
fold that puts one passage in train and its twin in test leaks what is played, which dominates the labels.

The rule (``RULE``), applied to every pair of passages:

1. Each rendition is read as its pitch sequence in (onset, pitch) order, and cut into every run of
   ``RUN_LENGTH`` (16) consecutive pitches; a rendition shorter than that is one run.
2. Two renditions share music when at least ``THRESHOLD`` (half) of the distinct runs of the one with
   fewer runs occur in the other. Sixteen pitches in a row almost never repeat by chance between different
   music, while a shared 8-bar phrase gives dozens of shared runs.
3. Two passages are compared on their score MIDI when both have one. Where one has no score, they are
   compared on the performance MIDI of each pianist who played both: any such pair of performances that
   shares music joins them (the same take cut twice is shared verbatim).
4. Groups are the connected components of "shares music"; a group is named by its first passage in sorted
   order. Nothing else is merged: two movements of one piece stay separate groups unless they share music.

The result depends only on the MIDI contents and the rule, so it is cached on disk under the hash of
(rule, every passage's score and performance content hashes).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pianoray.files import atomic_write

logger = logging.getLogger(__name__)

RUN_LENGTH = 16
THRESHOLD = 0.5
RULE = f"pitch-runs/{RUN_LENGTH}/{THRESHOLD}/v1"
MUSIC_GROUPS_CACHE = Path("~/.cache/pianoray/music-groups")


class MusicGroupsUnavailable(ValueError):
    """Music groups cannot be computed for a corpus (the message says why, e.g. no MIDI)."""


@dataclass(frozen=True)
class SharedPair:
    """Two passages that share music: the overlap (share of the shorter rendition's runs found in the
    other) and what was compared (``score`` or ``performer:<name>``)."""

    a: str
    b: str
    overlap: float
    via: str


@dataclass(frozen=True)
class MusicGroups:
    """passage -> music group, with the pairs that joined them."""

    group_of: dict[str, str]
    pairs: tuple[SharedPair, ...]
    rule: str = RULE

    def members(self) -> dict[str, list[str]]:
        """group -> its passages (sorted), groups in sorted order."""
        out: dict[str, list[str]] = defaultdict(list)
        for passage, group in sorted(self.group_of.items()):
            out[group].append(passage)
        return dict(sorted(out.items()))

    def to_json(self) -> dict[str, Any]:
        return {"rule": self.rule, "group_of": dict(sorted(self.group_of.items())),
                "pairs": [[p.a, p.b, p.overlap, p.via] for p in self.pairs]}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> "MusicGroups":
        return cls({str(k): str(v) for k, v in data["group_of"].items()},
                   tuple(SharedPair(str(a), str(b), float(o), str(v)) for a, b, o, v in data["pairs"]),
                   str(data["rule"]))


# ------------------------------------------------------------------------------------------ the rule


def pitch_runs(onset: np.ndarray, pitch: np.ndarray, n: int = RUN_LENGTH) -> set[bytes]:
    """Distinct runs of ``n`` consecutive pitches in (onset, pitch) order; onset, pitch: [L].

    Each run is returned as the bytes of its pitches (hashable, compact). A sequence shorter than ``n``
    is one run, so a short rendition can still match a longer one that contains it.
    """
    order = np.lexsort((pitch, onset))
    seq = np.asarray(pitch, dtype=np.uint8)[order]
    if len(seq) <= n:
        return {seq.tobytes()} if len(seq) else set()
    windows = np.lib.stride_tricks.sliding_window_view(seq, n)
    return {w.tobytes() for w in windows}


def overlap(a: set[bytes], b: set[bytes]) -> float:
    """Share of the smaller run set found in the other (0 when either is empty)."""
    if not a or not b:
        return 0.0
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    return len(small & large) / len(small)


def components(nodes: list[str], edges: list[SharedPair]) -> dict[str, str]:
    """Connected components; each named by its smallest node."""
    parent = {x: x for x in nodes}

    def root(x: str) -> str:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for e in edges:
        ra, rb = root(e.a), root(e.b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in nodes}


@dataclass(frozen=True)
class Renditions:
    """What one passage offers for comparison: its score's runs (or None) and each performer's runs."""

    score: set[bytes] | None
    performances: dict[str, set[bytes]]


def group_passages(renditions: Mapping[str, Renditions], threshold: float = THRESHOLD) -> MusicGroups:
    """Apply the rule (module docstring) to every pair of passages."""
    names = sorted(renditions)
    pairs: list[SharedPair] = []
    for i, a in enumerate(names):
        ra = renditions[a]
        for b in names[i + 1:]:
            rb = renditions[b]
            if ra.score is not None and rb.score is not None:
                o = overlap(ra.score, rb.score)
                if o >= threshold:
                    pairs.append(SharedPair(a, b, round(o, 4), "score"))
                continue
            for performer in sorted(set(ra.performances) & set(rb.performances)):
                o = overlap(ra.performances[performer], rb.performances[performer])
                if o >= threshold:
                    pairs.append(SharedPair(a, b, round(o, 4), f"performer:{performer}"))
                    break
    return MusicGroups(components(names, pairs), tuple(pairs))


# ------------------------------------------------------------------------------- from a manifest


def _sha(path: Path, sha: Any) -> str:
    from pianoray.data.midi import file_sha256

    return str(sha) if isinstance(sha, str) and sha else file_sha256(path)


def music_groups(
    manifest: Any,
    resolve: Callable[[str], Path | None],
    cache_dir: Path | None = MUSIC_GROUPS_CACHE,
) -> MusicGroups:
    """Music groups of the passages of a T1 manifest (columns passage, performer, perf_midi, score_midi and
    their ``*_sha``; ``resolve`` turns a manifest path into a file).

    Raises MusicGroupsUnavailable, saying why, when the manifest has no MIDI to compare.
    """
    import pandas as pd

    from pianoray.data.midi import load_notes

    if "passage" not in manifest.columns:
        raise MusicGroupsUnavailable("the manifest has no passage column")
    has_perf = "perf_midi" in manifest.columns and manifest["perf_midi"].notna().any()
    has_score = "score_midi" in manifest.columns and manifest["score_midi"].notna().any()
    if not (has_perf or has_score):
        raise MusicGroupsUnavailable("the corpus has no MIDI (score or performance) to compare passages by")

    scores: dict[str, tuple[Path, str]] = {}
    perfs: dict[str, dict[str, tuple[Path, str]]] = defaultdict(dict)
    for row in manifest.to_dict("records"):
        passage = str(row["passage"])
        for col, sink in (("score_midi", None), ("perf_midi", str(row.get("performer")))):
            rel = row.get(col)
            if rel is None or (isinstance(rel, float) and pd.isna(rel)):
                continue
            path = resolve(rel)
            if path is None or not Path(path).is_file():
                raise MusicGroupsUnavailable(f"{col} {rel!r} of passage {passage!r} is not a file")
            entry = (Path(path), _sha(Path(path), row.get(f"{col}_sha")))
            if sink is None:
                scores.setdefault(passage, entry)
            else:
                perfs[passage].setdefault(sink, entry)
    passages = sorted(set(manifest["passage"].astype(str)))
    key = _cache_key(passages, scores, perfs)
    cached = _read_cache(cache_dir, key)
    if cached is not None:
        return cached

    runs_memo: dict[str, set[bytes]] = {}

    def runs(entry: tuple[Path, str]) -> set[bytes]:
        path, sha = entry
        if sha not in runs_memo:
            notes = load_notes(path)
            runs_memo[sha] = pitch_runs(notes.onset, notes.pitch)
        return runs_memo[sha]

    # Performances are read only for passages that lack a score (the fallback), and for their partners.
    need_perf = {p for p in passages if p not in scores}
    renditions = {
        p: Renditions(
            runs(scores[p]) if p in scores else None,
            {who: runs(e) for who, e in perfs[p].items()} if need_perf else {},
        )
        for p in passages
    }
    groups = group_passages(renditions)
    _write_cache(cache_dir, key, groups)
    return groups


def _cache_key(passages: list[str], scores: Mapping[str, tuple[Path, str]],
               perfs: Mapping[str, Mapping[str, tuple[Path, str]]]) -> str:
    payload = {
        "rule": RULE,
        "passages": [[p, scores[p][1] if p in scores else None,
                      sorted((w, e[1]) for w, e in perfs.get(p, {}).items())] for p in passages],
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:32]


def _read_cache(cache_dir: Path | None, key: str) -> MusicGroups | None:
    if cache_dir is None:
        return None
    path = Path(cache_dir).expanduser() / f"{key}.json"
    try:
        return MusicGroups.from_json(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: recompute (and rewrite)


def _write_cache(cache_dir: Path | None, key: str, groups: MusicGroups) -> None:
    if cache_dir is None:
        return
    folder = Path(cache_dir).expanduser()
    try:
        atomic_write(folder / f"{key}.json", json.dumps(groups.to_json()))
    except OSError as e:  # a read-only cache folder only costs a recomputation next time: say so, go on
        logger.warning("music groups not cached in %s (%s); they will be recomputed next time", folder, e)


def corpus_music_groups(corpus: Any, cache_dir: Path | None = MUSIC_GROUPS_CACHE) -> MusicGroups:
    """Music groups of a corpus's T1 passages (its manifest paths resolved by ``corpus.path``)."""
    from pianoray.data.tiers import Tier

    return music_groups(corpus.manifest(Tier.T1), corpus.path, cache_dir)
