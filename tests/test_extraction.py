"""pianoray.extraction: audio -> cached MuQ frames, on a tiny 12-layer MuQ-shaped encoder (width 32)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pianoray.data.augment import load_mono
from pianoray.data.corpus import open_cache
from pianoray.extraction import (
    AUGMENTATIONS_FILE,
    FINAL_DIR,
    NO_CHECKPOINT_MESSAGE,
    ExtractionError,
    build_encoder,
    extract,
)
from pianoray.models.audio.muq_encoder import MUQ_SAMPLE_RATE, MuQEncoder, MuQEncoderConfig, mel_filterbank
from pianoray.models.audio.muq_tail import MuQCheckpointError, MuQTail, MuQTailConfig, load_muq_state_dict

WINDOW_S = 2.0
WINDOW_FRAMES = 50
REAL_WAV = "Beethoven_WoO80_var27_8bars_3_15.wav"


def piano_tone_clip(seconds: float, sr: int, pitches: list[int], seed: int) -> np.ndarray:
    """Struck-string-like notes: harmonics with exponential decay and a sharp attack, one every 0.5 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    out = np.zeros_like(t)
    for i, start in enumerate(np.arange(0.0, seconds - 0.1, 0.5)):
        f0 = 440.0 * 2 ** ((pitches[i % len(pitches)] - 69) / 12)
        tt = np.clip(t - start, 0, None)
        env = (t >= start) * np.exp(-3.0 * tt) * (1 - np.exp(-tt / 0.002))
        for h in range(1, 6):
            out += env * np.sin(2 * np.pi * f0 * h * tt + rng.uniform(0, 2 * np.pi)) / h**1.5
    return (0.3 * out / np.abs(out).max()).astype(np.float32)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> object:
    """The tiny encoder is latency-bound: on a shared 2-core machine two threads are ~10x slower than one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("clips")
    sf.write(d / "etude_a.wav", piano_tone_clip(4.3, 44100, [60, 64, 67, 72], 0), 44100)  # 2 windows, 0.3 s dropped
    sf.write(d / "etude_b.wav", piano_tone_clip(2.2, 24000, [48, 55], 1), 24000)  # 1 window
    return d


@pytest.fixture(scope="module")
def mixed_dir(clip_dir: Path, percepiano_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("mixed")
    for p in clip_dir.iterdir():
        shutil.copy(p, d / p.name)
    shutil.copy(percepiano_dir / "examples" / REAL_WAV, d / REAL_WAV)
    return d


@pytest.fixture(scope="module")
def mixed_cache(mixed_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "c"
    return extract(mixed_dir, out, allow_random=True, window_seconds=WINDOW_S, seed=0,
                   encoder_config=MuQEncoderConfig.tiny())


def hidden_state_8(encoder: MuQEncoder, wave: torch.Tensor) -> torch.Tensor:
    """hidden_states[8] by running the first eight conformer layers by hand (no hooks): [B, T, W]."""
    with torch.no_grad():
        h = encoder.front_end(wave)
        rotary = encoder.conformer.embed_positions(h)
        for layer in encoder.conformer.layers[:8]:
            h = layer(h, attention_mask=None, relative_position_embeddings=rotary)
    return h


def test_cache_opens_with_window_aligned_frames(mixed_cache: Path, mixed_dir: Path) -> None:
    corpus = open_cache(mixed_cache)
    assert corpus.meta.muq_layer == 8 and corpus.meta.frame_rate == 25
    assert corpus.meta.window_frames == WINDOW_FRAMES and corpus.meta.width == 32
    assert corpus.meta.created_by["random_encoder"] is True
    m = corpus.manifest("T1").set_index("segment_id")
    expected = {"etude_a": 2, "etude_b": 1, "Beethoven_WoO80_var27_8bars_3_15": 7}  # 14.35 s -> 7 whole windows
    assert dict(m["n_frames"]) == {k: v * WINDOW_FRAMES for k, v in expected.items()}
    real = m.loc["Beethoven_WoO80_var27_8bars_3_15"]
    assert (real["piece"], real["passage"], real["performer"]) == ("Beethoven_WoO80_var27", "Beethoven_WoO80_var27_8bars_15", "3")
    assert m.loc["etude_a", "piece"] == "etude_a"
    frames = corpus.frames("T1", {"segment_id": "etude_a", **m.loc["etude_a"].to_dict()})
    assert frames.shape == (100, 32) and frames.dtype == np.float16
    # Extracted without labels: T1 rows are only flagged for that (frames, shards, hashes are sound).
    problems = corpus.check()
    assert len(problems) == 3 and all("data without labels" in p for p in problems)

    final = open_cache(mixed_cache / FINAL_DIR)
    assert final.meta.muq_layer == 12 and final.meta.window_frames == WINDOW_FRAMES
    fm = final.manifest("T1").set_index("segment_id")
    assert dict(fm["n_frames"]) == dict(m["n_frames"])


def test_layer8_and_final_equal_an_independent_forward(mixed_cache: Path, mixed_dir: Path) -> None:
    corpus, final = open_cache(mixed_cache), open_cache(mixed_cache / FINAL_DIR)
    sid = "Beethoven_WoO80_var27_8bars_3_15"
    _, row = corpus.locate(sid)
    _, final_row = final.locate(sid)
    cached8 = np.asarray(corpus.frames("T1", row), dtype=np.float32)
    cached_final = np.asarray(final.frames("T1", final_row), dtype=np.float32)

    encoder = build_encoder(MuQEncoderConfig.tiny(), None, allow_random=True, seed=0)
    audio = load_mono(mixed_dir / REAL_WAV, MUQ_SAMPLE_RATE)
    samples = WINDOW_FRAMES * 960
    for k in (0, 3, 6):  # window k covers audio [k*2 s, (k+1)*2 s) and cache rows [50k, 50k+50)
        wave = torch.from_numpy(audio[k * samples : (k + 1) * samples])[None]
        h8 = hidden_state_8(encoder, wave)[0]
        np.testing.assert_allclose(cached8[k * 50 : (k + 1) * 50], h8.numpy(), atol=2e-3, rtol=2e-3)
        # The final layer = the audio candidates' MuQ tail (layers 9-12 + LayerNorm) applied to layer 8.
        tail = load_muq_state_dict(MuQTail(MuQTailConfig(width=32, heads=2, ffn=64, kernel=7)),
                                   {f"conformer.{k_}": v for k_, v in encoder.conformer.state_dict().items()}).eval()
        with torch.no_grad():
            expected_final = tail(h8[None])[0].numpy()
        np.testing.assert_allclose(cached_final[k * 50 : (k + 1) * 50], expected_final, atol=2e-3, rtol=2e-3)
    assert np.abs(cached8[:50] - cached8[50:100]).max() > 0.1  # windows are not copies of each other


def test_refuses_without_checkpoint(clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="no MuQ checkpoint") as err:
        extract(clip_dir, tmp_path / "c", window_seconds=WINDOW_S,
                encoder_config=MuQEncoderConfig.tiny())
    assert str(err.value) == NO_CHECKPOINT_MESSAGE
    assert not (tmp_path / "c" / "corpus.json").exists()


def test_augment_writes_t4_twins_linked_to_clean(clip_dir: Path, tmp_path: Path) -> None:
    root = extract(clip_dir, tmp_path / "c", allow_random=True, augment=2, window_seconds=WINDOW_S, seed=3, encoder_config=MuQEncoderConfig.tiny())
    corpus = open_cache(root)
    t1 = corpus.manifest("T1").set_index("segment_id")
    t4 = corpus.manifest("T4")
    assert len(t4) == 2 * len(t1)
    assert sorted(t4["clean_id"]) == sorted(list(t1.index) * 2)
    applied = json.loads((root / "T4" / AUGMENTATIONS_FILE).read_text())
    for _, row in t4.iterrows():
        clean = t1.loc[row["clean_id"]]
        assert row["n_frames"] == clean["n_frames"]
        names = [t["name"] for t in applied[row["segment_id"]]]
        assert names and row["augmentation"] == "+".join(names)
        twin = np.asarray(corpus.frames("T4", row.to_dict()), dtype=np.float32)
        orig = np.asarray(corpus.frames("T1", {"segment_id": row["clean_id"], **clean.to_dict()}), dtype=np.float32)
        assert np.abs(twin - orig).mean() > 1e-3
    assert len(open_cache(root / FINAL_DIR).manifest("T4")) == len(t4)
    assert all("data without labels" in p for p in corpus.check())


def test_loaded_checkpoint_changes_the_output(clip_dir: Path, tmp_path: Path) -> None:
    cfg = MuQEncoderConfig.tiny()
    with torch.random.fork_rng():
        torch.manual_seed(123)
        other = MuQEncoder(cfg)
    # As MuQ stores it: everything under "model.", plus modules extraction does not use.
    state = {f"model.{k}": v for k, v in other.state_dict().items()}
    state["model.linear.weight"] = torch.zeros(8, 32)
    state["model.conformer.pos_conv_embed.conv.bias"] = torch.zeros(32)
    ckpt = tmp_path / "muq.pt"
    torch.save(state, ckpt)

    random_root = extract(clip_dir, tmp_path / "r", allow_random=True, window_seconds=WINDOW_S,
                          encoder_config=cfg)
    loaded_root = extract(clip_dir, tmp_path / "l", muq_checkpoint=ckpt, window_seconds=WINDOW_S,
                          encoder_config=cfg)
    rc, lc = open_cache(random_root), open_cache(loaded_root)
    assert lc.meta.created_by["random_encoder"] is False and lc.meta.created_by["muq_checkpoint"] == "muq.pt"
    _, rrow = rc.locate("etude_b")
    _, lrow = lc.locate("etude_b")
    random_frames = np.asarray(rc.frames("T1", rrow), dtype=np.float32)
    loaded_frames = np.asarray(lc.frames("T1", lrow), dtype=np.float32)
    assert np.abs(random_frames - loaded_frames).mean() > 0.1
    wave = torch.from_numpy(load_mono(clip_dir / "etude_b.wav", MUQ_SAMPLE_RATE)[: WINDOW_FRAMES * 960])[None]
    np.testing.assert_allclose(loaded_frames, hidden_state_8(other, wave)[0].numpy(), atol=2e-3, rtol=2e-3)


def test_checkpoint_that_does_not_fit_names_the_file_and_keys(tmp_path: Path) -> None:
    wide = MuQEncoder(MuQEncoderConfig.tiny(conformer=MuQTailConfig(width=64, heads=2, ffn=64, kernel=7, n_layers=12)))
    ckpt = tmp_path / "wide.pt"
    torch.save({f"model.{k}": v for k, v in wide.state_dict().items()}, ckpt)
    with pytest.raises(MuQCheckpointError, match=r"wide\.pt does not fit.*shape mismatch"):
        build_encoder(MuQEncoderConfig.tiny(), ckpt, allow_random=False, seed=0)
    torch.save({"model.something.weight": torch.zeros(2)}, tmp_path / "bad.pt")
    with pytest.raises(MuQCheckpointError, match=r"bad\.pt: cannot locate a Conformer"):
        build_encoder(MuQEncoderConfig.tiny(), tmp_path / "bad.pt", allow_random=False, seed=0)


def test_errors_name_the_file(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.mkdir()
    sf.write(short / "tiny.wav", piano_tone_clip(1.0, 24000, [60], 0), 24000)
    with pytest.raises(ExtractionError, match=r"tiny\.wav: 1\.00 s is shorter than one window"):
        extract(short, tmp_path / "c1", allow_random=True, window_seconds=WINDOW_S,
                encoder_config=MuQEncoderConfig.tiny())
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "noise.wav").write_bytes(b"RIFF not really a wav file")
    with pytest.raises(ExtractionError, match=r"noise\.wav: cannot read audio"):
        extract(broken, tmp_path / "c2", allow_random=True, window_seconds=WINDOW_S,
                encoder_config=MuQEncoderConfig.tiny())
    with pytest.raises(ExtractionError, match="no audio files"):
        extract(tmp_path / "c1", tmp_path / "c3", allow_random=True)


def test_labels_for_t1_rows(clip_dir: Path, tmp_path: Path) -> None:
    labels = {"etude_a": [0.1] * 19, "etude_b": [0.9] * 19}
    root = extract(clip_dir, tmp_path / "c", allow_random=True, window_seconds=WINDOW_S, labels=labels, encoder_config=MuQEncoderConfig.tiny())
    corpus = open_cache(root)
    assert corpus.labels19["etude_b"].tolist() == pytest.approx([0.9] * 19)
    assert corpus.meta.label_names is not None and len(corpus.meta.label_names) == 19
    with pytest.raises(ExtractionError, match=r"etude_b\.wav: no label for segment 'etude_b'"):
        extract(clip_dir, tmp_path / "d", allow_random=True, window_seconds=WINDOW_S, labels={"etude_a": [0.1] * 19}, encoder_config=MuQEncoderConfig.tiny())


def test_mel_filterbank_matches_librosa_htk() -> None:
    import librosa

    expected = librosa.filters.mel(sr=24000, n_fft=2048, n_mels=128, htk=True, norm=None).T
    np.testing.assert_allclose(mel_filterbank(24000, 2048, 128).numpy(), expected, atol=1e-6)


def test_window_length_must_be_whole_frames(clip_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ExtractionError, match="window_seconds 0.01"):
        extract(clip_dir, tmp_path / "c", allow_random=True, window_seconds=0.01)
