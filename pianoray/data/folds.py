"""Group k-fold cross-validation splits that never split a group, with an inner validation split.

The group is, by unit:

- ``music`` (the default): the *music group*, passages that share music (``pianoray.data.music``: on
  PercePiano an 8-bar and a 16-bar cut of one take, or repeated sections, are different passage keys of
  the same music). PercePiano label variance is dominated by what is played (passage identity alone
  explains ~40%), so a fold that separates the same music leaks: the model learns the music, not the
  playing.
- ``passage``: the passage key (all players of one passage). Safe only where no two passages share music.
- ``performer``: the seed's performer split (new performers of known music); it does not separate music,
  on purpose.

Assignment: groups are shuffled with the seed, then placed largest-first into the fold that is lightest
(by number of keys); with ``strata`` (e.g. the piece) each stratum's groups are first spread across
folds (lightest fold *within the stratum*, ties to the lightest fold overall). For fold i, test = fold
i; the other folds' groups are split, whole, into train and val (val ~ ``val_fraction`` of them).

On disk (JSON, written atomically)::

    {"version": 1, "k": 4, "unit": "music", "seed": 42, "val_fraction": 0.2,
     "groups": {key: group}, "folds": [{"train": [...], "val": [...], "test": [...]}, ...],
     "music_groups": {group: [passage, ...]},    # unit "music" only
     "competition_rounds": [[round_id, ...], ...]} # per fold, where the corpus has competition rounds (T2)

Keys are segment ids, groups are the unit's groups; ``music_groups`` lists each music group's passages.
Competition rounds (T2, ranked by placement) are split by round along with the folds: fold i never trains on
its ``competition_rounds[i]``, and its competition Spearman is computed on those rounds alone.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from pianoray.errors import InputError, PianorayError, UnknownNameError
from pianoray.files import atomic_write

FOLDS_VERSION = 1
Unit = Literal["music", "passage", "performer"]
UNITS: tuple[str, ...] = ("music", "passage", "performer")
DEFAULT_UNIT: Unit = "music"


class FoldError(PianorayError, ValueError):
    """An unusable folds file; the message names the file and each problem."""

    def __init__(self, source: str | Path, problems: Sequence[str]) -> None:
        self.source = str(source)
        self.problems = list(problems)
        super().__init__(f"{source}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class Fold:
    """One CV fold: disjoint key lists (sorted)."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


@dataclass(frozen=True)
class FoldSet:
    """k folds over the keys of ``groups`` (key -> group)."""

    k: int
    unit: str
    seed: int
    val_fraction: float
    groups: dict[str, str]
    folds: tuple[Fold, ...]
    music_groups: dict[str, tuple[str, ...]] | None = None  # unit "music": group -> its passages
    note: str = ""  # one line for run/validate/report: the unit used and, if not the one asked for, why
    competition_rounds: tuple[tuple[str, ...], ...] | None = None  # fold i's held-out T2 rounds

    def __len__(self) -> int:
        return len(self.folds)

    def __getitem__(self, i: int) -> Fold:
        return self.folds[i]

    @property
    def keys(self) -> list[str]:
        return sorted(self.groups)

    def test_fold_of(self) -> dict[str, int]:
        """key -> index of the fold whose test set holds it."""
        return {key: i for i, fold in enumerate(self.folds) for key in fold.test}

    def to_json(self) -> dict:
        return {
            "version": FOLDS_VERSION,
            "k": self.k,
            "unit": self.unit,
            "seed": self.seed,
            "val_fraction": self.val_fraction,
            "groups": dict(sorted(self.groups.items())),
            "folds": [{"train": list(f.train), "val": list(f.val), "test": list(f.test)} for f in self.folds],
            **({"music_groups": {g: list(p) for g, p in sorted(self.music_groups.items())}}
               if self.music_groups is not None else {}),
            **({"note": self.note} if self.note else {}),
            **({"competition_rounds": [list(r) for r in self.competition_rounds]}
               if self.competition_rounds is not None else {}),
        }

    def save(self, path: str | Path) -> None:
        """Write JSON through a temporary file and ``os.replace``, so a reader never sees half a file."""
        atomic_write(path, json.dumps(self.to_json(), indent=1))

    @classmethod
    def from_json(cls, data: object, source: str | Path = "<folds>") -> "FoldSet":
        """Parse and validate; raises FoldError naming ``source`` and every problem found."""
        problems = _schema_problems(data)
        if problems:
            raise FoldError(source, problems)
        assert isinstance(data, dict)
        folds = tuple(
            Fold(tuple(f["train"]), tuple(f["val"]), tuple(f["test"])) for f in data["folds"]
        )
        foldset = cls(
            k=int(data["k"]),
            unit=str(data["unit"]),
            seed=int(data["seed"]),
            val_fraction=float(data["val_fraction"]),
            groups={str(k): str(v) for k, v in data["groups"].items()},
            folds=folds,
            music_groups=({str(g): tuple(map(str, p)) for g, p in data["music_groups"].items()}
                          if "music_groups" in data else None),
            note=str(data.get("note", "")),
            competition_rounds=(tuple(tuple(map(str, r)) for r in data["competition_rounds"])
                                if "competition_rounds" in data else None),
        )
        problems = check_folds(foldset)
        if problems:
            raise FoldError(source, problems)
        return foldset

    @classmethod
    def load(cls, path: str | Path) -> "FoldSet":
        path = Path(path)
        if not path.is_file():
            raise FoldError(path, ["file not found"])
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FoldError(path, [f"not valid JSON ({e})"]) from None
        return cls.from_json(data, source=path)


