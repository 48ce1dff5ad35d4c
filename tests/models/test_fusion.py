"""The fusion modules (F1-F3, F-score) over frozen winners, and the per-dimension heads F3 needs.

The contract matrix (test_contract.py) covers every fusion module's shapes, one training step and its checkpoint
round trip; here: that they stay out of Rounds 1-2, need both winners, train nothing of the winners (no gradient,
weights and normalisation statistics unchanged, eval mode), load the winners' Round-2 checkpoints, F3's
gates and per-dimension mixing, by known values, and F-score's score, read by the symbolic winner.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from pianoray.config import ConfigError, load_config
from pianoray.data.tiers import Tier
from pianoray.models import registry
from pianoray.models.baselines import FrozenProbe, FrozenProbeConfig
from pianoray.models.contract import Z_DIM, EncoderOutput, PerformanceModel, RankingHeads, RegressionHead
from pianoray.models.fusion import FusionEncoder, GatedFusion, GatedFusionEncoder, ScoreFusionEncoder
from pianoray.objectives.losses import multitask_loss
from pianoray.training.loop import param_groups
from tests.models.conftest import DEMO_YAML, FUSED


def _fusion(data, name: str, parts: dict = FUSED) -> FusionEncoder:
    torch.manual_seed(0)
    spec = registry.get(name)
    return spec.build(spec.config_cls.model_validate(parts), data.data_spec())


def _batch(data, views, n: int = 4):
    return next(iter(data.loader(0, "train", (Tier.T1,), views, n, epoch=1, seed=0)))


def _frozen_state(enc: FusionEncoder) -> dict[str, torch.Tensor]:
    """A copy of both winners' weights and buffers (BatchNorm statistics included)."""
    return {k: v.clone() for k, v in enc.state_dict().items() if k.startswith(("audio.", "symbolic."))}


def test_fusion_experiments_stay_out_of_rounds_1_and_2() -> None:
    order = {t.name: t.order for t in registry.tracks()}
    assert order["fusion"] > max(order["audio"], order["symbolic"])
    assert registry.names(kind="fusion") == registry.names(track="fusion") == ["F-score", "F1", "F2", "F3"]
    assert not set(registry.names(kind="fusion")) & set(registry.names(kind="neural"))
    for name in ("F1", "F2", "F3", "F-score"):
        spec = registry.get(name)
        assert (spec.kind, spec.role, spec.views, spec.pretrain) == ("fusion", "candidate", (), None)
    assert "fusion" not in {t.name for t in registry.tracks(("neural", "fitted"))}  # what run.json records
    with pytest.raises(ConfigError, match="experiments.F2.encoder: F2 is a fusion"):
        load_config(DEMO_YAML, {"experiments": {"F2": {}}})


def test_a_fusion_needs_both_winners_of_their_tracks(demo) -> None:
    _, data = demo
    with pytest.raises(ValueError, match="audio.encoder is not set"):
        _fusion(data, "F2", {})
    with pytest.raises(ValueError, match="symbolic.encoder is not set"):
        _fusion(data, "F2", {"audio": FUSED["audio"]})
    with pytest.raises(ValueError, match="not a neural audio encoder"):
        _fusion(data, "F2", {"audio": FUSED["symbolic"], "symbolic": FUSED["symbolic"]})
    with pytest.raises(ValueError, match="'symbolic-gbm' is a fitted encoder"):
        _fusion(data, "F2", {"audio": FUSED["audio"], "symbolic": {"encoder": "symbolic-gbm"}})


@pytest.mark.parametrize("name", ["F1", "F2", "F3"])
def test_encode_shapes_and_masks(demo, name: str) -> None:
    _, data = demo
    enc = _fusion(data, name).eval()
    assert enc.views == ("frames", "notes")
    batch = _batch(data, enc.views)
    with torch.no_grad():
        out = enc.encode(batch)
    b, n = batch.size, len(data.label_names)
    assert out.z.shape == (b, Z_DIM)
    if name == "F1":  # both attended sequences, each with its own mask
        masks = (batch.inputs["frames_mask"], batch.inputs["notes_mask"])
        assert out.tokens.shape == (b, sum(m.shape[1] for m in masks), 256)
        assert torch.equal(out.mask, torch.cat(masks, dim=1))
    else:  # the two winners' embeddings
        audio, symbolic = enc.parts(batch)
        assert torch.equal(out.tokens, torch.stack([audio.z, symbolic.z], dim=1)) and out.mask.all()
    assert (out.z_dims is not None) == (name == "F3")
    if out.z_dims is not None:
        assert out.z_dims.shape == (b, n, Z_DIM)
        torch.testing.assert_close(out.z, out.z_dims.mean(dim=1))


