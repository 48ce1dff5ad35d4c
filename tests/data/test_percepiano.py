"""PercePiano loader: name parsing (piece names with underscores, zero-padded segments, a leading space),
mismatch reporting, and the real subset (961 segments, 79 passages, labels in [0, 1])."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from pianoray.data.midi import file_sha256
from pianoray.data.percepiano import (
    LABEL_FILE,
    PERCEPIANO_DIMS,
    PERFORMANCE_DIR,
    SCORE_DIR,
    PercePianoError,
    find_mismatches,
    labels_matrix,
    load_percepiano,
    parse_segment_name,
)


def test_parse_from_the_right_keeps_underscores_in_the_piece():
    n = parse_segment_name("Schubert_D935_no.3_4bars_2_1")
    assert (n.piece, n.n_bars, n.performer, n.segment) == ("Schubert_D935_no.3", 4, "2", 1)
    assert n.passage == "Schubert_D935_no.3_4bars_1"
    n = parse_segment_name("Beethoven_WoO80_thema_8bars_Score2_1.mid")
    assert (n.piece, n.performer) == ("Beethoven_WoO80_thema", "Score2")


def test_parse_strips_a_leading_space_and_keeps_zero_padding():
    n = parse_segment_name(" Schubert_D960_mv2_16bars_0_01.mid")
    assert n.segment_id == "Schubert_D960_mv2_16bars_0_01"
    assert n.passage == "Schubert_D960_mv2_16bars_01" and n.segment == 1


@pytest.mark.parametrize("bad", ["Beethoven_thema_1", "x_8bars_1", "x_bars_1_1", ""])
def test_parse_rejects_malformed_names(bad):
    with pytest.raises(PercePianoError, match="not a PercePiano segment name"):
        parse_segment_name(bad)


def _tiny_copy(src: Path, dst: Path, stems: list[str], extra_labels: dict | None = None) -> Path:
    """A small PercePiano folder with the given real segments (and their score renderings)."""
    (dst / PERFORMANCE_DIR).mkdir(parents=True)
    (dst / SCORE_DIR).mkdir()
    labels = json.loads((src / LABEL_FILE).read_text())
    for f in (src / PERFORMANCE_DIR).iterdir():
        if f.name.strip()[:-4] in stems:
            shutil.copy(f, dst / PERFORMANCE_DIR / f.name)
    for f in (src / SCORE_DIR).iterdir():
        shutil.copy(f, dst / SCORE_DIR / f.name)
    sub = {k: labels[k] for k in stems}
    sub.update(extra_labels or {})
    (dst / LABEL_FILE).write_text(json.dumps(sub))
    return dst


STEMS = ["Schubert_D935_no.3_4bars_2_1", "Schubert_D935_no.3_4bars_Score_1", "Beethoven_WoO80_thema_8bars_11_1"]


def test_tiny_copy_with_the_space_quirk(percepiano_dir, tmp_path):
    root = _tiny_copy(percepiano_dir, tmp_path / "pp", STEMS)
    assert (root / PERFORMANCE_DIR / " Schubert_D935_no.3_4bars_2_1.mid").is_file()
    df = load_percepiano(root)
    assert list(df.segment_id) == sorted(STEMS)
    row = df.set_index("segment_id").loc["Schubert_D935_no.3_4bars_2_1"]
    assert row.perf_midi.endswith(" Schubert_D935_no.3_4bars_2_1.mid")
    assert row.perf_midi_sha == file_sha256(row.perf_midi)
    assert row.score_midi.endswith("score_midi/Schubert_D935_no.3_4bars_Score_1.mid")
    assert row.passage == "Schubert_D935_no.3_4bars_1" and row.pianist == 9
    assert not df.attrs["mismatches"]


def test_mismatches_raise_or_drop(percepiano_dir, tmp_path):
    ghost = {"Schubert_D935_no.3_4bars_99_1": [0.5] * 19 + [3]}
    root = _tiny_copy(percepiano_dir, tmp_path / "pp", STEMS, extra_labels=ghost)
    (root / PERFORMANCE_DIR / "Schubert_D935_no.3_4bars_77_1.mid").write_bytes(b"MThd")
    with pytest.raises(PercePianoError) as e:
        load_percepiano(root)
    assert "label key without data: Schubert_D935_no.3_4bars_99_1" in str(e.value)
    assert "data without labels" in str(e.value) and "_77_1.mid" in str(e.value)
    df = load_percepiano(root, on_mismatch="drop")
    assert len(df) == 3
    mm = find_mismatches(root)
    assert mm.labels_without_files == ["Schubert_D935_no.3_4bars_99_1"]
    assert [Path(p).name for p in mm.files_without_labels] == ["Schubert_D935_no.3_4bars_77_1.mid"]
    assert df.attrs["mismatches"] == mm


@pytest.mark.parametrize(
    "value, match",
    [([0.5] * 19, "20 numbers"), ([1.5] + [0.5] * 18 + [1], r"\[0, 1\]"), ([0.5] * 19 + [1.5], "integer")],
)
def test_bad_label_values_name_file_and_key(percepiano_dir, tmp_path, value, match):
    root = _tiny_copy(percepiano_dir, tmp_path / "pp", STEMS)
    labels = json.loads((root / LABEL_FILE).read_text())
    labels[STEMS[0]] = value
    (root / LABEL_FILE).write_text(json.dumps(labels))
    with pytest.raises(PercePianoError, match=match) as e:
        load_percepiano(root)
    assert LABEL_FILE in str(e.value) and STEMS[0] in str(e.value)


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(PercePianoError, match="nope"):
        load_percepiano(tmp_path / "nope")


def test_real_subset(percepiano_dir):
    df = load_percepiano(percepiano_dir)
    assert len(df) == 961 and df.segment_id.is_unique
    assert not df.attrs["mismatches"]
    assert df.passage.nunique() == 79
    x = labels_matrix(df)
    assert x.shape == (961, len(PERCEPIANO_DIMS)) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Every passage has a score rendering named after it; it is (almost always, 78 of 79 here) the very
    # file the "Score" player was rated on.
    assert df.score_midi.notna().all()
    expected = df.apply(lambda r: r.passage.replace(f"_{r.n_bars}bars_", f"_{r.n_bars}bars_Score_") + ".mid", axis=1)
    assert (df.score_midi.map(lambda p: Path(p).name) == expected).all()
    score_rows = df[df.performer == "Score"]
    assert len(score_rows) == 79
    assert (score_rows.perf_midi_sha == score_rows.score_midi_sha).sum() >= 78
    assert set(df.performer) >= {"Score", "Score2", "0", "26"}
    # The pianist index is a property of the player.
    assert (df.groupby("performer").pianist.nunique() == 1).all()
    assert df.perf_midi.map(lambda p: Path(p).is_absolute() and Path(p).is_file()).all()


def test_stray_file_is_named(percepiano_dir, tmp_path):
    root = _tiny_copy(percepiano_dir, tmp_path / "pp", STEMS)
    (root / PERFORMANCE_DIR / "notes.mid").write_bytes(b"MThd")
    with pytest.raises(PercePianoError, match=r"all_2rounds: 'notes.mid': not a PercePiano segment name"):
        load_percepiano(root)
