"""S2H (HeteroConv over onset/during/follow/silence): every relation used, empty relations, learning,
per-relation link prediction, pretraining on real MIDI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch as GraphBatch

from pianoray.config import LossConfig
from pianoray.data.symbolic.graphs import HETERO_RELATIONS, build_hetero_graph
from pianoray.models import registry
from pianoray.models.contract import PerformanceModel
from pianoray.models.symbolic.link_prediction import pair_keys
from pianoray.models.symbolic.s2h_hetero import (
    ALL_RELATIONS,
    S2HConfig,
    S2HHeteroEncoder,
    S2HPretrainTask,
    edge_type,
    holdout_relations,
)
from pianoray.training.pretrain import pretrain

from ..learnable import assert_loss_falls, multitask
from .synthetic_graphs import learnable_task, make_batch, one_thread, random_notes  # noqa: F401 (fixture)

TINY = S2HConfig(hidden=32, layers=2, heads=2, dropout=0.0)
# One intra-op thread for every test here (see synthetic_graphs.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")


def _batch(seed: int = 0, n: int = 3):
    rng = np.random.default_rng(seed)
    return make_batch("hetero_graph", [random_notes(rng, 0.5, 0.5) for _ in range(n)], torch.zeros(n, 2))


def test_registered_as_symbolic_candidate_with_pretraining() -> None:
    spec = registry.get("S2H")
    assert spec.track == "symbolic" and spec.role == "candidate" and spec.views == ("hetero_graph",)
    assert isinstance(spec.build(spec.config_cls(), registry.DataSpec(n_dims=19)), S2HHeteroEncoder)
    assert spec.pretrain(spec.config_cls()).views == ("hetero_graph",)
    full = S2HConfig.full()
    assert (full.hidden, full.layers, full.heads) == (256, 4, 8)
    with pytest.raises(ValueError, match="divisible"):
        S2HConfig(hidden=30, heads=4)


@pytest.mark.parametrize("conv", ["gat", "sage"])
def test_removing_any_relation_changes_the_output(conv: str) -> None:
    batch = _batch(1)
    graph = batch.inputs["hetero_graph"]
    for rel in ALL_RELATIONS:
        assert graph[edge_type(rel)].edge_index.shape[1] > 0, f"fixture has no {rel} edges"
    torch.manual_seed(0)
    enc = S2HHeteroEncoder(TINY.model_copy(update={"conv": conv})).eval()
    with torch.no_grad():
        z = enc.encode(batch).z
        for rel in ALL_RELATIONS:
            cut = graph.clone()
            cut[edge_type(rel)].edge_index = cut[edge_type(rel)].edge_index[:, :0]
            cut[edge_type(rel)].edge_attr = cut[edge_type(rel)].edge_attr[:0]
            batch.inputs = {"hetero_graph": cut}
            assert (enc.encode(batch).z - z).abs().max() > 1e-4, f"relation {rel} is not used"
    batch.inputs = {"hetero_graph": graph}


def test_graphs_without_some_relations_encode() -> None:
    # legato-free single line with no rests: no during/silence; one lone note: no edges at all
    line = build_hetero_graph(random_notes(np.random.default_rng(0), 0.5, 0.0, groups=1))
    batch = _batch(2, n=2)
    batch.inputs = {"hetero_graph": GraphBatch.from_data_list([line, line])}
    enc = S2HHeteroEncoder(TINY).eval()
    out = enc.encode(batch)
    assert out.mask.sum().item() == 2 and torch.isfinite(out.z).all()
    task = S2HPretrainTask(TINY)
    loss, parts = task.loss(enc, task.build_heads(enc), batch.inputs, torch.Generator().manual_seed(0))
    assert parts["relations"] == 0 and loss.item() == 0.0 and loss.requires_grad


def test_holdout_removes_reverse_mirrors() -> None:
    graph = _batch(3).inputs["hetero_graph"]
    index = {et: graph[et].edge_index for et in graph.edge_types}
    n = graph["note"].num_nodes
    keep, positives = holdout_relations(index, n, 0.3, torch.Generator().manual_seed(0))
    for rel in HETERO_RELATIONS:
        pos = positives[rel]
        assert pos.shape[1] > 0
        fwd = index[edge_type(rel)][:, keep[edge_type(rel)]]
        # no held-out pair survives in the input, in either direction
        held = pair_keys(pos, n, undirected=False)
        assert not torch.isin(held, pair_keys(fwd, n, undirected=False)).any()
        rev_name = f"rev_{rel}" if rel != "onset" else rel
        rev = index[edge_type(rev_name)][:, keep[edge_type(rev_name)]]
        assert not torch.isin(held, pair_keys(rev.flip(0), n, undirected=False)).any()


def test_finetuning_loss_falls_on_learnable_task() -> None:
    torch.manual_seed(0)
    batch = learnable_task("hetero_graph", seed=4)
    model = PerformanceModel(S2HHeteroEncoder(TINY), n_dims=2)
    weights = LossConfig(lambda_contrastive=0.0, lambda_invariance=0.0)
    assert_loss_falls(model, batch, steps=60, lr=3e-3, ratio=0.5, loss=multitask(weights))


def test_pretrain_reports_each_relation() -> None:
    enc = S2HHeteroEncoder(TINY)
    task = S2HPretrainTask(TINY)
    loss, parts = task.loss(enc, task.build_heads(enc), _batch(5).inputs, torch.Generator().manual_seed(0))
    assert loss.requires_grad and parts["relations"] == 4
    for rel in HETERO_RELATIONS:
        assert parts[f"link_{rel}"] > 0 and 0 <= parts[f"accuracy_{rel}"] <= 1
    assert loss.item() == pytest.approx(np.mean([parts[f"link_{r}"] for r in HETERO_RELATIONS]), rel=1e-5)


def test_pretraining_on_real_midi_learns_and_caches(percepiano_dir: Path, tmp_path: Path) -> None:
    files = sorted((percepiano_dir / "all_2rounds").glob("*.mid"))[:16]
    cfg = S2HConfig(hidden=32, layers=2, heads=2)
    torch.manual_seed(0)
    kwargs = dict(epochs=4, out_dir=tmp_path, encoder_config=cfg.model_dump(), batch_size=8, lr=3e-3, max_len=128)
    result = pretrain(S2HHeteroEncoder(cfg), S2HPretrainTask(cfg), files, **kwargs)
    assert not result.cached and result.losses[-1] < result.losses[0], result.losses
    assert {f"link_{r}" for r in HETERO_RELATIONS} <= set(result.parts[-1])
    again = S2HHeteroEncoder(cfg)
    cached = pretrain(again, S2HPretrainTask(cfg), files, **kwargs)
    assert cached.cached and cached.losses == result.losses
    trained = torch.load(result.path / "encoder.pt")
    assert all(torch.equal(v, trained[k]) for k, v in again.state_dict().items())
