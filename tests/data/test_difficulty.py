"""PSyllabus difficulty grades: the real file, and errors naming file and piece."""

from __future__ import annotations

import json

import pytest

from pianoray.data.difficulty import (
    DifficultyError,
    load_difficulty,
    load_difficulty_folds,
    load_difficulty_table,
)


def test_real_grades(shared_data):
    path = shared_data / "psyllabus" / "psyllabus_grades_5fold.json"
    grades = load_difficulty(path)
    assert len(grades) == 5334
    assert min(grades.values()) == 0.0 and max(grades.values()) == 10.0
    assert grades["Absil J.Humoresque Op 126 No 3"] == 7.0
    folds = load_difficulty_folds(path)
    assert set(folds.values()) == {0, 1, 2, 3, 4} and set(folds) == set(grades)
    table = load_difficulty_table(path.parent)  # the folder works too
    assert table.n_folds == 5
    assert sum(len(table.fold_pieces(f)) for f in range(5)) == 5334


@pytest.mark.parametrize(
    "payload, match",
    [({"P": {"grade": 11, "test_fold": 0}}, "'P': grade 11 outside 0-10"),
     ({"P": {"test_fold": 0}}, "'P': missing key 'grade'"),
     ({"P": {"grade": "hard", "test_fold": 0}}, "not a number"),
     ({"P": {"grade": 3, "test_fold": -1}}, "test_fold"),
     ([1, 2], "expected an object")],
)
def test_bad_entries_name_file_and_piece(tmp_path, payload, match):
    path = tmp_path / "g.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(DifficultyError, match=match) as e:
        load_difficulty(path)
    assert str(path) in str(e.value)


def test_missing_and_malformed(tmp_path):
    with pytest.raises(DifficultyError, match="not found"):
        load_difficulty(tmp_path / "absent.json")
    (tmp_path / "g.json").write_text("{")
    with pytest.raises(DifficultyError, match="not valid JSON"):
        load_difficulty(tmp_path / "g.json")