def _schema_problems(data: object) -> list[str]:
    if not isinstance(data, dict):
        return ["expected a JSON object"]
    problems = []
    for field, kind in (("version", int), ("k", int), ("unit", str), ("seed", int),
                        ("val_fraction", (int, float)), ("groups", dict), ("folds", list)):
        if field not in data:
            problems.append(f"missing field {field!r}")
        elif not isinstance(data[field], kind) or isinstance(data[field], bool):
            problems.append(f"field {field!r} has the wrong type ({type(data[field]).__name__})")
    if problems:
        return problems
    if data["version"] != FOLDS_VERSION:
        problems.append(f"version {data['version']} is not supported (expected {FOLDS_VERSION})")
    if data["unit"] not in UNITS:
        problems.append(f"unit {data['unit']!r} is not one of {UNITS}")
    rounds = data.get("competition_rounds")
    if rounds is not None and not (isinstance(rounds, list) and len(rounds) == data["k"] and all(
            isinstance(r, list) and all(isinstance(x, str) for x in r) for r in rounds)):
        problems.append("competition_rounds: expected one list of round ids per fold")
    if data["k"] != len(data["folds"]):
        problems.append(f"k={data['k']} but {len(data['folds'])} folds are listed")
    if not all(isinstance(v, str) for v in data["groups"].values()):
        problems.append("groups: every value must be a string")
    music = data.get("music_groups")
    if music is not None and not (isinstance(music, dict) and all(
            isinstance(v, list) and all(isinstance(x, str) for x in v) for v in music.values())):
        problems.append("music_groups: expected an object of group -> list of passages")
    for i, fold in enumerate(data["folds"]):
        if not isinstance(fold, dict) or set(fold) != {"train", "val", "test"}:
            problems.append(f"folds[{i}] must have exactly the lists train, val, test")
        elif not all(isinstance(fold[s], list) and all(isinstance(x, str) for x in fold[s]) for s in fold):
            problems.append(f"folds[{i}]: train, val and test must be lists of strings")
    return problems


