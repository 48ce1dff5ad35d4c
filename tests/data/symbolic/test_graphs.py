"""Graph construction on hand-made note tables whose edges are worked out by hand."""

from __future__ import annotations

import numpy as np
import torch

from pianoray.data.midi import NoteTable
from pianoray.data.symbolic.graphs import (
    EDGE_TYPES,
    GraphConfig,
    assign_voices,
    build_graph,
    build_hetero_graph,
    graph_arrays,
    hetero_graph_arrays,
    window_edges,
)


def five_notes() -> NoteTable:
    # Sorted order: 0 (0.00, p60), 1 (0.01, p64) a chord; 2 starts as the chord ends; 3 starts while 2
    # sounds; a rest after 3; 4 after the rest.
    return NoteTable.from_arrays(
        pitch=[60, 64, 62, 48, 67],
        onset=[0.00, 0.01, 0.50, 0.60, 1.50],
        offset=[0.50, 0.50, 0.70, 1.00, 2.00],
        velocity=[80, 70, 60, 50, 40],
        pedal_intervals=[[0.4, 0.55]],
    )


def edges_of(edge_index: np.ndarray) -> set[tuple[int, int]]:
    return {(int(a), int(b)) for a, b in np.asarray(edge_index).T}


def both(pairs: set[tuple[int, int]]) -> set[tuple[int, int]]:
    return pairs | {(b, a) for a, b in pairs}


def test_window_edges_caps_fanout() -> None:
    e = window_edges(np.array([0, 1]), np.array([2, 5]), np.array([10, 6]), 3)
    assert edges_of(e) == {(0, 2), (0, 3), (0, 4), (1, 5)}


def test_voices_follow_the_skyline_rule() -> None:
    # Chord top 64 -> melody 0, bottom 60 -> bass 1; lone 62 is equally near both -> melody; lone 48 -> bass.
    assert assign_voices(five_notes()).tolist() == [1, 0, 0, 1, 0]


def test_homogeneous_edges_by_type() -> None:
    g = graph_arrays(five_notes())
    by_type = {name: edges_of(g["edge_index"][:, g["edge_type"] == t]) for t, name in enumerate(EDGE_TYPES)}
    assert by_type["temporal"] == both({(0, 2), (1, 2), (2, 3), (3, 4)})
    assert by_type["harmonic"] == both({(0, 1)})
    assert by_type["voice"] == both({(1, 2), (2, 4), (0, 3)})
    # One-hot type columns agree with edge_type; the harmonic interval is signed semitones / 12.
    assert np.array_equal(g["edge_attr"][:, :3].argmax(1), g["edge_type"])
    k = np.where((g["edge_index"][0] == 0) & (g["edge_index"][1] == 1) & (g["edge_type"] == 1))[0][0]
    assert np.isclose(g["edge_attr"][k, 3], 4 / 12) and np.isclose(g["edge_attr"][k, 4], 0.01)
    assert g["x"].shape == (5, 6)
    assert g["x"][:, 4].tolist() == [0, 0, 1, 0, 0]  # pedal down at onset only for note 2


def test_hetero_edges_by_relation() -> None:
    h = hetero_graph_arrays(five_notes())
    rel = {k[: -len("__edge_index")]: edges_of(v) for k, v in h.items() if k.endswith("__edge_index")}
    assert rel["onset"] == both({(0, 1)})
    assert rel["during"] == {(2, 3)}
    assert rel["follow"] == {(0, 2), (1, 2)}
    assert rel["silence"] == {(3, 4)}
    for name in ("during", "follow", "silence"):
        assert rel[f"rev_{name}"] == {(b, a) for a, b in rel[name]}


def test_dense_chord_edges_stay_linear() -> None:
    n = 12
    chord = NoteTable.from_arrays(
        pitch=np.arange(40, 40 + n), onset=np.linspace(0, 0.02, n), offset=np.full(n, 1.0), velocity=np.full(n, 64)
    )
    cfg = GraphConfig(max_fanout=3)
    g = graph_arrays(chord, cfg)
    harmonic = g["edge_index"][:, g["edge_type"] == 1]
    assert np.bincount(harmonic[0], minlength=n).max() <= 2 * 3  # forward + reverse, each capped
    assert harmonic.shape[1] == 2 * (3 * (n - 3) + 2 + 1)


def test_pyg_objects() -> None:
    data = build_graph(five_notes())
    assert data.edge_type.dtype == torch.long and data.edge_attr.shape == (data.edge_index.shape[1], 5)
    hetero = build_hetero_graph(five_notes())
    assert hetero["note"].x.shape == (5, 6)
    assert ("note", "silence", "note") in hetero.edge_types
    assert hetero["note", "follow", "note"].edge_index.tolist() == [[0, 1], [2, 2]]


def test_empty_table() -> None:
    empty = NoteTable.from_arrays([], [], [], [])
    assert graph_arrays(empty)["edge_index"].shape == (2, 0)
    assert hetero_graph_arrays(empty)["x"].shape == (0, 6)
