"""S3 (multi-scale CNN + Transformer over curves): shapes, padding, stop-gradient targets, learning, pretraining."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from pianoray.data.batch import Batch
from pianoray.data.symbolic import CURVE_CHANNELS
from pianoray.models import registry
from pianoray.models.contract import PerformanceModel
from pianoray.models.symbolic.s3_curves import KERNELS, CurveContrastiveTask, CurveEncoder, S3Config, build_s3
from pianoray.training.pretrain import pretrain

from ..learnable import assert_loss_falls

N_DIMS = 2
C = len(CURVE_CHANNELS)
TINY = {"branch_channels": 8, "d_model": 32, "layers": 1, "heads": 4, "ffn": 64, "position_kernel": 7,
        "position_groups": 4, "pretrain": {"negatives": 8, "span": 4}}


def _batch(curves: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Batch:
    return Batch.supervised({"curves": curves, "curves_mask": mask}, labels)


def _tiny(**overrides) -> CurveEncoder:
    return build_s3(S3Config.model_validate(TINY | overrides), registry.DataSpec(n_dims=N_DIMS))


def test_registered_as_symbolic_candidate() -> None:
    spec = registry.get("S3")
    assert spec.track == "symbolic" and spec.role == "candidate" and spec.views == ("curves",)
    task = spec.pretrain(S3Config())
    assert isinstance(task, CurveContrastiveTask) and task.name == "s3-contrastive" and task.views == ("curves",)
    assert KERNELS == (3, 7, 15)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="position_kernel"):
        S3Config(position_kernel=8)
    with pytest.raises(ValueError, match="heads"):
        S3Config(d_model=30, heads=4, position_groups=2)
    with pytest.raises(ValueError, match="span"):
        S3Config(pretrain={"span": 0})


def test_full_preset_size() -> None:
    cfg = S3Config.full()
    assert (cfg.layers, cfg.d_model, cfg.heads, cfg.pretrain.negatives) == (8, 512, 8, 100)
    n = sum(p.numel() for p in build_s3(cfg, registry.DataSpec(n_dims=19)).parameters())
    assert n == 28_053_889, n  # the figure quoted in the module docstring and docs/symbolic-encoders.md


def test_shapes_and_padding_invariance() -> None:
    torch.manual_seed(0)
    enc = _tiny().eval()
    curves = torch.rand(1, 20, C)
    padded = torch.cat([curves, torch.zeros(1, 9, C)], 1)
    mask = torch.arange(29)[None] < 20
    out = enc.encode(_batch(padded, mask, torch.zeros(1, N_DIMS)))
    assert out.tokens.shape == (1, 29, 32) and out.z.shape == (1, 512)
    alone = enc.encode(_batch(curves, torch.ones(1, 20, dtype=torch.bool), torch.zeros(1, N_DIMS)))
    assert torch.allclose(out.tokens[:, :20], alone.tokens, atol=1e-5)
    assert torch.allclose(out.z, alone.z, atol=1e-5)
    # Junk in the padding is ignored too (the CNN zeroes padded frames before convolving).
    junk = padded.clone()
    junk[:, 20:] = 5.0
    assert torch.allclose(enc.encode(_batch(junk, mask, torch.zeros(1, N_DIMS))).z, out.z, atol=1e-5)
    empty = enc.encode(_batch(torch.zeros(1, 4, C), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 2)))
    assert torch.isfinite(empty.z).all()
    with pytest.raises(ValueError, match="channels"):
        enc.frame_features(torch.rand(1, 5, 3), torch.ones(1, 5, dtype=torch.bool))


def _curve_task(seed: int, n: int = 32, t: int = 24) -> Batch:
    """A loudness level y per sample shows in the velocity channels; labels (y, 1 - y)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g)
    curves = torch.rand(n, t, C, generator=g) * 0.3
    for ch in ("velocity_mean", "onset_velocity"):
        curves[:, :, CURVE_CHANNELS.index(ch)] += 0.7 * y[:, None]
    return _batch(curves, torch.ones(n, t, dtype=torch.bool), torch.stack([y, 1 - y], 1))


def test_finetuning_loss_falls_on_learnable_task() -> None:
    torch.manual_seed(0)
    model = PerformanceModel(_tiny(dropout=0.0), N_DIMS)
    # lr 3e-4: larger rates saturate the sigmoid head
    assert_loss_falls(model, _curve_task(1), held=_curve_task(2), steps=40, lr=3e-4, ratio=0.3)


def _inputs(seed: int = 0, b: int = 4, t: int = 60) -> dict:
    g = torch.Generator().manual_seed(seed)
    mask = torch.ones(b, t, dtype=torch.bool)
    mask[1, 40:] = False
    return {"curves": torch.rand(b, t, C, generator=g) * mask[..., None], "curves_mask": mask}


def test_task_loss_parts_and_untrained_value() -> None:
    torch.manual_seed(0)
    cfg = S3Config.model_validate(TINY)
    enc, task = build_s3(cfg, registry.DataSpec(n_dims=N_DIMS)), CurveContrastiveTask(cfg)
    heads = task.build_heads(enc)
    loss, parts = task.loss(enc, heads, _inputs(), torch.Generator().manual_seed(0))
    assert set(parts) == {"contrastive", "accuracy", "masked_fraction", "target_std"}
    assert 0.2 < parts["masked_fraction"] <= 0.5 and parts["target_std"] > 0.1
    # An untrained model is near chance among 1 + 8 candidates: loss ~ log 9.
    assert abs(loss.item() - math.log(9)) < 1.0
    loss.backward()
    assert enc.mask_embedding.grad is not None and enc.mask_embedding.grad.abs().sum() > 0
    assert enc.features.branches[0][0].weight.grad.abs().sum() > 0, "the CNN learns through the context path"


class _ConstantContext(nn.Module):
    """A head whose output does not depend on the context (zero gradient into the encoder's Transformer)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(x) + 0.0 * x


def test_targets_are_stop_gradient() -> None:
    """With a context-independent head, only a target path could reach the CNN: it must carry nothing."""
    torch.manual_seed(0)
    cfg = S3Config.model_validate(TINY)
    enc, task = build_s3(cfg, registry.DataSpec(n_dims=N_DIMS)), CurveContrastiveTask(cfg)
    loss, _ = task.loss(enc, _ConstantContext(), _inputs(), torch.Generator().manual_seed(0))
    loss.backward()
    grads = [p.grad for p in enc.features.parameters()]
    assert all(g is None or g.abs().sum() == 0 for g in grads)


@pytest.mark.slow  # ~10 s alone on 2 cores (curves of 16 files + 2 x 4 epochs)
def test_pretraining_on_real_midi_falls_and_caches(percepiano_dir: Path, tmp_path: Path) -> None:
    files = sorted((percepiano_dir / "all_2rounds").glob("*.mid"))[:16]
    assert len(files) == 16
    cfg = S3Config()
    spec = registry.get("S3")

    def run():
        torch.manual_seed(0)
        enc = spec.build(cfg, registry.DataSpec(n_dims=19))
        res = pretrain(enc, spec.pretrain(cfg), files, epochs=4, out_dir=tmp_path, batch_size=8, lr=2e-3,
                       encoder_config=cfg.model_dump(), max_len=256)
        return enc, res

    enc, first = run()
    assert not first.cached and len(first.losses) == 4
    assert first.losses[0] > first.losses[-1], first.losses
    enc2, second = run()
    assert second.cached and second.losses == first.losses
    for (name, a), b in zip(enc.state_dict().items(), enc2.state_dict().values()):
        assert torch.equal(a, b), name
