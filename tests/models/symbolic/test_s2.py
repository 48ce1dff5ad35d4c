"""S2 (GATConv over the homogeneous note graph): features, edge types, learning, pretraining on real MIDI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch as GraphBatch

from pianoray.config import LossConfig
from pianoray.data.symbolic.graphs import build_graph
from pianoray.models import registry
from pianoray.models.contract import PerformanceModel
from pianoray.models.symbolic.s2_graph import (
    DURATION_COL,
    NODE_DIM,
    PITCH_CLASS_COLS,
    POSITION_COL,
    VELOCITY_COL,
    VOICE_COLS,
    S2Config,
    S2GraphEncoder,
    S2PretrainTask,
    scale_note_features,
)
from pianoray.training.pretrain import pretrain

from ..learnable import assert_loss_falls, multitask
from .synthetic_graphs import learnable_task, make_batch, one_thread, random_notes  # noqa: F401 (fixture)

TINY = S2Config(hidden=32, layers=2, heads=2, dropout=0.0)
# One intra-op thread for every test here (see synthetic_graphs.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def test_registered_as_symbolic_candidate_with_pretraining() -> None:
    spec = registry.get("S2")
    assert spec.track == "symbolic" and spec.role == "candidate" and spec.views == ("graph",)
    enc = spec.build(spec.config_cls(), registry.DataSpec(n_dims=19))
    assert isinstance(enc, S2GraphEncoder)
    assert spec.pretrain(spec.config_cls()).views == ("graph",)


def test_config_validation_and_full_preset() -> None:
    with pytest.raises(ValueError, match="divisible"):
        S2Config(hidden=30, heads=4)
    with pytest.raises(ValueError):
        S2Config(layerz=3)
    full = S2Config.full()
    assert (full.hidden, full.layers, full.heads) == (256, 5, 8)


def test_scale_note_features_known_values() -> None:
    # two graphs: notes (pitch, vel, onset, dur, pedal, voice)
    x = torch.tensor([[60, 127, 10.0, 0.05, 1, 0], [67, 0, 12.0, 6.0, 0, 7], [61, 64, 0.0, 0.0, 0, 1]])
    f = scale_note_features(x, torch.tensor([0, 0, 1]), 2)
    assert f.shape == (3, NODE_DIM)
    assert f[0, VELOCITY_COL] == pytest.approx(1.0) and f[1, VELOCITY_COL] == 0.0
    assert f[0, PITCH_CLASS_COLS].argmax() == 0 and f[1, PITCH_CLASS_COLS].argmax() == 7
    assert f[1, DURATION_COL] == pytest.approx(1.0) and f[2, DURATION_COL] == 0.0
    assert f[:, POSITION_COL].tolist() == pytest.approx([0.0, 1.0, 0.0])  # per graph, from its first onset
    assert f[1, VOICE_COLS].argmax() == 3  # voices beyond the last slot share it
    assert torch.isfinite(f).all()


def test_tokens_are_nodes_per_graph_and_padding_is_masked() -> None:
    rng = np.random.default_rng(0)
    notes = [random_notes(rng, 0.5, 0.5, groups=g) for g in (3, 9)]
    batch = make_batch("graph", notes, torch.zeros(2, 2))
    enc = S2GraphEncoder(TINY).eval()
    out = enc.encode(batch)
    assert out.tokens.shape[:2] == (2, max(len(n) for n in notes)) and out.z.shape == (2, 512)
    assert out.mask.sum(1).tolist() == [len(n) for n in notes]
    # a graph encodes the same alone as when batched with a longer one (padding does not leak)
    alone = enc.encode(make_batch("graph", notes[:1], torch.zeros(1, 2)))
    assert torch.allclose(alone.z, out.z[:1], atol=1e-5)


def test_output_changes_when_edge_types_are_permuted() -> None:
    """Swap the temporal and harmonic labels (edge_type and its one-hot columns): same edges, other types."""
    rng = np.random.default_rng(1)
    batch = make_batch("graph", [random_notes(rng, 0.5, 0.6) for _ in range(3)], torch.zeros(3, 2))
    graph = batch.inputs["graph"]
    assert set(graph.edge_type.unique().tolist()) == {0, 1, 2}
    torch.manual_seed(0)
    enc = S2GraphEncoder(TINY).eval()
    swapped = graph.clone()
    swapped.edge_type = torch.tensor([1, 0, 2])[graph.edge_type]
    swapped.edge_attr = graph.edge_attr[:, [1, 0, 2, 3, 4]]
    with torch.no_grad():
        z = enc.encode(batch).z
        batch.inputs = {"graph": swapped}
        z_swapped = enc.encode(batch).z
    assert (z - z_swapped).abs().max() > 1e-3


def test_finetuning_loss_falls_on_learnable_task() -> None:
    torch.manual_seed(0)
    batch = learnable_task("graph", seed=2)
    model = PerformanceModel(S2GraphEncoder(TINY), n_dims=2)
    weights = LossConfig(lambda_contrastive=0.0, lambda_invariance=0.0)
    assert_loss_falls(model, batch, steps=60, lr=3e-3, ratio=0.5, loss=multitask(weights))


def test_pretrain_loss_holds_out_edges_and_reports_parts() -> None:
    rng = np.random.default_rng(3)
    graph = GraphBatch.from_data_list([build_graph(random_notes(rng, 0.5, 0.5)) for _ in range(2)])
    enc = S2GraphEncoder(TINY)
    seen = {}
    original = enc.embed_nodes

    def spy(features, edge_index, edge_attr):
        seen["features"], seen["edges"] = features, edge_index
        return original(features, edge_index, edge_attr)

    enc.embed_nodes = spy
    task = S2PretrainTask(TINY)
    loss, parts = task.loss(enc, task.build_heads(enc), {"graph": graph}, torch.Generator().manual_seed(0))
    assert loss.requires_grad and set(parts) == {"link", "attributes", "link_accuracy"}
    assert 0 < seen["edges"].shape[1] < graph.edge_index.shape[1]  # some pairs held out, in both directions
    kept = {tuple(e) for e in seen["edges"].T.tolist()}
    assert all((d, s) in kept for s, d in kept)
    flagged = seen["features"][:, -1] == 1
    assert flagged.any() and (seen["features"][flagged][:, [VELOCITY_COL, DURATION_COL]] == 0).all()


def test_pretraining_on_real_midi_learns_and_caches(percepiano_dir: Path, tmp_path: Path) -> None:
    files = sorted((percepiano_dir / "all_2rounds").glob("*.mid"))[:16]
    cfg = S2Config(hidden=32, layers=2, heads=2)
    torch.manual_seed(0)
    kwargs = dict(epochs=4, out_dir=tmp_path, encoder_config=cfg.model_dump(), batch_size=8, lr=3e-3, max_len=128)
    result = pretrain(S2GraphEncoder(cfg), S2PretrainTask(cfg), files, **kwargs)
    assert not result.cached and len(result.losses) == 4
    assert result.losses[-1] < result.losses[0], result.losses
    again = S2GraphEncoder(cfg)
    cached = pretrain(again, S2PretrainTask(cfg), files, **kwargs)
    assert cached.cached and cached.losses == result.losses
    trained = torch.load(result.path / "encoder.pt")
    assert all(torch.equal(v, trained[k]) for k, v in again.state_dict().items())
