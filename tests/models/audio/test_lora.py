"""LoRA on the MuQ tail: the seed's parameter budget at full size, gradients only into adapters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pianoray.models.audio.lora import LoraSettings, apply_lora, count_parameters, trainable_fraction
from pianoray.models.audio.muq_tail import MuQTail, MuQTailConfig


@pytest.mark.parametrize("rank, expected", [(16, 524_288), (64, 2_097_152)])
def test_full_size_budget(rank: int, expected: int) -> None:
    with torch.device("meta"):  # shapes only: no forward, no memory
        tail = MuQTail(MuQTailConfig())
    base_total = sum(p.numel() for p in tail.parameters())
    assert 96.0e6 < base_total < 97.5e6  # ~96.7M
    apply_lora(tail, LoraSettings(rank=rank))
    trainable, total = count_parameters(tail)
    # 4 layers x 4 projections x r x (1024 + 1024)
    assert trainable == expected == 4 * 4 * rank * 2048
    assert total == base_total + trainable
    frac = trainable_fraction(tail)
    assert frac == pytest.approx(trainable / total)
    assert (0.0053 < frac < 0.0055) if rank == 16 else (0.020 < frac < 0.022)


def test_gradients_reach_only_lora_and_batchnorm_is_frozen() -> None:
    torch.manual_seed(0)
    tail = apply_lora(MuQTail(MuQTailConfig.demo(hidden_dropout=0.0)), LoraSettings(rank=4))
    tail.train()
    bns = [m for m in tail.modules() if isinstance(m, nn.BatchNorm1d)]
    stats = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    # lora_B starts at zero, so give it a value: otherwise lora_A's gradient is exactly zero
    for name, p in tail.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02)
    tail(torch.randn(3, 16, 128) * 2 + 0.5).pow(2).mean().backward()
    for name, p in tail.named_parameters():
        if "lora_" in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name
    for m, (mean, var, n) in zip(bns, stats):
        assert not m.training
        assert torch.equal(m.running_mean, mean) and torch.equal(m.running_var, var)
        assert torch.equal(m.num_batches_tracked, n)


def test_lora_starts_as_identity_and_keeps_state_names() -> None:
    torch.manual_seed(0)
    tail = MuQTail(MuQTailConfig.demo()).eval()
    x = torch.randn(2, 10, 128)
    with torch.no_grad():
        before = tail(x)
        apply_lora(tail, LoraSettings(rank=8))
        after = tail(x)
    assert torch.allclose(before, after, atol=1e-6)  # B = 0 at init
    assert isinstance(tail, MuQTail)
    assert "layers.0.self_attn.linear_q.base_layer.weight" in tail.state_dict()


def test_unmatched_targets_fail() -> None:
    with pytest.raises(ValueError, match="target"):
        apply_lora(MuQTail(MuQTailConfig.demo()), LoraSettings(target_modules=("nope_proj",)))
