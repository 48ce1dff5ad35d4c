"""The one optimisation step, and the optimiser and schedule it runs under, shared by fine-tuning (``loop.fit``)
and self-supervised pretraining (``pretrain.pretrain``).

Per the seed: AdamW, a cosine schedule with linear warmup, gradient clipping. Both loops build their
optimiser with :func:`make_optimizer` and take every step through :func:`train_step`, so a change to the
recipe (e.g. gradient accumulation) is made once.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Iterable

import torch


def cosine_with_warmup(total_steps: int, warmup_fraction: float) -> Callable[[int], float]:
    """LR multiplier: linear warmup over ``warmup_fraction`` of the steps, then cosine to zero."""
    warmup = max(1, int(round(total_steps * warmup_fraction)))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def make_optimizer(params: Iterable[Any], *, lr: float, weight_decay: float, total_steps: int,
                   warmup_fraction: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over ``params`` (tensors or param-group dicts) and its per-step cosine-with-warmup schedule
    over ``total_steps`` steps."""
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total_steps, warmup_fraction))
    return optimizer, scheduler


def autocast(device: torch.device) -> ContextManager[Any]:
    """bf16 autocast on CUDA, plain fp32 elsewhere (CPU autocast would change the numbers the tests pin)."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()


def train_step(loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler: Any | None,
               params: Iterable[torch.nn.Parameter], grad_clip: float) -> None:
    """Backpropagate ``loss`` (a scalar), clip the gradients of ``params`` to norm ``grad_clip``, step the
    optimiser, then the schedule (None: a constant rate, as in throughput calibration). A loss with no gradient (a batch with none of the stage's terms, e.g. a
    T3-only batch in a stage without InfoNCE) leaves the weights alone but still advances the schedule, so
    the schedule's length does not depend on the batch mix."""
    optimizer.zero_grad(set_to_none=True)
    if loss.requires_grad:
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
        optimizer.step()
    if scheduler is not None:
        scheduler.step()
