"""What ``fit`` needs from ``torch.distributed``, and nothing of who started the process group.

Ray Train (``protocol/``) starts the group and wraps the model; the training loop asks only for its place
and makes the few collective calls that keep ranks in agreement. Outside a group (one process, the CLI's
``pianoray train``, a test) every function here is the identity.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


def dist_place() -> tuple[int, int]:
    """(rank, world size) of this process in the default group; (0, 1) when there is none."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def all_ranks_sum(sums: dict[str, float], n_batches: int, samples: int,
                  device: torch.device) -> tuple[dict[str, float], int, int]:
    """Sum an epoch's per-rank loss sums, batch and sample counts over the ranks (one all-reduce), so the
    epoch record's train losses are the mean over every rank's batches and ``samples`` the global count.
    Keys are those of rank 0's ``sums`` (every rank trains the same stage, so they agree)."""
    keys = sorted(sums)
    # gloo reduces CPU tensors, NCCL CUDA ones: the buffer lives where the model does.
    buf = torch.tensor([sums[k] for k in keys] + [float(n_batches), float(samples)], dtype=torch.float64,
                       device=device if device.type == "cuda" else "cpu")
    dist.all_reduce(buf)
    values = buf.tolist()
    return dict(zip(keys, values[:-2])), int(values[-2]), int(values[-1])


def from_rank0(obj: T) -> T:
    """Rank 0's ``obj`` on every rank (pickled broadcast). Validation runs on every rank over the whole
    split; taking rank 0's scores makes early stopping and the reported epoch agree exactly, even where
    CUDA kernels are not bitwise deterministic across devices."""
    box: list[Any] = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
