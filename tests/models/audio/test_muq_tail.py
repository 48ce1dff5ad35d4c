"""The MuQ tail reproduces HF's full Conformer encoder from hidden_states[8] on, loaded by name."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import nn
from transformers.models.wav2vec2_conformer.modeling_wav2vec2_conformer import Wav2Vec2ConformerEncoder

from pianoray.models.audio.muq_tail import (
    MuQCheckpointError,
    MuQTail,
    MuQTailConfig,
    load_muq_state_dict,
    remap_muq_state_dict,
)


def _full_encoder(cfg: MuQTailConfig, seed: int = 0) -> Wav2Vec2ConformerEncoder:
    """HF's own 12-layer encoder with MuQ's conformer config, random weights and BatchNorm stats."""
    torch.manual_seed(seed)
    hf = cfg.hf_config()
    hf.num_hidden_layers = 12
    enc = Wav2Vec2ConformerEncoder(hf)
    with torch.no_grad():  # non-trivial running stats, so loading them (not defaults) is what is tested
        for m in enc.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def _hidden8_and_final(enc: Wav2Vec2ConformerEncoder, x: torch.Tensor, mask: torch.Tensor | None):
    """hidden_states[8] via a forward hook (transformers 5 returns no hidden states) and the final output."""
    captured = {}
    hook = enc.layers[7].register_forward_hook(lambda m, i, o: captured.__setitem__("h8", o))
    with torch.no_grad():
        final = enc(x.clone(), attention_mask=mask).last_hidden_state
    hook.remove()
    return captured["h8"], final


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tail_matches_hf_encoder_small(attn: str) -> None:
    cfg = MuQTailConfig(width=64, heads=4, ffn=128, kernel=31, attn_implementation=attn)
    enc = _full_encoder(cfg)
    # MuQ nests the encoder under model.conformer.; other keys (feature extractor etc.) must be ignored.
    sd = {f"model.conformer.{k}": v for k, v in enc.state_dict().items()}
    sd["model.other.weight"] = torch.zeros(3)
    tail = load_muq_state_dict(MuQTail(cfg), sd).eval()
    assert tail.pretrained
    x = torch.randn(2, 40, 64)
    h8, final = _hidden8_and_final(enc, x, None)
    with torch.no_grad():
        out = tail(h8)
    assert out.shape == (2, 40, 64)
    assert (out - final).abs().max().item() <= 1e-5
    # and with a padding mask, HF's semantics are kept for every frame
    mask = torch.ones(2, 40, dtype=torch.bool)
    mask[1, 30:] = False
    h8m, final_m = _hidden8_and_final(enc, x, mask)
    with torch.no_grad():
        out_m = tail(h8m, mask)
    assert (out_m - final_m).abs().max().item() <= 1e-5


def test_tail_matches_hf_encoder_full_width() -> None:
    cfg = MuQTailConfig()  # MuQ's 1024 wide / 16 heads / 4096 ffn / kernel 31
    enc = _full_encoder(cfg)
    tail = load_muq_state_dict(MuQTail(cfg), enc.state_dict()).eval()  # bare encoder: prefix ''
    x = torch.randn(1, 16, 1024)
    h8, final = _hidden8_and_final(enc, x, None)
    with torch.no_grad():
        out = tail(h8)
    assert (out - final).abs().max().item() <= 1e-5


def test_remap_renumbers_layers() -> None:
    sd = {
        "model.conformer.layers.7.self_attn.linear_q.weight": torch.zeros(1),
        "model.conformer.layers.8.self_attn.linear_q.weight": torch.ones(1),
        "model.conformer.layers.11.ffn1.intermediate_dense.bias": torch.ones(1),
        "model.conformer.layer_norm.weight": torch.ones(1),
        "model.conformer.embed_positions.inv_freq": torch.ones(1),
    }
    assert sorted(remap_muq_state_dict(sd)) == [
        "embed_positions.inv_freq",
        "layer_norm.weight",
        "layers.0.self_attn.linear_q.weight",
        "layers.3.ffn1.intermediate_dense.bias",
    ]


def test_load_errors_name_missing_keys_and_shapes(tmp_path) -> None:
    cfg = MuQTailConfig.demo()
    enc = _full_encoder(cfg)
    sd = {f"model.conformer.{k}": v for k, v in enc.state_dict().items() if "layers.9.ffn2" not in k}
    with pytest.raises(MuQCheckpointError, match=r"missing .*layers\.1\.ffn2"):
        load_muq_state_dict(MuQTail(cfg), sd)
    with pytest.raises(MuQCheckpointError, match="shape mismatch"):
        load_muq_state_dict(MuQTail(MuQTailConfig.demo(width=64)), enc.state_dict())
    with pytest.raises(MuQCheckpointError, match="cannot locate"):
        load_muq_state_dict(MuQTail(cfg), {"foo.weight": torch.zeros(1)})
    path = tmp_path / "muq.pt"
    torch.save({"state_dict": {f"model.conformer.{k}": v for k, v in enc.state_dict().items()}}, path)
    assert load_muq_state_dict(MuQTail(cfg), path).pretrained
    with pytest.raises(MuQCheckpointError, match="not found"):
        load_muq_state_dict(MuQTail(cfg), tmp_path / "absent.safetensors")


def test_train_keeps_batchnorm_in_eval() -> None:
    tail = MuQTail(MuQTailConfig.demo()).train()
    bns = [m for m in tail.modules() if isinstance(m, nn.BatchNorm1d)]
    assert len(bns) == 4 and not any(m.training for m in bns)
    assert tail.layers[0].ffn1.intermediate_dropout.training  # the rest does train
    before = [m.running_mean.clone() for m in bns]
    tail(torch.randn(2, 12, 128) * 3 + 1).sum().backward()
    assert all(torch.equal(b, m.running_mean) for b, m in zip(before, bns))


def test_config_validation_names_field() -> None:
    with pytest.raises(ValueError, match="tail.width"):
        MuQTailConfig(width=100, heads=16)
    with pytest.raises(ValueError, match="tail.kernel"):
        MuQTailConfig.demo(kernel=4)
    with pytest.raises(ValueError, match="extra"):
        MuQTailConfig(widht=12)


def test_random_init_warns_once_per_process(caplog, monkeypatch) -> None:
    from pianoray.models.audio import muq_tail

    monkeypatch.setattr(muq_tail, "_WARNED_RANDOM", set())  # other tests may have built a random tail already
    with caplog.at_level(logging.WARNING):
        MuQTail(MuQTailConfig.demo()).warn_if_random()
        MuQTail(MuQTailConfig.demo()).warn_if_random()  # Round 3 builds one per fusion and fold
    assert caplog.text.count("random-initialised MuQ tail: demo only") == 1