def check_folds(foldset: FoldSet, groups: Mapping[str, str] | None = None) -> list[str]:
    """Every leakage/coverage problem of ``foldset`` against ``groups`` (default: its own), as lines.

    Checks: test sets disjoint and covering every key; each fold's train/val/test disjoint and
    together all keys; no group in two folds' test sets; no group in two lists of one fold; no empty
    train or test. Passing the current data's groups also catches a folds file made for other data.
    """
    problems: list[str] = []
    given = groups is not None
    groups = dict(foldset.groups if groups is None else groups)
    all_keys = set(groups)
    listed = set(foldset.groups)
    if given:
        if missing := sorted(all_keys - listed):
            problems.append(f"{len(missing)} keys of the data are not in the folds (e.g. {missing[0]!r})")
        if extra := sorted(listed - all_keys):
            problems.append(f"{len(extra)} keys in the folds are not in the data (e.g. {extra[0]!r})")
        changed = sorted(k for k in all_keys & listed if foldset.groups[k] != groups[k])
        if changed:
            problems.append(f"{len(changed)} keys changed group (e.g. {changed[0]!r})")
    seen_test: dict[str, int] = {}
    group_test_fold: dict[str, int] = {}
    for i, fold in enumerate(foldset.folds):
        parts = {"train": fold.train, "val": fold.val, "test": fold.test}
        for name, keys in parts.items():
            if dupes := [k for k, n in Counter(keys).items() if n > 1]:
                problems.append(f"fold {i} {name}: key {dupes[0]!r} listed twice")
            if unknown := [k for k in keys if k not in groups]:
                problems.append(f"fold {i} {name}: key {unknown[0]!r} has no group")
        if not fold.test:
            problems.append(f"fold {i}: empty test set")
        if not fold.train:
            problems.append(f"fold {i}: empty train set")
        names = list(parts)
        for a in range(3):
            for b in range(a + 1, 3):
                if both := sorted(set(parts[names[a]]) & set(parts[names[b]])):
                    problems.append(f"fold {i}: key {both[0]!r} in both {names[a]} and {names[b]}")
        if uncovered := sorted(all_keys - set(fold.train) - set(fold.val) - set(fold.test)):
            problems.append(f"fold {i}: {len(uncovered)} keys in none of train/val/test (e.g. {uncovered[0]!r})")
        # A group in two of one fold's lists leaks between training and selection/evaluation.
        where: dict[str, set[str]] = defaultdict(set)
        for name, keys in parts.items():
            for k in keys:
                if k in groups:
                    where[groups[k]].add(name)
        for g, names_of_g in sorted(where.items()):
            if len(names_of_g) > 1:
                problems.append(f"fold {i}: {foldset.unit} {g!r} split across {'/'.join(sorted(names_of_g))}")
        for k in fold.test:
            if k in seen_test:
                problems.append(f"key {k!r} in the test sets of folds {seen_test[k]} and {i}")
            seen_test[k] = i
            if k in groups:
                g = groups[k]
                if group_test_fold.setdefault(g, i) != i:
                    problems.append(f"{foldset.unit} {g!r} split across test folds {group_test_fold[g]} and {i}")
                    group_test_fold[g] = i  # report each further split once, not for every key
    if untested := sorted(all_keys - set(seen_test)):
        problems.append(f"{len(untested)} keys are in no test set (e.g. {untested[0]!r})")
    return problems


def _assign_groups(
    sizes: Mapping[str, int], k: int, rng: np.random.Generator, stratum: Mapping[str, str] | None
) -> list[list[str]]:
    """Greedy balanced assignment of whole groups to k folds (see module docstring)."""
    order = sorted(sizes)
    rng.shuffle(order)  # the seed decides ties between equal-sized groups
    load = [0] * k
    strat_load: dict[str, list[int]] = defaultdict(lambda: [0] * k)
    if stratum is None:
        order.sort(key=lambda g: -sizes[g])  # stable: shuffled order survives among equal sizes
    else:
        stratum_size = Counter()
        for g in order:
            stratum_size[stratum[g]] += sizes[g]
        order.sort(key=lambda g: (-stratum_size[stratum[g]], stratum[g], -sizes[g]))
    folds: list[list[str]] = [[] for _ in range(k)]
    for g in order:
        if stratum is None:
            i = min(range(k), key=lambda j: (load[j], j))
        else:
            s = strat_load[stratum[g]]
            i = min(range(k), key=lambda j: (s[j], load[j], j))
            s[i] += sizes[g]
        folds[i].append(g)
        load[i] += sizes[g]
    return folds


