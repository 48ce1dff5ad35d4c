"""S1 (Transformer over REMI): MLM masking statistics, shapes, the full preset's size, learning, pretraining."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pianoray.data.batch import Batch
from pianoray.models import registry
from pianoray.models.contract import PerformanceModel
from pianoray.models.symbolic.s1_remi import (
    FIRST_REGULAR_ID,
    IGNORE_INDEX,
    RemiMLMTask,
    S1Config,
    build_s1,
    masked_token_accuracy,
    mlm_mask,
    time_encoding,
    token_times,
)
from pianoray.training.pretrain import pretrain

from ..learnable import assert_loss_falls

VOCAB = 60
N_DIMS = 2
# A made-up 60-id vocabulary has no REMI meaning: value embeddings are off (tested below with real REMI).
TINY = {"d_model": 32, "layers": 2, "heads": 4, "ffn": 64, "max_positions": 128, "vocab_size": VOCAB,
        "value_embedding": False}


def _batch(ids: torch.Tensor, mask: torch.Tensor, labels: torch.Tensor) -> Batch:
    return Batch.supervised({"remi": ids, "remi_mask": mask}, labels)


def test_mlm_mask_proportions() -> None:
    g = torch.Generator().manual_seed(0)
    V, mask_id = 446, 446
    ids = torch.randint(FIRST_REGULAR_ID, V, (64, 512), generator=g)
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[::2, 300:] = False  # padding in half the rows
    ids[~mask] = 0
    inputs, targets = mlm_mask(ids, mask, g, 0.15, vocab_size=V, mask_id=mask_id)
    selected = targets != IGNORE_INDEX
    assert not bool(selected[~mask].any()), "padding is never selected"
    assert torch.equal(targets[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected]), "unselected tokens are untouched"
    n = selected.sum().item()
    assert abs(n / mask.sum().item() - 0.15) < 0.005  # ~24.6k real tokens: sd of the rate ~0.0023
    to_mask = (inputs[selected] == mask_id).float().mean().item()
    kept = (inputs[selected] == ids[selected]).float().mean().item()
    replaced = inputs[selected][(inputs[selected] != mask_id) & (inputs[selected] != ids[selected])]
    assert abs(to_mask - 0.8) < 0.015
    # a random replacement equals the original 1 time in 442: "unchanged" is 0.1 + 0.1/442.
    assert abs(kept - (0.1 + 0.1 / (V - FIRST_REGULAR_ID))) < 0.01
    assert abs(replaced.numel() / n - 0.1 * (1 - 1 / (V - FIRST_REGULAR_ID))) < 0.01
    assert bool((replaced >= FIRST_REGULAR_ID).all() and (replaced < V).all()), "specials are never drawn"


def test_mlm_mask_is_seeded_and_checks_shapes() -> None:
    ids = torch.randint(4, 50, (3, 20))
    mask = torch.ones_like(ids, dtype=torch.bool)
    a = mlm_mask(ids, mask, torch.Generator().manual_seed(1), vocab_size=50, mask_id=50)
    b = mlm_mask(ids, mask, torch.Generator().manual_seed(1), vocab_size=50, mask_id=50)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    with pytest.raises(ValueError, match="differ"):
        mlm_mask(ids, mask[:, :5], torch.Generator(), vocab_size=50, mask_id=50)


def test_masked_token_accuracy_known_value() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 1.0
    targets = torch.tensor([[2, 3, IGNORE_INDEX]])
    assert masked_token_accuracy(logits, targets).item() == pytest.approx(0.5)


def test_registered_as_symbolic_candidate() -> None:
    spec = registry.get("S1")
    assert spec.track == "symbolic" and spec.role == "candidate" and spec.views == ("remi",)
    task = spec.pretrain(S1Config())
    assert isinstance(task, RemiMLMTask) and task.name == "s1-mlm" and task.views == ("remi",)


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match="heads"):
        S1Config(d_model=30, heads=4)
    with pytest.raises(ValueError, match="n_layers"):
        S1Config(n_layers=3)


def test_full_preset_is_about_25m_parameters() -> None:
    cfg = S1Config.full()
    assert (cfg.layers, cfg.d_model, cfg.heads) == (8, 512, 8)
    enc = build_s1(cfg, registry.DataSpec(n_dims=19, extras={"remi_vocab_size": 446}))
    n = sum(p.numel() for p in enc.parameters())
    assert n == 26_528_257, n  # the figure quoted in the module docstring and docs/symbolic-encoders.md


def test_shapes_padding_and_length_check() -> None:
    torch.manual_seed(0)
    enc = build_s1(S1Config(**TINY), registry.DataSpec(n_dims=N_DIMS)).eval()
    ids = torch.randint(4, VOCAB, (1, 10))
    padded = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], 1)
    mask = torch.cat([torch.ones(1, 10, dtype=torch.bool), torch.zeros(1, 6, dtype=torch.bool)], 1)
    out = enc.encode(_batch(padded, mask, torch.zeros(1, N_DIMS)))
    assert out.tokens.shape == (1, 16, 32) and out.z.shape == (1, 512)
    alone = enc.encode(_batch(ids, torch.ones(1, 10, dtype=torch.bool), torch.zeros(1, N_DIMS)))
    assert torch.allclose(out.tokens[:, :10], alone.tokens, atol=1e-5), "padding changes valid tokens"
    assert torch.allclose(out.z, alone.z, atol=1e-5)
    empty = enc.encode(_batch(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 4, dtype=torch.bool), torch.zeros(1, 2)))
    assert torch.isfinite(empty.z).all()
    with pytest.raises(ValueError, match="max_positions"):
        enc.hidden(torch.randint(4, VOCAB, (1, 129)), torch.ones(1, 129, dtype=torch.bool))
    with pytest.raises(ValueError, match="vocab_size"):
        enc.hidden(torch.full((1, 3), VOCAB + 1), torch.ones(1, 3, dtype=torch.bool))


def _token_task(seed: int, n: int = 32, length: int = 16) -> Batch:
    """A "velocity level" y per sample: its tokens are ids around an id that grows with y, labels (y, 1 - y).

    The model must learn an ordinal reading of token ids (as of REMI velocity bins) and pool it."""
    g = torch.Generator().manual_seed(seed)
    y = torch.rand(n, generator=g)
    centre = 8 + (y * (VOCAB - 16)).round().long()
    ids = centre[:, None] + torch.randint(-4, 5, (n, length), generator=g)
    return _batch(ids, torch.ones(n, length, dtype=torch.bool), torch.stack([y, 1 - y], 1))


def test_finetuning_loss_falls_on_learnable_task() -> None:
    torch.manual_seed(0)
    model = PerformanceModel(build_s1(S1Config(**TINY, dropout=0.0), registry.DataSpec(n_dims=N_DIMS)), N_DIMS)
    # lr 3e-4: larger rates saturate the sigmoid head
    assert_loss_falls(model, _token_task(1), held=_token_task(2), steps=40, lr=3e-4, ratio=0.3)


def test_mlm_task_loss_and_cross_performer_term() -> None:
    torch.manual_seed(0)
    cfg = S1Config(**TINY)
    enc = build_s1(cfg, registry.DataSpec(n_dims=N_DIMS))
    task = RemiMLMTask(cfg)
    heads = task.build_heads(enc)
    inputs = {"remi": torch.randint(4, VOCAB, (4, 40)), "remi_mask": torch.ones(4, 40, dtype=torch.bool)}
    loss, parts = task.loss(enc, heads, inputs, torch.Generator().manual_seed(0))
    # An untrained head is close to uniform over the vocabulary: cross-entropy ~ log(V).
    assert abs(parts["mlm"] - torch.log(torch.tensor(float(VOCAB))).item()) < 1.0
    assert "contrastive" not in parts

    on = S1Config(**TINY, pretrain={"cross_performer": True, "contrastive_weight": 0.5})
    with pytest.raises(KeyError, match="piece"):
        RemiMLMTask(on).loss(enc, heads, inputs, torch.Generator().manual_seed(0))
    with_ids = inputs | {"piece": torch.tensor([0, 0, 1, 1]), "performer": torch.tensor([0, 1, 2, 3])}
    total, parts = RemiMLMTask(on).loss(enc, heads, with_ids, torch.Generator().manual_seed(0))
    assert parts["contrastive"] > 0
    assert total.item() == pytest.approx(parts["mlm"] + 0.5 * parts["contrastive"], rel=1e-5)
    total.backward()
    assert enc.shared.net[1].weight.grad is not None, "the contrastive term trains the pooled path"


def test_token_times_recover_onsets_from_bar_and_position_tokens() -> None:
    """Known values: every Pitch token's time is its note's onset (within half a 20.8 ms grid step),
    across bars and in a crop that starts at a later bar."""
    from pianoray.data.midi import NoteTable
    from pianoray.data.symbolic.remi import TOKEN_KINDS, RemiTokenizer

    tok = RemiTokenizer()
    table = tok.token_table()
    onset = np.array([0.3, 0.31, 1.0, 2.2, 4.05, 5.5, 9.0])  # 120 qpm: bars at 0, 2, 4, 6, 8 s
    notes = NoteTable.from_arrays(np.array([60, 64, 67, 60, 62, 64, 65]), onset, onset + 0.4,
                                  np.array([60, 70, 80, 90, 50, 40, 30]), np.array([[1.0, 3.0]]))
    ids = torch.tensor(tok.encode(notes))[None]
    kind, beats = torch.tensor(table.kind)[ids], torch.tensor(table.beats)[ids]
    t = token_times(kind, beats, table.seconds_per_beat)
    pitch = kind[0] == TOKEN_KINDS.index("pitch")
    assert t.shape == ids.shape
    np.testing.assert_allclose(t[0][pitch].numpy(), onset, atol=tok.onset_step_s / 2 + 1e-6)
    # The REMI view crops at Bar tokens: a crop from the second bar (2 s) counts from there.
    start = int(torch.nonzero(kind[0] == TOKEN_KINDS.index("bar"))[1])
    crop = token_times(kind[:, start:], beats[:, start:], table.seconds_per_beat)
    np.testing.assert_allclose(crop[0][pitch[start:]].numpy(), onset[3:] - 2.0, atol=tok.onset_step_s / 2 + 1e-6)
    assert torch.all(time_encoding(t, 8).abs() <= 1) and time_encoding(t, 8).shape == (1, ids.shape[1], 16)


def _remi_task(seed: int, n: int = 32) -> Batch:
    """Real REMI sequences of random 6-note phrases; label (y, 1 - y) with y = the tempo (inter-onset
    interval 0.15-0.5 s), at one velocity: only the tokens' times carry it."""
    from pianoray.data.midi import NoteTable
    from pianoray.data.symbolic import collate_remi
    from pianoray.data.symbolic.remi import RemiTokenizer

    tok, rng = RemiTokenizer(), np.random.default_rng(seed)
    seqs, ys = [], []
    for _ in range(n):
        y = rng.random()
        onset = np.arange(6) * (0.15 + 0.35 * y) + rng.uniform(0, 0.5)
        notes = NoteTable.from_arrays(rng.integers(55, 75, 6), onset, onset + 0.2, np.full(6, 64), None)
        seqs.append(tok.encode(notes))
        ys.append(y)
    y = torch.tensor(ys, dtype=torch.float32)
    return Batch.supervised(collate_remi(seqs), torch.stack([y, 1 - y], 1))