@pytest.mark.parametrize("name", ["F1", "F2", "F3", "F-score"])
def test_a_step_trains_the_fusion_and_heads_only(demo, name: str) -> None:
    cfg, data = demo
    model = PerformanceModel(_fusion(data, name), n_dims=len(data.label_names)).train()
    enc = model.encoder
    trainable = {id(p) for g in param_groups(model, 1e-3) for p in g["params"]}
    assert trainable == {id(p) for m in (enc.fusion, model.ranking, model.regression) for p in m.parameters()}
    before = _frozen_state(enc)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if id(p) in trainable], lr=1e-2)
    batch = _batch(data, enc.views)
    out = model(batch)
    total, _ = multitask_loss(out.regression, out.scores, out.z, batch, cfg.loss)
    total.backward()
    assert all(p.grad is None for part in (enc.audio, enc.symbolic) for p in part.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.fusion.parameters())
    optimizer.step()
    after = _frozen_state(enc)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_the_winners_stay_in_eval_mode_while_the_fusion_trains(demo) -> None:
    """A1 as the audio winner: LoRA dropout and the MuQ tail's BatchNorm would change it in train mode."""
    cfg, data = demo
    a1 = {"encoder": "A1", "model": {**cfg.experiments["A1"].model, "lora": {"rank": 4, "dropout": 0.5}}}
    enc = _fusion(data, "F1", {"audio": a1, "symbolic": FUSED["symbolic"]})
    enc.eval().train()
    assert enc.training and enc.fusion.training
    assert not any(m.training for part in (enc.audio, enc.symbolic) for m in part.modules())
    before = _frozen_state(enc)
    batch = _batch(data, enc.views)
    first, second = enc.parts(batch), enc.parts(batch)
    assert torch.equal(first[0].z, second[0].z) and torch.equal(first[1].z, second[1].z)
    enc.encode(batch)
    after = _frozen_state(enc)
    assert all(torch.equal(before[k], after[k]) for k in before)  # BatchNorm running statistics included


def test_load_winners_takes_round_2_checkpoints(demo) -> None:
    """A Round-2 checkpoint holds a PerformanceModel's state: its encoder's weights are the winner's."""
    _, data = demo
    n = len(data.label_names)
    torch.manual_seed(7)
    winners = {part: PerformanceModel(registry.get(p["encoder"]).build(registry.get(p["encoder"]).config_cls(),
                                                                        data.data_spec()), n).eval()
               for part, p in FUSED.items()}
    enc = _fusion(data, "F2")
    enc.load_winners(winners["audio"].state_dict(), winners["symbolic"].state_dict())
    batch = _batch(data, enc.views)
    with torch.no_grad():
        audio, symbolic = enc.parts(batch)
        assert torch.equal(audio.z, winners["audio"].encoder.encode(batch).z)
        assert torch.equal(symbolic.z, winners["symbolic"].encoder.encode(batch).z)


def test_f3_gates_lie_in_0_1_per_sample_and_dimension(demo) -> None:
    _, data = demo
    enc = _fusion(data, "F3").eval()
    assert isinstance(enc, GatedFusionEncoder)
    batch = _batch(data, enc.views)
    with torch.no_grad():
        gates = enc.gates(batch)
    assert gates.shape == (batch.size, len(data.label_names))
    assert ((gates > 0) & (gates < 1)).all()


def _outputs(z_audio: torch.Tensor, z_symbolic: torch.Tensor) -> tuple[EncoderOutput, EncoderOutput]:
    mask = torch.ones(z_audio.shape[0], 1, dtype=torch.bool)
    return EncoderOutput(z_audio[:, None], mask, z_audio), EncoderOutput(z_symbolic[:, None], mask, z_symbolic)


def test_f3_mixes_each_dimension_by_its_own_gate() -> None:
    """Gate 1 for dimension 0 (audio alone), 0 for dimension 1 (symbolic alone), 1/2 for dimension 2."""
    fusion = GatedFusion(n_dims=3)
    with torch.no_grad():
        fusion.gate.weight.zero_()
        fusion.gate.bias.copy_(torch.tensor([1e4, -1e4, 0.0]))
    z_a, z_s = torch.randn(2, Z_DIM), torch.randn(2, Z_DIM)
    out = fusion(*_outputs(z_a, z_s))
    torch.testing.assert_close(fusion.gates(z_a, z_s), torch.tensor([[1.0, 0.0, 0.5]] * 2))
    torch.testing.assert_close(out.z_dims[:, 0], z_a)
    torch.testing.assert_close(out.z_dims[:, 1], z_s)
    torch.testing.assert_close(out.z_dims[:, 2], (z_a + z_s) / 2)
    torch.testing.assert_close(out.z, (z_a + z_s) / 2)  # the mean over dimensions: the mean gate's mix