def _split_val(
    groups_in: list[str], sizes: Mapping[str, int], val_fraction: float, rng: np.random.Generator
) -> tuple[set[str], set[str]]:
    """Whole groups -> (train, val) with val holding ~val_fraction of the keys (at least one group)."""
    order = sorted(groups_in)
    rng.shuffle(order)
    total = sum(sizes[g] for g in order)
    target = val_fraction * total
    val: set[str] = set()
    n_val = 0
    for g in order:
        if len(val) == len(order) - 1:
            break  # keep at least one training group
        # Take a group when it brings val closer to the target than leaving it out.
        if abs(n_val + sizes[g] - target) < abs(n_val - target) or not val:
            val.add(g)
            n_val += sizes[g]
    return set(order) - val, val


def make_folds(
    keys: Sequence[str],
    groups: Sequence[str],
    k: int = 4,
    unit: Unit = DEFAULT_UNIT,
    val_fraction: float = 0.2,
    seed: int = 42,
    strata: Sequence[str] | None = None,
    music_groups: Mapping[str, Sequence[str]] | None = None,
) -> FoldSet:
    """Group k-fold with an inner, group-wise validation split.

    keys: [M] unique sample ids; groups: [M] the group of each key (its music group, passage or
    performer); strata: [M] optional coarser label to spread across folds (e.g. the piece), constant
    within a group; music_groups: group -> passages, stored with the folds (unit "music").
    Deterministic for a given (keys, groups, strata, k, val_fraction, seed), whatever the input order.
    """
    keys = [str(x) for x in keys]
    groups = [str(x) for x in groups]
    if unit not in UNITS:
        raise InputError(f"unit={unit!r}: expected one of {UNITS}")
    if len(keys) != len(groups):
        raise InputError(f"{len(keys)} keys but {len(groups)} groups")
    if dupes := [x for x, n in Counter(keys).items() if n > 1]:
        raise InputError(f"duplicate key {dupes[0]!r}: keys must be unique")
    if not 0.0 < val_fraction < 1.0:
        raise InputError(f"val_fraction={val_fraction}: must lie in (0, 1)")
    sizes = Counter(groups)
    if k < 2 or len(sizes) < k:
        raise InputError(f"k={k} folds need k >= 2 and at least k groups; there are {len(sizes)} {unit}s")
    if len(sizes) - len(sizes) // k < 2:
        raise InputError(f"{len(sizes)} {unit}s are too few for k={k} with a validation split")
    stratum_of: dict[str, str] | None = None
    if strata is not None:
        if len(strata) != len(keys):
            raise InputError(f"{len(keys)} keys but {len(strata)} strata")
        stratum_of = {}
        for g, s in zip(groups, strata):
            if stratum_of.setdefault(g, str(s)) != str(s):
                raise InputError(f"{unit} {g!r} spans strata {stratum_of[g]!r} and {s!r}: strata must be "
                                 "constant within a group")
    rng = np.random.default_rng(seed)
    fold_groups = _assign_groups(sizes, k, rng, stratum_of)
    keys_of: dict[str, list[str]] = defaultdict(list)
    for key, g in zip(keys, groups):
        keys_of[g].append(key)
    folds = []
    for i in range(k):
        rest = [g for j in range(k) if j != i for g in fold_groups[j]]
        # One generator per fold (seed, i): fold i's val split does not depend on how many draws others made.
        train_g, val_g = _split_val(rest, sizes, val_fraction, np.random.default_rng([seed, i]))
        folds.append(
            Fold(
                train=tuple(sorted(x for g in train_g for x in keys_of[g])),
                val=tuple(sorted(x for g in val_g for x in keys_of[g])),
                test=tuple(sorted(x for g in fold_groups[i] for x in keys_of[g])),
            )
        )
    music = {str(g): tuple(sorted(map(str, p))) for g, p in music_groups.items()} if music_groups else None
    return FoldSet(k, unit, seed, float(val_fraction), dict(zip(keys, groups)), tuple(folds), music)