def test_value_embeddings_learn_timing_from_real_remi() -> None:
    torch.manual_seed(0)
    cfg = S1Config(d_model=32, layers=2, heads=4, ffn=64, max_positions=128, dropout=0.0)
    model = PerformanceModel(build_s1(cfg, registry.DataSpec(n_dims=N_DIMS)), N_DIMS)
    # Measured: held-out loss 0.100 -> 0.020 with value embeddings, 0.089 -> 0.072 with ids alone.
    assert_loss_falls(model, _remi_task(1), held=_remi_task(2), steps=60, lr=3e-4, ratio=0.5)


def test_value_embedding_needs_the_remi_table() -> None:
    with pytest.raises(ValueError, match="value_embedding"):
        build_s1(S1Config(vocab_size=VOCAB), registry.DataSpec(n_dims=N_DIMS))


@pytest.mark.slow  # ~10 s alone on 2 cores (REMI of 16 files + 2 x 4 epochs)
def test_pretraining_on_real_midi_falls_and_caches(percepiano_dir: Path, tmp_path: Path) -> None:
    files = sorted((percepiano_dir / "all_2rounds").glob("*.mid"))[:16]
    assert len(files) == 16
    cfg = S1Config(max_positions=256)
    spec = registry.get("S1")

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


@pytest.mark.slow  # ~5 s: REMI of 24 ASAP files (real data), 4 epochs
def test_cross_performer_pretraining_on_asap_pairs_renditions(shared_data: Path, tmp_path: Path) -> None:
    """The optional contrastive term, for real: ASAP pieces with several pianists, grouped batches."""
    from pianoray.training.pretrain import rendition_groups

    folders = sorted({p.parent for p in (shared_data / "asap").rglob("*.mid")})
    files: list[Path] = []
    for folder in folders:
        perfs = sorted(p for p in folder.glob("*.mid") if p.stem != "midi_score")
        if len(perfs) >= 3:
            files += perfs[:3]
        if len(files) >= 24:
            break
    piece, performer = rendition_groups(files)
    assert len(set(piece.tolist())) == 8 and len(set(performer.tolist())) == 24
    torch.manual_seed(0)
    cfg = S1Config(d_model=32, layers=1, heads=4, ffn=64, max_positions=256,
                   pretrain={"cross_performer": True, "contrastive_weight": 1.0})
    enc = build_s1(cfg, registry.DataSpec(n_dims=N_DIMS))
    result = pretrain(enc, RemiMLMTask(cfg), files, epochs=4, out_dir=tmp_path, encoder_config=cfg.model_dump(),
                      batch_size=8, lr=1e-3, max_len=256)
    contrastive = [p["contrastive"] for p in result.parts]
    assert all(c > 0 for c in contrastive), "every batch holds cross-performer pairs"
    assert contrastive[-1] < contrastive[0] and result.losses[-1] < result.losses[0], result.parts
