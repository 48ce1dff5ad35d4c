"""REMI round trip: tokens -> notes keeps every pitch and moves no onset by more than half a step."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pianoray.data.midi import NoteTable, load_notes
from pianoray.data.symbolic.remi import RemiConfig, RemiTokenizer


@pytest.fixture(scope="module")
def tokenizer() -> RemiTokenizer:
    return RemiTokenizer()


def assert_round_trip(tok: RemiTokenizer, notes: NoteTable) -> None:
    back = tok.decode(tok.encode(notes))
    assert len(back) == len(notes)
    # Quantisation is monotone per pitch, so matching notes by (pitch, onset) order pairs them up.
    a, b = np.lexsort((notes.onset, notes.pitch)), np.lexsort((back.onset, back.pitch))
    assert np.array_equal(notes.pitch[a], back.pitch[b])
    assert np.abs(notes.onset[a] - back.onset[b]).max() <= tok.onset_step_s / 2 + 1e-9


def test_vocabulary_and_grid(tokenizer: RemiTokenizer) -> None:
    assert 300 <= tokenizer.vocab_size <= 600
    assert tokenizer.pad_id == 0
    assert tokenizer.onset_step_s == pytest.approx(1 / 48)  # 24 positions per beat at 120 qpm
    vocab = tokenizer.vocab()
    assert sum(k.startswith("Velocity_") for k in vocab) == 32
    assert {"Pedal_0", "PedalOff_0", "Bar_None"} <= set(vocab)
    assert any(k.startswith("Tempo_") for k in vocab)


def test_hand_made_round_trip_with_microtiming_and_pedal(tokenizer: RemiTokenizer) -> None:
    rng = np.random.default_rng(0)
    n = 200
    onset = np.sort(rng.uniform(0, 20, n))  # arbitrary microtiming over 10 bars of clock time
    notes = NoteTable.from_arrays(
        rng.integers(21, 109, n), onset, onset + rng.uniform(0.05, 1.5, n), rng.integers(1, 128, n),
        [[1.0, 3.0], [5.0, 9.5]],
    )
    ids = tokenizer.encode(notes)
    assert ids.dtype == np.int64 and ids.max() < tokenizer.vocab_size
    assert_round_trip(tokenizer, notes)
    back = tokenizer.decode(ids)
    np.testing.assert_allclose(back.pedal_intervals, [[1.0, 3.0], [5.0, 9.5]], atol=tokenizer.onset_step_s)
    # Velocity is binned into 32 levels: each decoded velocity lies within one bin width.
    a, b = np.lexsort((notes.onset, notes.pitch)), np.lexsort((back.onset, back.pitch))
    assert np.abs(notes.velocity[a].astype(int) - back.velocity[b]).max() <= 127 / 32 + 1


def test_save_load(tmp_path: Path, tokenizer: RemiTokenizer) -> None:
    tokenizer.save(tmp_path / "tok.json")
    loaded = RemiTokenizer.load(tmp_path / "tok.json")
    assert loaded.config == tokenizer.config and loaded.vocab_size == tokenizer.vocab_size
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="bad.json"):
        RemiTokenizer.load(tmp_path / "bad.json")


def test_config_rejects_unknown_fields() -> None:
    with pytest.raises(ValueError, match="positions"):
        RemiConfig(positions=12)


def test_real_percepiano_round_trip(tokenizer: RemiTokenizer, percepiano_dir: Path) -> None:
    files = sorted((percepiano_dir / "all_2rounds").glob("*.mid"))[::60] + sorted(
        (percepiano_dir / "score_midi").glob("*.mid")
    )[::20]
    assert len(files) >= 10
    for f in files:
        assert_round_trip(tokenizer, load_notes(f))


def test_token_table_reads_kinds_and_values(tokenizer: RemiTokenizer) -> None:
    from pianoray.data.symbolic.remi import TOKEN_KINDS

    table, vocab = tokenizer.token_table(), tokenizer.vocab()
    assert len(table.kind) == len(table.value) == len(table.beats) == tokenizer.vocab_size
    kind = {name: TOKEN_KINDS[table.kind[i]] for name, i in vocab.items()}
    assert kind["Bar_None"] == "bar" and kind["PAD_None"] == "special" and kind["Pedal_0"] == "pedal"
    v = lambda name: table.value[vocab[name]]  # noqa: E731
    assert v("Pitch_21") == 0.0 and v("Pitch_108") == 1.0  # the piano range
    assert v("Velocity_55") == pytest.approx(55 / 127)
    # Position_12 of 24 per beat is half a beat into the bar (of 4 beats).
    assert table.beats[vocab["Position_12"]] == 0.5 and v("Position_12") == pytest.approx(0.5 / 4)
    # Durations: log-ticks, monotone, the longest (12 beats) is 1.
    durations = sorted((n for n in vocab if n.startswith("Duration_")),
                       key=lambda n: [int(x) for x in n.split("_")[1].split(".")][0] * 24
                       + int(n.split(".")[1]) * 24 / int(n.split(".")[2]))
    values = [v(n) for n in durations]
    assert values == sorted(values) and values[-1] == 1.0 and table.seconds_per_beat == 0.5