def fold_units(
    table: pd.DataFrame, unit: Unit, music: Mapping[str, str] | None = None
) -> tuple[list[str], list[str], list[str] | None]:
    """(keys, groups, strata) of a loader's table (columns segment_id, piece, and passage or performer):
    the one place that turns a unit into groups.

    Passage and music groups are spread across folds piece by piece (strata: the piece; for a music
    group, the piece of the passage that names it, so strata stay constant within a group). A performer
    plays many pieces, so performer folds have no strata. unit "music" needs ``music`` (passage -> music
    group, ``pianoray.data.music``). For ASAP/MAESTRO-style tables (no ``passage`` column) the passage is
    the whole ``piece``.
    """
    keys = [str(x) for x in table["segment_id"]]
    groups = groups_for(table, unit, music)
    if unit == "performer" or "piece" not in table.columns:
        return keys, groups, None
    pieces = [str(x) for x in table["piece"]]
    if unit == "passage":
        return keys, groups, pieces
    piece_of_passage = dict(zip(table["passage"].astype(str), pieces))
    return keys, groups, [piece_of_passage.get(g, g) for g in groups]


def groups_for(df: pd.DataFrame, unit: Unit, music: Mapping[str, str] | None = None) -> list[str]:
    """The group of each row of a loader's DataFrame.

    PercePiano rows have a ``passage`` column; for ASAP/MAESTRO-style tables (no ``passage``) the
    passage is the whole ``piece``. unit "performer" uses the ``performer`` column; unit "music" maps
    each row's passage through ``music`` (passage -> music group).
    """
    if unit not in UNITS:
        raise InputError(f"unit={unit!r}: expected one of {UNITS}")
    column = "performer" if unit == "performer" else ("passage" if "passage" in df.columns else "piece")
    if column not in df.columns:
        raise UnknownNameError(f"unit={unit!r} needs a {column!r} column; the table has {list(df.columns)}")
    if df[column].isna().any():
        raise InputError(f"column {column!r} has missing values; every row needs a {unit}")
    values = [str(x) for x in df[column]]
    if unit != "music":
        return values
    if music is None:
        raise InputError("unit='music' needs the music groups (passage -> group)")
    if missing := sorted({v for v in values if v not in music}):
        raise InputError(f"passage {missing[0]!r} has no music group ({len(missing)} passages lack one)")
    return [music[v] for v in values]


def music_leaks(foldset: FoldSet, passage_of: Mapping[str, str], pairs: Sequence) -> list[str]:
    """One line per fold that separates music: a music-sharing pair of passages (``pairs``:
    ``pianoray.data.music.SharedPair``) whose segments sit in different parts (train/val/test).

    passage_of: segment key -> passage. Each line names both passages, their parts and the evidence.
    """
    lines = []
    for i, fold in enumerate(foldset.folds):
        part: dict[str, set[str]] = defaultdict(set)
        for name, keys in (("train", fold.train), ("val", fold.val), ("test", fold.test)):
            for key in keys:
                if key in passage_of:
                    part[passage_of[key]].add(name)
        crossing = [p for p in pairs if p.a in part and p.b in part and len(part[p.a] | part[p.b]) > 1]
        if crossing:
            p = crossing[0]
            more = f" ({len(crossing)} such pairs in this fold)" if len(crossing) > 1 else ""
            lines.append(
                f"fold {i} separates music: passage {p.a!r} ({'/'.join(sorted(part[p.a]))}) and "
                f"{p.b!r} ({'/'.join(sorted(part[p.b]))}) share {p.overlap:.0%} of their pitch runs "
                f"({p.via}){more}"
            )
    return lines


def describe_unit(foldset: FoldSet) -> str:
    """One line saying how the folds group segments, for run/validate/report."""
    n_groups = len(set(foldset.groups.values()))
    if foldset.unit == "music":
        n_passages = sum(len(p) for p in (foldset.music_groups or {}).values())
        line = f"folds by music group: {n_groups} groups over {n_passages} passages (passages that share music stay together)"
    elif foldset.unit == "passage":
        line = f"folds by passage: {n_groups} passages (passages that share music may be split)"
    else:
        line = f"folds by {foldset.unit}: {n_groups} {foldset.unit}s (new {foldset.unit}s of known music; music is not separated)"
    return f"{line}; {foldset.note}" if foldset.note else line