def test_heads_read_each_dimensions_own_representation() -> None:
    """z_dims[:, 0] = 0 and z_dims[:, 1] = 1 with w_d = 1/512: regression [sigmoid(0), sigmoid(1)], where one
    shared z = 0 gives sigmoid(0) twice."""
    regression, ranking = RegressionHead(2), RankingHeads(2)
    with torch.no_grad():
        regression.linear.weight.fill_(1 / Z_DIM)
        regression.linear.bias.zero_()
    z_dims = torch.stack([torch.zeros(1, Z_DIM), torch.ones(1, Z_DIM)], dim=1)  # [1, 2, 512]
    torch.testing.assert_close(regression(z_dims), torch.sigmoid(torch.tensor([[0.0, 1.0]])))
    torch.testing.assert_close(regression(torch.zeros(1, Z_DIM)), torch.full((1, 2), 0.5))
    per_dim = ranking(z_dims)
    torch.testing.assert_close(per_dim, torch.cat([ranking.heads[0](z_dims[:, 0]), ranking.heads[1](z_dims[:, 1])], -1))
    assert not torch.allclose(per_dim, ranking(z_dims[:, 0]))
    z = torch.randn(3, Z_DIM)  # the same z for every dimension: exactly the shared-z heads
    same = z[:, None].expand(3, 2, Z_DIM)
    torch.testing.assert_close(regression(same), regression(z))
    torch.testing.assert_close(ranking(same), ranking(z))


def test_performance_model_feeds_f3s_z_dims_to_the_heads(demo) -> None:
    _, data = demo
    model = PerformanceModel(_fusion(data, "F3"), n_dims=len(data.label_names)).eval()
    batch = _batch(data, model.encoder.views)
    with torch.no_grad():
        out, enc_out = model(batch), model.encoder.encode(batch)
    torch.testing.assert_close(out.regression, model.regression(enc_out.z_dims))
    torch.testing.assert_close(out.scores, model.ranking(enc_out.z_dims))
    torch.testing.assert_close(out.z, enc_out.z)


def test_existing_encoders_keep_their_checkpoint_keys() -> None:
    """PerformanceModel over audio-frozen (8 wide, 2 dimensions): the keys and shapes before z_dims existed."""
    model = PerformanceModel(FrozenProbe(FrozenProbeConfig(), 8), n_dims=2)
    shared = {"pool.score.weight": (1, 8), "pool.score.bias": (1,), "shared.net.0.weight": (8,),
              "shared.net.0.bias": (8,), "shared.net.1.weight": (512, 8), "shared.net.1.bias": (512,),
              "shared.net.4.weight": (512, 512), "shared.net.4.bias": (512,), "shared.net.5.weight": (512,),
              "shared.net.5.bias": (512,)}
    heads = {f"ranking.heads.{d}.{k}": s for d in range(2)
             for k, s in {"0.weight": (128, 512), "0.bias": (128,), "2.weight": (1, 128), "2.bias": (1,)}.items()}
    expected = {**{f"encoder.{k}": s for k, s in shared.items()}, **heads,
                "regression.linear.weight": (2, 512), "regression.linear.bias": (2,)}
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == expected


def test_a_fusion_checkpoint_holds_the_winners_and_the_module(demo) -> None:
    _, data = demo
    keys = _fusion(data, "F2").state_dict().keys()
    assert {k.split(".")[0] for k in keys} == {"audio", "symbolic", "fusion"}


