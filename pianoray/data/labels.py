"""Label sets for T1 segments: PercePiano's raw 19 ratings or the taxonomy's N composites.

``labels.json`` (the seed's ``composite_labels/labels.json``) maps segment id -> {dimension: value}.
The training side asks :func:`label_set` for (names, values) and never branches on which kind it got.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import numpy as np

from pianoray.data.percepiano import N_DIMS, PERCEPIANO_DIMS
from pianoray.data.taxonomy import Taxonomy
from pianoray.errors import PianorayError
from pianoray.files import atomic_write

LabelKind = Literal["percepiano19", "composite"]
LABEL_KINDS: tuple[str, ...] = ("percepiano19", "composite")


class LabelError(PianorayError, ValueError):
    """Unusable labels; the message names the file (or segment) and the problem."""


def _stack(labels19: Mapping[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """{segment_id: [19]} -> (ids in sorted order, [M, 19] float64), checking shape and range per segment."""
    ids = sorted(labels19)
    rows = []
    for sid in ids:
        x = np.asarray(labels19[sid], dtype=np.float64)
        if x.shape != (N_DIMS,):
            raise LabelError(f"segment {sid!r}: expected {N_DIMS} PercePiano ratings, got shape {x.shape}")
        if not np.all(np.isfinite(x)) or x.min() < 0.0 or x.max() > 1.0:
            raise LabelError(f"segment {sid!r}: ratings must lie in [0, 1]")
        rows.append(x)
    return ids, (np.stack(rows) if rows else np.zeros((0, N_DIMS)))


def build_composite_labels(labels19: Mapping[str, np.ndarray], taxonomy: Taxonomy) -> dict[str, dict[str, float]]:
    """{segment_id: ratings [19]} -> {segment_id: {dimension: value in [0, 1]}} (the labels.json content)."""
    ids, x = _stack(labels19)
    comp = taxonomy.composite(x) if len(ids) else np.zeros((0, len(taxonomy)))
    names = taxonomy.names
    return {sid: {n: float(v) for n, v in zip(names, row)} for sid, row in zip(ids, comp)}


def write_labels_json(path: str | Path, labels: Mapping[str, Mapping[str, float]]) -> None:
    """Write labels.json atomically (:func:`pianoray.files.atomic_write`); keys sorted for stable diffs."""
    payload = {sid: {k: float(v) for k, v in dims.items()} for sid, dims in sorted(labels.items())}
    atomic_write(path, json.dumps(payload, indent=1))


def read_labels_json(path: str | Path, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """labels.json -> {segment_id: float32 [N]} in the order ``names`` (default: the first entry's order).

    Raises LabelError naming the file and segment for a missing file, bad JSON, a segment whose
    dimensions differ from ``names``, or a value outside [0, 1].
    """
    path = Path(path)
    if not path.is_file():
        raise LabelError(f"{path}: labels file not found")
    try:
        raw = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise LabelError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise LabelError(f"{path}: expected an object of segment id -> {{dimension: value}}")
    out: dict[str, np.ndarray] = {}
    for sid, dims in raw.items():
        if not isinstance(dims, dict):
            raise LabelError(f"{path}: segment {sid!r}: expected an object of dimension -> value")
        if names is None:
            names = list(dims)
        if set(dims) != set(names):
            raise LabelError(f"{path}: segment {sid!r}: dimensions {sorted(dims)} differ from {sorted(names)}")
        try:
            values = [float(dims[n]) for n in names]
        except (TypeError, ValueError):
            raise LabelError(f"{path}: segment {sid!r}: values must be numbers") from None
        if not all(math.isfinite(v) and 0.0 <= v <= 1.0 for v in values):
            raise LabelError(f"{path}: segment {sid!r}: values must lie in [0, 1]")
        out[sid] = np.asarray(values, dtype=np.float32)
    return out


def label_set(
    kind: LabelKind, labels19: Mapping[str, np.ndarray], taxonomy: Taxonomy | None = None
) -> tuple[list[str], dict[str, np.ndarray]]:
    """(dimension names [N], {segment_id: float32 [N]}) for ``kind``.

    "percepiano19": the 19 ratings as they are (N = 19); "composite": ``taxonomy`` (default: the shipped
    6-dimension one) applied to them.
    """
    if kind == "percepiano19":
        ids, x = _stack(labels19)
        return list(PERCEPIANO_DIMS), {sid: row.astype(np.float32) for sid, row in zip(ids, x)}
    if kind == "composite":
        taxonomy = taxonomy if taxonomy is not None else Taxonomy.default()
        ids, x = _stack(labels19)
        comp = taxonomy.composite(x) if len(ids) else np.zeros((0, len(taxonomy)), dtype=np.float32)
        return taxonomy.names, {sid: row for sid, row in zip(ids, comp)}
    raise ValueError(f"label kind {kind!r}: expected one of {LABEL_KINDS}")