def corpus_folds(
    corpus: Any,
    keys: Collection[str] | None = None,
    *,
    k: int = 4,
    unit: Unit = DEFAULT_UNIT,
    val_fraction: float = 0.2,
    seed: int = 42,
) -> FoldSet:
    """Folds over a corpus's T1 segments (``keys``: only these, e.g. the labelled ones), piece-stratified.

    Unit "music" computes the corpus's music groups (``pianoray.data.music``). Where they cannot be
    computed (a corpus without MIDI), the folds fall back to passages and ``note`` says so and why: the
    run, ``validate`` and the report print it.
    """
    from pianoray.data.music import MusicGroupsUnavailable, corpus_music_groups
    from pianoray.data.tiers import Tier

    table = corpus.manifest(Tier.T1)
    if keys is not None:
        table = table[table["segment_id"].isin(set(keys))]
    music = None
    note = ""
    if unit == "music":
        try:
            music = corpus_music_groups(corpus)
        except MusicGroupsUnavailable as e:
            unit, note = "passage", f"music groups could not be computed ({e}), so folds split by passage"
    keys_, groups, strata = fold_units(table, unit, music.group_of if music else None)
    members = None
    if music is not None:
        present = set(table["passage"].astype(str))
        members = {g: [p for p in ps if p in present] for g, ps in music.members().items()}
        members = {g: ps for g, ps in members.items() if ps}
    fs = make_folds(keys_, groups, k=k, unit=unit, val_fraction=val_fraction, seed=seed, strata=strata,
                    music_groups=members)
    return with_competition_rounds(replace(fs, note=note), corpus)


def holdout_segments(corpus: Any, keys: Collection[str], holdout: Sequence[str], source: str = "data.holdout_groups"
                     ) -> set[str]:
    """The segments among ``keys`` whose music group is held out of every fold (``data.holdout_groups``).

    Each entry names a music group (``pianoray.data.music``) by any of its passages, so that a group and every
    cut of its music are held out together. An entry that names no passage of the corpus is one error naming
    it (``source: [i] ...``), before any fold is made; so is a corpus whose music groups cannot be computed.
    """
    from pianoray.data.music import MusicGroupsUnavailable, corpus_music_groups
    from pianoray.data.tiers import Tier

    if not holdout:
        return set()
    try:
        group_of = corpus_music_groups(corpus).group_of
    except MusicGroupsUnavailable as e:
        raise FoldError(source, [f"music groups cannot be computed for {corpus.root} ({e})"]) from None
    unknown = [f"[{i}] {name!r} is not a passage of {corpus.root}" for i, name in enumerate(holdout)
               if name not in group_of]
    if unknown:
        raise FoldError(source, unknown)
    held = {group_of[name] for name in holdout}
    table = corpus.manifest(Tier.T1)
    wanted = set(keys)
    return {str(s) for s, p in zip(table["segment_id"], table["passage"].astype(str))
            if s in wanted and group_of.get(p) in held}


def split_rounds(rounds: Collection[str], k: int, seed: int) -> tuple[tuple[str, ...], ...]:
    """Competition rounds -> k disjoint held-out sets (shuffled with the seed, dealt round-robin), so that
    each round is held out by exactly one fold. Deterministic whatever the input order."""
    order = sorted(set(map(str, rounds)))
    np.random.default_rng([seed, 7]).shuffle(order)
    return tuple(tuple(sorted(order[i::k])) for i in range(k))


def with_competition_rounds(foldset: FoldSet, corpus: Any) -> FoldSet:
    """``foldset`` with its held-out competition rounds (those of the corpus's T2 tier) when it has none."""
    from pianoray.data.tiers import Tier

    if foldset.competition_rounds is not None or Tier.T2 not in getattr(corpus, "tiers", ()):
        return foldset
    rounds = corpus.manifest(Tier.T2)["round_id"].astype(str)
    return replace(foldset, competition_rounds=split_rounds(rounds, foldset.k, foldset.seed))
