"""Note graphs for the S2 (homogeneous) and S2H (heterogeneous) GNN encoders.

Both graphs have one node per note (NoteTable order: sorted by onset, then pitch) with node features
``x [N, 6] float32`` = (pitch MIDI number, velocity 1-127, onset s relative to the first note,
duration s, sustain pedal at onset 0/1, voice id). Raw units on purpose: the encoder owns scaling and
embeddings (pitch and voice are integers stored as floats).

Performance MIDI is not quantised, so "simultaneous" means within ``onset_tolerance_s`` (30 ms). Dense
chords and long held notes would make edge counts quadratic, so every relation keeps at most
``max_fanout`` targets per source note (the nearest ones in onset order): edges stay O(N * fanout).
Construction is vectorised: sorting, ``searchsorted`` and ``np.repeat`` over per-note target windows.

Voices (a node feature and the homogeneous "voice" relation) come from a vectorised skyline:
notes are grouped into onset groups (consecutive onsets closer than the tolerance chain into one group);
in a group of >= 2 notes the highest note is voice 0 (melody, the skyline), the lowest voice 1 (bass),
and inner notes voices 2, 3, ... by pitch rank from the top (capped at ``max_voices - 1``). A lone note
joins the melody or the bass, whichever of the most recent chord's top and bottom pitch is nearer
(the melody when no chord came before). This ignores notes that are held across groups; it is a
cheap, deterministic stand-in for voice separation, good enough to link melodic and bass lines.

Homogeneous graph (``torch_geometric.data.Data``), three edge types, every edge stored in BOTH directions:
  0 temporal: note -> notes of the next onset group (the first onset later than its own + tolerance);
  1 harmonic: notes whose onsets lie within the tolerance (simultaneous);
  2 voice:    consecutive notes of one voice.
``edge_type [E] long``; ``edge_attr [E, 5] float32`` = one-hot(type, 3), signed interval
(pitch_dst - pitch_src) / 12, signed onset gap (onset_dst - onset_src) in s. The signs keep direction.

Heterogeneous graph (``HeteroData``), node type "note", four relations (sources -> targets):
  onset:   onsets within the tolerance (symmetric; stored in both directions);
  during:  target starts while the source sounds (onset_src + tol < onset_dst < offset_src - tol);
  follow:  target starts as the source ends (|onset_dst - offset_src| <= tol; legato/detached);
  silence: no note starts after the source's onset group until offset_src + tol (a rest follows it):
           -> the notes of the first onset group after offset_src + tol.
during, follow and silence are directed; each has a reverse relation ``rev_<name>`` (PyG's
``ToUndirected`` naming) so messages flow both ways. Each relation has ``edge_attr [E, 2]`` =
(interval / 12, onset gap s).
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pianoray.data.midi import NoteTable

NODE_FEATURES = ("pitch", "velocity", "onset", "duration", "pedal", "voice")
EDGE_TYPES = ("temporal", "harmonic", "voice")
EDGE_ATTR_DIM = len(EDGE_TYPES) + 2
HETERO_RELATIONS = ("onset", "during", "follow", "silence")
HETERO_DIRECTED = ("during", "follow", "silence")


class GraphConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    onset_tolerance_s: float = Field(0.03, ge=0)
    max_fanout: int = Field(8, ge=1, description="at most this many targets per source note and relation")
    max_voices: int = Field(4, ge=2)


def window_edges(src: np.ndarray, lo: np.ndarray, hi: np.ndarray, max_fanout: int) -> np.ndarray:
    """Edges src[k] -> every index in [lo[k], min(hi[k], lo[k] + max_fanout)); [2, E] int64.

    src, lo, hi: [K] int. The one primitive every relation is built from.
    """
    counts = np.clip(hi - lo, 0, max_fanout)
    total = int(counts.sum())
    if total == 0:
        return np.zeros((2, 0), dtype=np.int64)
    starts = np.cumsum(counts) - counts
    step = np.arange(total, dtype=np.int64) - np.repeat(starts, counts)
    return np.stack([np.repeat(src, counts), np.repeat(lo, counts) + step]).astype(np.int64)


def onset_groups(onset: np.ndarray, tol: float) -> np.ndarray:
    """[N] group id per note (onsets sorted): a gap larger than ``tol`` starts a new group."""
    if len(onset) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(np.diff(onset) > tol)]).astype(np.int64)


def assign_voices(notes: NoteTable, tol: float = 0.03, max_voices: int = 4) -> np.ndarray:
    """[N] int64 voice per note by the skyline rule in the module docstring."""
    n = len(notes)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    group = onset_groups(notes.onset, tol)
    pitch = notes.pitch.astype(np.int64)
    # Rank from the top within each group: sort by (group, -pitch).
    order = np.lexsort((-pitch, group))
    g_sorted = group[order]
    first = np.searchsorted(g_sorted, g_sorted, side="left")
    last = np.searchsorted(g_sorted, g_sorted, side="right") - 1
    rank = np.arange(n) - first  # 0 = highest
    size = last - first + 1
    voice_sorted = np.where(rank == 0, 0, np.where(np.arange(n) == last, 1, np.minimum(rank + 1, max_voices - 1)))
    voice = np.empty(n, dtype=np.int64)
    voice[order] = voice_sorted
    size_of = np.empty(n, dtype=np.int64)
    size_of[order] = size
    # Lone notes: compare with the latest earlier chord's top and bottom pitch.
    n_groups = int(group[-1]) + 1
    gsize = np.bincount(group, minlength=n_groups)
    top = np.full(n_groups, -1, dtype=np.int64)
    np.maximum.at(top, group, pitch)
    bottom = np.full(n_groups, 128, dtype=np.int64)
    np.minimum.at(bottom, group, pitch)
    chord_idx = np.where(gsize >= 2, np.arange(n_groups), -1)
    # The latest chord strictly before each group (forward fill of chord indices, shifted by one).
    latest = np.maximum.accumulate(chord_idx)
    prev_chord = np.concatenate([[-1], latest[:-1]])
    lone = size_of == 1
    ref = prev_chord[group]
    has_ref = lone & (ref >= 0)
    r = np.clip(ref, 0, None)
    nearer_bass = np.abs(pitch - bottom[r]) < np.abs(pitch - top[r])
    voice[lone] = 0
    voice[has_ref & nearer_bass] = 1
    return voice


def node_features(notes: NoteTable, voice: np.ndarray) -> np.ndarray:
    """x [N, 6] float32 in NODE_FEATURES order."""
    t0 = notes.onset[0] if len(notes) else 0.0
    return np.stack(
        [
            notes.pitch.astype(np.float32),
            notes.velocity.astype(np.float32),
            (notes.onset - t0).astype(np.float32),
            notes.duration.astype(np.float32),
            notes.pedal.astype(np.float32),
            voice.astype(np.float32),
        ],
        axis=1,
    ).reshape(-1, len(NODE_FEATURES))


def _both_directions(e: np.ndarray) -> np.ndarray:
    return np.concatenate([e, e[::-1]], axis=1)


def simultaneous_edges(onset: np.ndarray, tol: float, max_fanout: int) -> np.ndarray:
    """i -> j for j after i in onset order with onset_j - onset_i <= tol; [2, E], one direction."""
    n = len(onset)
    idx = np.arange(n)
    hi = np.searchsorted(onset, onset + tol, side="right")
    return window_edges(idx, idx + 1, hi, max_fanout)


def next_group_edges(onset: np.ndarray, times: np.ndarray, tol: float, max_fanout: int, src: np.ndarray) -> np.ndarray:
    """src[k] -> the notes of the first onset group starting after times[k] + tol; [2, E]."""
    start = np.searchsorted(onset, times + tol, side="right")
    ok = start < len(onset)
    start, s = start[ok], src[ok]
    group_onset = onset[start]
    hi = np.searchsorted(onset, group_onset + tol, side="right")
    return window_edges(s, start, hi, max_fanout)


def graph_arrays(notes: NoteTable, config: GraphConfig | None = None) -> dict[str, np.ndarray]:
    """The homogeneous graph as arrays: x [N,6], edge_index [2,E], edge_type [E], edge_attr [E,5]."""
    c = config or GraphConfig()
    tol, k = c.onset_tolerance_s, c.max_fanout
    onset = notes.onset
    n = len(notes)
    idx = np.arange(n)
    voice = assign_voices(notes, tol, c.max_voices)
    temporal = next_group_edges(onset, onset, tol, k, idx)
    harmonic = simultaneous_edges(onset, tol, k)
    by_voice = np.lexsort((onset, voice))
    same = voice[by_voice[1:]] == voice[by_voice[:-1]]
    voice_e = np.stack([by_voice[:-1][same], by_voice[1:][same]]).astype(np.int64).reshape(2, -1)
    parts = [_both_directions(e) for e in (temporal, harmonic, voice_e)]
    edge_index = np.concatenate(parts, axis=1)
    edge_type = np.concatenate([np.full(p.shape[1], t, dtype=np.int64) for t, p in enumerate(parts)])
    attr = np.zeros((edge_index.shape[1], EDGE_ATTR_DIM), dtype=np.float32)
    attr[np.arange(len(edge_type)), edge_type] = 1.0
    src, dst = edge_index
    pitch = notes.pitch.astype(np.float32)
    attr[:, len(EDGE_TYPES)] = (pitch[dst] - pitch[src]) / 12.0
    attr[:, len(EDGE_TYPES) + 1] = (onset[dst] - onset[src]).astype(np.float32)
    return {"x": node_features(notes, voice), "edge_index": edge_index, "edge_type": edge_type, "edge_attr": attr}


def hetero_graph_arrays(notes: NoteTable, config: GraphConfig | None = None) -> dict[str, np.ndarray]:
    """The heterogeneous graph as arrays: ``x`` [N,6] and, per relation r in HETERO_RELATIONS and
    ``rev_<r>`` for the directed ones, ``<r>__edge_index`` [2,E] and ``<r>__edge_attr`` [E,2]."""
    c = config or GraphConfig()
    tol, k = c.onset_tolerance_s, c.max_fanout
    onset, offset = notes.onset, notes.offset
    n = len(notes)
    idx = np.arange(n)
    voice = assign_voices(notes, tol, c.max_voices)

    rel: dict[str, np.ndarray] = {"onset": _both_directions(simultaneous_edges(onset, tol, k))}
    # during: targets start strictly inside the source's sounding span (beyond the onset tolerance).
    lo = np.searchsorted(onset, onset + tol, side="right")
    hi = np.searchsorted(onset, offset - tol, side="left")
    rel["during"] = window_edges(idx, lo, np.maximum(hi, lo), k)
    # follow: targets start within the tolerance of the source's offset (and after its own onset group).
    lo = np.maximum(np.searchsorted(onset, offset - tol, side="left"), np.searchsorted(onset, onset + tol, side="right"))
    hi = np.searchsorted(onset, offset + tol, side="right")
    rel["follow"] = window_edges(idx, lo, np.maximum(hi, lo), k)
    # silence: nothing starts after the source's own onset group until its offset + tol (no during,
    # no follow target), i.e. a rest follows -> link to the first onset group after the rest.
    first_after = np.searchsorted(onset, onset + tol, side="right")
    rest = np.searchsorted(onset, offset + tol, side="right") <= first_after
    rel["silence"] = next_group_edges(onset, offset[rest], tol, k, idx[rest])
    for name in HETERO_DIRECTED:
        rel[f"rev_{name}"] = rel[name][::-1].copy()

    pitch = notes.pitch.astype(np.float32)
    out: dict[str, np.ndarray] = {"x": node_features(notes, voice)}
    for name, e in rel.items():
        e = np.ascontiguousarray(e, dtype=np.int64).reshape(2, -1)
        src, dst = e
        out[f"{name}__edge_index"] = e
        out[f"{name}__edge_attr"] = np.stack(
            [(pitch[dst] - pitch[src]) / 12.0, (onset[dst] - onset[src]).astype(np.float32)], axis=1
        ).astype(np.float32).reshape(-1, 2)
    return out


def graph_from_arrays(arrays: dict[str, np.ndarray]):
    """arrays from ``graph_arrays`` -> ``torch_geometric.data.Data``."""
    import torch
    from torch_geometric.data import Data

    return Data(
        x=torch.from_numpy(np.asarray(arrays["x"])),
        edge_index=torch.from_numpy(np.asarray(arrays["edge_index"])),
        edge_type=torch.from_numpy(np.asarray(arrays["edge_type"])),
        edge_attr=torch.from_numpy(np.asarray(arrays["edge_attr"])),
    )


def hetero_graph_from_arrays(arrays: dict[str, np.ndarray]):
    """arrays from ``hetero_graph_arrays`` -> ``torch_geometric.data.HeteroData``."""
    import torch
    from torch_geometric.data import HeteroData

    data = HeteroData()
    data["note"].x = torch.from_numpy(np.asarray(arrays["x"]))
    for key in arrays:
        if key.endswith("__edge_index"):
            name = key[: -len("__edge_index")]
            store = data["note", name, "note"]
            store.edge_index = torch.from_numpy(np.asarray(arrays[key]))
            store.edge_attr = torch.from_numpy(np.asarray(arrays[f"{name}__edge_attr"]))
    return data


def build_graph(notes: NoteTable, config: GraphConfig | None = None):
    """NoteTable -> homogeneous ``Data`` (see the module docstring)."""
    return graph_from_arrays(graph_arrays(notes, config))


def build_hetero_graph(notes: NoteTable, config: GraphConfig | None = None):
    """NoteTable -> ``HeteroData`` with the four relations and their reverses."""
    return hetero_graph_from_arrays(hetero_graph_arrays(notes, config))
