"""One contract, every registered neural model (peft-style test matrix over the registry).

Each encoder is built from its demo config on real batches of a small demo corpus (its own views, as the
loader makes them) and must: return ``EncoderOutput`` shapes and a mask as the contract says, train (one
multitask loss and backward step reaches its trainable weights with finite gradients), and survive a
checkpoint round trip (a fresh build loading the state dict gives the same outputs). A new encoder, or a
fusion module, is covered by registering it; fitted references are exempt (they have no ``encode``). A fusion
module is built over two demo encoders (``FUSED``) standing in for a run's winners.
"""

from __future__ import annotations

import io

import pytest
import torch

from pianoray.config import model_config
from pianoray.data.tiers import Tier
from pianoray.data.views import SCORE
from pianoray.models import registry
from pianoray.models.contract import Z_DIM, Encoder, EncoderOutput, PerformanceModel
from pianoray.objectives.losses import multitask_loss
from tests.models.conftest import FUSED

NEURAL = registry.names(kind="neural")
FUSION = registry.names(kind="fusion")
MODELS = NEURAL + FUSION


def _build(cfg, data, name: str) -> Encoder:
    torch.manual_seed(0)
    return registry.get(name).build(_config(cfg, name), data.data_spec())


def _config(cfg, name: str):
    spec = registry.get(name)
    if spec.kind == "fusion":
        return spec.config_cls.model_validate(FUSED)
    return model_config(cfg, _experiment(cfg, name))


def _views(name: str) -> tuple[str, ...]:
    """The views ``name``'s encoder reads: its spec's, or for a fusion its winners' (audio's first), then for a
    fusion that reads the score (F-score) the score view of each of the symbolic winner's."""
    spec = registry.get(name)
    if spec.kind != "fusion":
        return spec.views
    views = tuple(dict.fromkeys(v for part in FUSED.values() for v in registry.get(part["encoder"]).views))
    if spec.config_cls.reads_score:
        views += tuple(SCORE + v for v in registry.get(FUSED["symbolic"]["encoder"]).views)
    return views


def _experiment(cfg, encoder: str) -> str:
    return next((e for e in cfg.experiments if cfg.encoder_name(e) == encoder), encoder)


def _loss(cfg, name: str):
    experiment = _experiment(cfg, name)
    return cfg.loss_for(experiment) if experiment in cfg.experiments else cfg.loss


def _batch(data, views, n: int = 4):
    loader = data.loader(0, "train", (Tier.T1,), views, n, epoch=1, seed=0)
    return next(iter(loader))


def test_every_experiment_names_a_registered_track() -> None:
    tracks = {t.name for t in registry.tracks()}
    assert {s.track for s in registry.all_specs().values()} <= tracks
    assert NEURAL, "no neural encoder registered"


@pytest.mark.parametrize("name", MODELS)
def test_encode_shapes_and_mask(demo, name: str) -> None:
    cfg, data = demo
    enc = _build(cfg, data, name).eval()
    assert isinstance(enc, Encoder) and enc.views == _views(name)
    batch = _batch(data, enc.views)
    with torch.no_grad():
        out = enc.encode(batch)
    assert isinstance(out, EncoderOutput)
    b = batch.size
    assert out.tokens.dim() == 3 and out.tokens.shape[0] == b and out.tokens.dtype.is_floating_point
    assert out.mask.shape == out.tokens.shape[:2] and out.mask.dtype == torch.bool
    assert out.mask.any(dim=1).all(), "every sample must keep at least one real position"
    assert out.z.shape == (b, Z_DIM)
    assert torch.isfinite(out.tokens[out.mask]).all() and torch.isfinite(out.z).all()


@pytest.mark.parametrize("name", MODELS)
def test_one_loss_and_backward_step_reaches_the_encoder(demo, name: str) -> None:
    cfg, data = demo
    model = PerformanceModel(_build(cfg, data, name), n_dims=len(data.label_names)).train()
    batch = _batch(data, model.encoder.views)
    out = model(batch)
    assert out.scores.shape == out.regression.shape == (batch.size, len(data.label_names))
    total, parts = multitask_loss(out.regression, out.scores, out.z, batch, _loss(cfg, name))
    assert torch.isfinite(total) and total.requires_grad and parts
    total.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.requires_grad and p.grad is not None]
    assert grads, f"{name}: no trainable encoder weight received a gradient"
    assert all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("name", MODELS)
def test_checkpoint_round_trip(demo, name: str) -> None:
    cfg, data = demo
    enc = _build(cfg, data, name).eval()
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    torch.manual_seed(123)  # a different initialisation, overwritten by the load
    fresh = registry.get(name).build(_config(cfg, name), data.data_spec()).eval()
    buf.seek(0)
    fresh.load_state_dict(torch.load(buf, map_location="cpu"))
    batch = _batch(data, enc.views)
    with torch.no_grad():
        a, b = enc.encode(batch), fresh.encode(batch)
    assert torch.equal(a.mask, b.mask)
    torch.testing.assert_close(a.z, b.z, rtol=0, atol=0)
