"""Hand-made note tables and batches for the S2 / S2H tests (no MIDI files needed).

Each sample has a loudness level and a chord density; the targets are those two numbers, so a model can
only fit them from the velocities (node features) and from which notes are simultaneous (the graph).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch as GraphBatch

from pianoray.data.batch import Batch
from pianoray.data.midi import NoteTable
from pianoray.data.symbolic.graphs import build_graph, build_hetero_graph


def random_notes(rng: np.random.Generator, loudness: float, chord_rate: float, groups: int = 16) -> NoteTable:
    """``groups`` onset groups 0.25 s apart; each a chord of 3 with probability ``chord_rate``. Durations
    vary (legato, staccato, held) so that every hetero relation gets edges."""
    pitch, onset, offset, velocity = [], [], [], []
    t = 0.0
    for _ in range(groups):
        size = 3 if rng.random() < chord_rate else 1
        base = int(rng.integers(48, 72))
        for k in range(size):
            dur = float(rng.choice([0.1, 0.25, 0.6]))
            pitch.append(base + 4 * k)
            onset.append(t)
            offset.append(t + dur)
            velocity.append(int(np.clip(30 + 80 * loudness + rng.normal(0, 4), 1, 127)))
        t += 0.25 + float(rng.choice([0.0, 0.2]))  # occasional rests
    return NoteTable.from_arrays(np.array(pitch), np.array(onset), np.array(offset), np.array(velocity))


def make_batch(view: str, notes: list[NoteTable], labels: torch.Tensor) -> Batch:
    """A T1 batch with one ranking group, holding ``view`` ("graph" or "hetero_graph") of ``notes``."""
    build = build_graph if view == "graph" else build_hetero_graph
    return Batch.supervised({view: GraphBatch.from_data_list([build(n) for n in notes])}, labels)


def learnable_task(view: str, seed: int, n: int = 24) -> Batch:
    """Targets [n, 2] = (loudness, chord share of the onset groups)."""
    rng = np.random.default_rng(seed)
    loud, chords = rng.random(n), rng.random(n)
    notes = [random_notes(rng, float(l), float(c)) for l, c in zip(loud, chords)]
    share = []
    for nt in notes:
        _, counts = np.unique(np.round(nt.onset, 3), return_counts=True)
        share.append(float((counts > 1).mean()))
    labels = torch.tensor(np.stack([loud, share], axis=1), dtype=torch.float32)
    return make_batch(view, notes, labels)


@pytest.fixture(autouse=False)
def one_thread():
    """Run a test on one intra-op thread: these graphs are tiny, and on a shared 2-core machine two
    spinning OpenMP threads slow each step 50x when another process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
