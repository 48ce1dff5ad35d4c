"""Checkpoints: the state that makes a resumed run equal an uninterrupted one, and where it goes.

``fit`` writes each epoch's state into a fresh directory and hands it to a :class:`CheckpointSink`.
There is one checkpoint policy, the sink's:
- :class:`TopKSink` (local runs) keeps the best ``k`` by validation pairwise accuracy plus the latest
  (for resume), each directory renamed into place only once complete (atomic);
- the Ray sink (in ``pianoray.protocol``) passes the directory to Ray's report call, and Ray's
  ``CheckpointConfig(num_to_keep, checkpoint_score_attribute)`` keeps the top-k.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from pianoray.errors import MissingInputError
from pianoray.records import SELECTION_METRIC

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
PAIR_COUNTS_FILE = "pair_counts.json"  # the epoch's validation pair counts (PairCounts.to_json())


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(directory: Path, state: dict[str, Any], metrics: dict[str, Any],
                pair_counts: dict[str, Any] | None = None) -> None:
    """state.pt, metrics.json and, when given, pair_counts.json (the epoch's ``PairCounts.to_json()``)."""
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(state, directory / STATE_FILE)
    (directory / METRICS_FILE).write_text(json.dumps(metrics, indent=1, default=float))
    if pair_counts is not None:
        (directory / PAIR_COUNTS_FILE).write_text(json.dumps(pair_counts, separators=(",", ":")))


def read_state(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise MissingInputError(f"{path}: no checkpoint state here")
    # weights_only=False: the state holds RNG states and plain Python objects we wrote ourselves.
    return torch.load(path, map_location="cpu", weights_only=False)


class CheckpointSink(Protocol):
    def staging_dir(self) -> Path:
        """A fresh, empty directory on the same filesystem as the sink's store, for ``fit`` to fill."""

    def commit(self, directory: Path, metrics: dict[str, Any]) -> Path | None:
        """Take ownership of a complete checkpoint directory for this epoch (metrics hold the score);
        return where it now lives, if it stays on this filesystem."""


class TopKSink:
    """Keeps the top ``k`` checkpoints by ``metric`` (max) plus the most recent one, under ``root``.

    Layout: root/epoch-0007/ (complete checkpoints only), root/latest -> name of the newest (a small text
    file, replaced atomically). An interrupted write leaves only a ``.tmp-*`` directory, never counted.
    """

    def __init__(self, root: str | Path, k: int = 3, metric: str = SELECTION_METRIC) -> None:
        self.root = Path(root)
        self.k = k
        self.metric = metric
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in self.root.glob(".tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)

    def staging_dir(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=".tmp-", dir=self.root))

    def commit(self, directory: Path, metrics: dict[str, Any]) -> Path:
        name = f"epoch-{int(metrics['epoch']):04d}"
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(directory, final)
        tmp = self.root / ".latest.tmp"
        tmp.write_text(name)
        os.replace(tmp, self.root / "latest")
        self._prune(keep_also=name)
        return final

    def checkpoints(self) -> list[tuple[float, Path]]:
        out = []
        for d in self.root.glob("epoch-*"):
            m = d / METRICS_FILE
            if m.is_file():
                score = json.loads(m.read_text()).get(self.metric)
                out.append((float("-inf") if score is None or score != score else float(score), d))
        return sorted(out, key=lambda t: (t[0], t[1].name), reverse=True)

    def best(self) -> Path | None:
        ranked = self.checkpoints()
        return ranked[0][1] if ranked else None

    def latest(self) -> Path | None:
        pointer = self.root / "latest"
        if not pointer.is_file():
            return None
        d = self.root / pointer.read_text().strip()
        return d if (d / STATE_FILE).is_file() else None

    def _prune(self, keep_also: str) -> None:
        ranked = self.checkpoints()
        keep = {d.name for _, d in ranked[: self.k]} | {keep_also}
        for _, d in ranked:
            if d.name not in keep:
                shutil.rmtree(d, ignore_errors=True)
