"""``fit`` data parallel, without Ray: two gloo processes with DDP against one process with the same global
batch. The loop only reads ``torch.distributed``'s rank and size, so torch's own process group is enough.

Tolerance: with the regression loss alone (a mean over samples) and equal rank batches, DDP's averaged
gradient is the one-process gradient; what differs is float summation order (two partial sums, then the
average), so losses and scores agree to ~1e-5 after a few dozen AdamW steps, not bitwise. The batch-coupled
losses are different by construction: the within-passage ranking loss and InfoNCE only pair samples inside
one rank's batch (a rank sees half the negatives and the cross-rank pairs are lost), which is why the
sampler keeps groups whole on one rank; their runs are not expected to match a single process.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.data.tiers import Tier
from pianoray.settings import PROJECT_ROOT
from pianoray.training.data import ExperimentData
from pianoray.training.loop import Budget, fit
from tests.net import free_ports

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"
EPOCHS = 2
REGRESSION_ONLY = {"lambda_rank": 0.0, "lambda_contrastive": 0.0, "lambda_invariance": 0.0}


def _cfg(root: Path, loss: dict | None = None):
    return load_config(DEMO_YAML, {
        "data": {"root": str(root)},
        "optim": {"batch_size": 16},
        "experiments": {"audio-frozen": {"model": {"dropout": 0.0}, "loss": loss or REGRESSION_ONLY}},
    })


def _records(cfg, root: Path) -> list[dict]:
    data = ExperimentData.from_config(cfg)
    wrap = None
    if dist.is_initialized():
        def wrap(m):
            return torch.nn.parallel.DistributedDataParallel(m, find_unused_parameters=True)
    out = []
    for r in fit(cfg, "audio-frozen", data, 0, Budget(EPOCHS), tiers=[Tier.T1], device="cpu", wrap_model=wrap):
        out.append({"epoch": r.epoch, "samples": r.samples, **{k: v for k, v in r.metrics.items()
                                                                if isinstance(v, float)}})
    return out


def _worker(rank: int, world: int, port: int, root: str, out: str, loss: dict | None) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        recs = _records(_cfg(Path(root), loss), Path(root))
        Path(out, f"rank{rank}.json").write_text(json.dumps(recs))
        # every rank past its last collective before any tears the group down: a rank destroying it while
        # gloo's threads still hold the other's pending work aborted the process now and then (SIGABRT,
        # "terminate called without an active exception")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _run_ddp(root: Path, out: Path, loss: dict | None = None) -> list[list[dict]]:
    out.mkdir()
    mp.spawn(_worker, args=(2, free_ports()[0], str(root), str(out), loss), nprocs=2, join=True)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("ddp") / "demo", seed=3, scale=0.3)


def test_two_ranks_match_one_process_with_the_same_global_batch(demo: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    single = _records(_cfg(demo), demo)
    rank0, rank1 = _run_ddp(demo, tmp_path / "ddp")
    assert rank0 == rank1, "every rank reports rank 0's validation and the all-reduced losses"
    for one, two in zip(single, rank0):
        assert two["samples"] == one["samples"]  # the shards together are the single process's epoch
        for key in ("train/regression", "train/total", "val/r2", "val/pairwise_accuracy"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-5), (one["epoch"], key)


def test_batch_coupled_losses_train_on_both_ranks(demo: Path, tmp_path: Path) -> None:
    """The demo's full loss (ranking + InfoNCE + invariance) runs under DDP: ranks agree, losses finite.
    Not compared with one process: see the module docstring."""
    rank0, rank1 = _run_ddp(demo, tmp_path / "ddp", loss={})
    assert rank0 == rank1 and len(rank0) == EPOCHS
    assert all(r["train/total"] == r["train/total"] for r in rank0)  # not NaN
