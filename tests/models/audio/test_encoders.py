"""A1/A2/A3: registration, shape checks, stage plan, gradual unfreezing, and that each one learns."""

from __future__ import annotations

import pytest
import torch
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from pianoray.data.batch import Batch
from pianoray.data.tiers import Tier
from pianoray.models import registry
from pianoray.models.audio.encoders import (
    GradualUnfreezeConfig,
    GradualUnfreezeEncoder,
    LoraEncoder,
    StagedLoraConfig,
    StagedLoraEncoder,
    build_tail,
)
from pianoray.models.audio.muq_tail import MuQCheckpointError, MuQTailConfig
from pianoray.models.contract import PerformanceModel

from ..learnable import assert_loss_falls

N_DIMS = 3
WIDTH = 32


def _tiny_tail(**overrides) -> dict:
    return MuQTailConfig.demo(width=WIDTH, heads=2, ffn=64, kernel=3, **overrides).model_dump()


def _batch(frames: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> Batch:
    if mask is None:
        mask = torch.ones(frames.shape[:2], dtype=torch.bool)
    return Batch.supervised({"frames": frames, "frames_mask": mask}, labels)


def _synthetic_task(seed: int, n: int = 16, t: int = 12) -> Batch:
    """Frames whose mean along a fixed direction per dimension encodes the target."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(N_DIMS, WIDTH, generator=torch.Generator().manual_seed(123))
    y = torch.rand(n, N_DIMS, generator=g)
    frames = torch.randn(n, t, WIDTH, generator=g) * 0.5 + (((y - 0.5) * 3) @ directions)[:, None, :] / WIDTH**0.5
    return _batch(frames, y)


def _build(name: str, **model) -> torch.nn.Module:
    spec = registry.get(name)
    cfg = spec.config_cls.model_validate({"tail": _tiny_tail(), **model})
    return spec.build(cfg, registry.DataSpec(n_dims=N_DIMS, frame_width=WIDTH))


@pytest.mark.parametrize("name", ["A1", "A2", "A3"])
def test_registered_as_audio_candidates(name: str) -> None:
    spec = registry.get(name)
    assert spec.track == "audio" and spec.role == "candidate" and spec.views == ("frames",)
    assert name in registry.names("audio")


@pytest.mark.parametrize("name", ["A1", "A2", "A3"])
def test_loss_falls_on_learnable_task(name: str) -> None:
    torch.manual_seed(0)
    model = PerformanceModel(_build(name, lora={"rank": 4, "alpha": 8}) if name != "A3" else _build(name), N_DIMS)
    model.encoder.on_epoch_start(0, 10)
    groups = model.encoder.param_groups(3e-3)
    groups.append({"params": [*model.ranking.parameters(), *model.regression.parameters()], "lr": 3e-3})
    assert_loss_falls(model, _synthetic_task(1), held=_synthetic_task(2), steps=40, lr=3e-3, ratio=0.5, params=groups)


def test_a1_trains_only_lora_pool_and_shared() -> None:
    enc = _build("A1")
    assert isinstance(enc, LoraEncoder)
    trainable = {n for n, p in enc.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith(("pool.", "shared.")) for n in trainable)
    assert any(n.startswith("tail.") for n in trainable)
    assert not enc.stages(10)


def test_a2_stage_plan() -> None:
    enc = _build("A2", self_supervised_fraction=0.3)
    assert isinstance(enc, StagedLoraEncoder)
    s1, s2 = enc.stages(10)
    assert (s1.name, s1.epochs, s1.tiers, s1.terms, s1.select) == (
        "self_supervised", 3, (Tier.T3, Tier.T4), frozenset({"contrastive", "invariance"}), False
    )
    assert (s2.name, s2.epochs, s2.tiers, s2.terms, s2.select) == (
        "supervised", 7, (Tier.T1, Tier.T2, Tier.T3), None, True
    )
    for total in range(1, 30):
        stages = enc.stages(total)
        assert sum(s.epochs for s in stages) == total and all(s.epochs >= 1 for s in stages)
        assert stages[-1].name == "supervised"
    with pytest.raises(ValueError):
        StagedLoraConfig(self_supervised_fraction=1.0)


def test_a3_unfreezes_top_down_on_schedule() -> None:
    enc = _build("A3", unfreeze_at=[0.0, 0.15, 0.3, 0.45], tail_lr_scale=0.1, lr_decay=0.5)
    assert isinstance(enc, GradualUnfreezeEncoder)

    def training_layers() -> set[str]:
        names = {n.split(".")[1] + (("." + n.split(".")[2]) if n.startswith("tail.layers.") else "")
                 for n, p in enc.named_parameters() if p.requires_grad and n.startswith("tail.")}
        return names

    expected = {  # 20 epochs: MuQ layer 12 at 0, 11 at 3, 10 at 6, 9 at 9
        0: {"layers.3", "layer_norm"},
        2: {"layers.3", "layer_norm"},
        3: {"layers.3", "layer_norm", "layers.2"},
        6: {"layers.3", "layer_norm", "layers.2", "layers.1"},
        9: {"layers.3", "layer_norm", "layers.2", "layers.1", "layers.0"},
        19: {"layers.3", "layer_norm", "layers.2", "layers.1", "layers.0"},
    }
    for epoch, layers in expected.items():
        enc.on_epoch_start(epoch, 20)
        assert training_layers() == layers, epoch
        assert all(p.requires_grad for p in [*enc.pool.parameters(), *enc.shared.parameters()])
    enc.on_epoch_start(0, 20)  # stateless: going back (a resumed run) re-freezes
    assert training_layers() == {"layers.3", "layer_norm"}

    groups = enc.param_groups(1e-3)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(enc.parameters()))  # every parameter once, frozen ones too
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx(
        {"head": 1e-3, "tail_depth0": 1e-4, "tail_depth1": 5e-5, "tail_depth2": 2.5e-5, "tail_depth3": 1.25e-5}
    )
    depth3 = next(g for g in groups if g["name"] == "tail_depth3")["params"]
    assert {id(p) for p in depth3} == {id(p) for p in enc.tail.layers[0].parameters()}


def test_a3_schedule_validation() -> None:
    with pytest.raises(ValueError, match="unfreeze_at has 3 entries"):
        GradualUnfreezeConfig(unfreeze_at=(0.0, 0.1, 0.2))
    with pytest.raises(ValueError, match="non-decreasing"):
        GradualUnfreezeConfig(unfreeze_at=(0.0, 0.5, 0.2, 0.6))


def test_width_mismatch_and_missing_frames_are_named() -> None:
    spec = registry.get("A1")
    cfg = spec.config_cls.model_validate({})  # demo preset: 128 wide
    with pytest.raises(ValueError, match="model.tail.width is 128 but the cache's frames are 1024"):
        spec.build(cfg, registry.DataSpec(n_dims=3, frame_width=1024))
    with pytest.raises(ValueError, match="no.*frames|has none"):
        spec.build(cfg, registry.DataSpec(n_dims=3, frame_width=None))
    enc = _build("A1")
    with pytest.raises(ValueError, match="frames.*16 wide"):
        enc.encode(_batch(torch.zeros(2, 4, 16), torch.zeros(2, N_DIMS)))


def test_padded_batch_encodes_and_checkpoint_loads(tmp_path) -> None:
    tail_cfg = MuQTailConfig.demo(width=WIDTH, heads=2, ffn=64, kernel=3)
    hf = tail_cfg.hf_config()
    hf.num_hidden_layers = 12
    full = Wav2Vec2ConformerEncoder(hf)
    path = tmp_path / "muq.pt"
    torch.save({f"model.conformer.{k}": v for k, v in full.state_dict().items()}, path)
    cfg = registry.get("A1").config_cls.model_validate({"tail": tail_cfg.model_dump(), "muq_checkpoint": str(path)})
    tail = build_tail(cfg, registry.DataSpec(n_dims=3, frame_width=WIDTH), "A1")
    assert tail.pretrained
    assert torch.equal(tail.layers[0].ffn1.intermediate_dense.weight, full.layers[8].ffn1.intermediate_dense.weight)
    bad = cfg.model_copy(update={"muq_checkpoint": tmp_path / "nope.pt"})
    with pytest.raises(MuQCheckpointError, match="nope.pt"):
        build_tail(bad, registry.DataSpec(n_dims=3, frame_width=WIDTH), "A1")
    enc = registry.get("A1").build(cfg, registry.DataSpec(n_dims=3, frame_width=WIDTH)).eval()
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[1, 6:] = False
    out = enc.encode(_batch(torch.randn(2, 10, WIDTH), torch.zeros(2, 3), mask))
    assert out.tokens.shape == (2, 10, WIDTH) and out.z.shape == (2, 512) and torch.isfinite(out.z).all()