def test_f_score_reads_the_score_with_the_same_frozen_symbolic_winner(demo) -> None:
    """Its third part is the symbolic winner on the score MIDI's inputs; a performance that is its score
    (the score's inputs as the performance's) encodes to the same z, so the departure z_p - z_s is 0."""
    _, data = demo
    enc = _fusion(data, "F-score").eval()
    assert isinstance(enc, ScoreFusionEncoder) and enc.views == ("frames", "notes", "score:notes")
    batch = _batch(data, enc.views)
    assert not torch.equal(batch.inputs["notes"], batch.inputs["score:notes"])  # performances depart from scores
    with torch.no_grad():
        audio, perf, score = enc.parts(batch)
        assert torch.equal(score.z, enc.symbolic.encode(batch.score_batch()).z)
        assert torch.equal(perf.z, enc.symbolic.encode(batch).z) and not torch.equal(perf.z, score.z)
        out = enc.encode(batch)
        assert torch.equal(out.tokens, torch.stack([audio.z, perf.z, score.z], dim=1)) and out.mask.all()
        as_written = replace(batch, inputs={**batch.inputs, "notes": batch.inputs["score:notes"],
                                            "notes_mask": batch.inputs["score:notes_mask"]})
        _, perf_w, score_w = enc.parts(as_written)
        assert torch.equal(perf_w.z, score_w.z)
        expected = enc.fusion.mlp(torch.cat([audio.z, perf_w.z, score_w.z, torch.zeros_like(audio.z)], dim=-1))
        torch.testing.assert_close(enc.encode(as_written).z, expected)
        # the score moves the quality: the same performance against another score, another z
        other = replace(batch, inputs={**batch.inputs, "score:notes": batch.inputs["notes"],
                                       "score:notes_mask": batch.inputs["notes_mask"]})
        assert not torch.allclose(enc.encode(other).z, out.z)


def test_f_score_needs_the_score_views_in_its_batch(demo) -> None:
    _, data = demo
    enc = _fusion(data, "F-score").eval()
    with pytest.raises(KeyError, match="no score views"):
        enc.encode(_batch(data, ("frames", "notes")))


def test_frozen_winners_encode_each_evaluation_batch_once_and_only_while_frozen(demo, monkeypatch) -> None:
    """Evaluating, a fusion's frozen winners come from the process's memo (FROZEN_FEATURES): the same batch twice,
    or another fusion over the same winners (F-score's score inputs left out of the key), encodes once, to the
    same tensors; a training batch, unfrozen winners or changed weights encode afresh, and only the most recent
    weights' outputs are kept."""
    from pianoray.models import fusion

    _, data = demo
    memo = fusion.FrozenFeatures()
    monkeypatch.setattr(fusion, "FROZEN_FEATURES", memo)
    f2, fs = _fusion(data, "F2").eval(), _fusion(data, "F-score").eval()
    fs.load_state_dict({**fs.state_dict(), **{k: v for k, v in f2.state_dict().items() if not k.startswith("fusion")}})
    batch = _batch(data, fs.views)
    with torch.no_grad():
        first = f2.parts(batch)
        assert (memo.misses, memo.hits) == (2, 0)
        again = f2.parts(batch)
        assert (memo.misses, memo.hits) == (2, 2) and all(a is b for a, b in zip(first, again))
        audio, perf, score = fs.parts(batch)  # the same winners: their performance parts are kept ones
        assert (memo.misses, memo.hits) == (3, 4) and audio is first[0] and perf is first[1]
        assert torch.equal(score.z, fs.symbolic.encode(batch.score_batch()).z)
        torch.testing.assert_close(f2.encode(batch).z, f2.fusion(f2.audio.encode(batch), f2.symbolic.encode(batch)).z)
        other = _batch(data, fs.views, n=3)  # other inputs: a new key
        f2.parts(other)
        assert memo.misses == 5
        f2.train()  # training crops are never kept
        f2.parts(batch)
        assert memo.misses == 5 and memo.hits == 6
        f2.eval()
        f2.unfreeze(1e-4)  # unfrozen winners change as they train
        f2.parts(batch)
        assert memo.hits == 6
    # new weights (another fold's winners): a new key, and the previous winners' outputs are let go
    f1 = _fusion(data, "F2").eval()
    with torch.no_grad():
        state = {k: v + 1 if v.is_floating_point() else v for k, v in f1.state_dict().items()}
        f1.load_state_dict(state)
        misses = memo.misses
        f1.parts(batch)
        assert memo.misses == misses + 2 and len(memo._kept) == 2
        assert memo.bytes == sum(fusion._nbytes(o) for kept in memo._kept.values() for o in kept.values())
    tiny = fusion.FrozenFeatures(max_bytes=1)  # past its bound: encoded afresh, the same output, said once
    monkeypatch.setattr(fusion, "FROZEN_FEATURES", tiny)
    with torch.no_grad():
        assert torch.equal(f1.parts(batch)[0].z, f1.audio.encode(batch).z) and tiny.full and tiny.bytes == 0
    with pytest.raises(TypeError, match="cannot hash a object"):
        fusion.digest(object())
