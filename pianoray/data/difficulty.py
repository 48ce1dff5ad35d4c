"""PSyllabus piece difficulty (grades 0-10) with its 5-fold test assignment, for the difficulty-rho metric.

File: ``psyllabus/psyllabus_grades_5fold.json`` = {piece title: {"grade": int 0-10, "test_fold": int 0-4}}.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from pianoray.errors import PianorayError

GRADES_FILE = "psyllabus_grades_5fold.json"
GRADE_RANGE = (0.0, 10.0)


class DifficultyError(PianorayError, ValueError):
    """Unusable difficulty data; the message names the file and the piece."""


@dataclass(frozen=True)
class DifficultyTable:
    """grades: piece -> grade (float, 0-10); test_fold: piece -> the fold (0..4) whose test set holds it."""

    grades: dict[str, float]
    test_fold: dict[str, int]

    @property
    def n_folds(self) -> int:
        return len(set(self.test_fold.values()))

    def fold_pieces(self, fold: int) -> list[str]:
        """Pieces in test fold ``fold`` (sorted)."""
        return sorted(p for p, f in self.test_fold.items() if f == fold)


def _resolve(path: str | Path) -> Path:
    path = Path(path)
    return path / GRADES_FILE if path.is_dir() else path


def load_difficulty_table(path: str | Path) -> DifficultyTable:
    """Read the grades file (or a folder holding it); raises DifficultyError naming file and piece."""
    path = _resolve(path)
    if not path.is_file():
        raise DifficultyError(f"{path}: difficulty file not found")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise DifficultyError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(raw, dict):
        raise DifficultyError(f"{path}: expected an object of piece -> {{grade, test_fold}}")
    grades: dict[str, float] = {}
    folds: dict[str, int] = {}
    lo, hi = GRADE_RANGE
    for piece, entry in raw.items():
        where = f"{path}: piece {piece!r}"
        if not isinstance(entry, dict):
            raise DifficultyError(f"{where}: expected an object with grade and test_fold")
        for key in ("grade", "test_fold"):
            if key not in entry:
                raise DifficultyError(f"{where}: missing key {key!r}")
        grade, fold = entry["grade"], entry["test_fold"]
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not math.isfinite(grade):
            raise DifficultyError(f"{where}: grade {grade!r} is not a number")
        if not lo <= grade <= hi:
            raise DifficultyError(f"{where}: grade {grade} outside {lo:g}-{hi:g}")
        if isinstance(fold, bool) or not isinstance(fold, int) or fold < 0:
            raise DifficultyError(f"{where}: test_fold {fold!r} must be a non-negative integer")
        grades[piece] = float(grade)
        folds[piece] = fold
    return DifficultyTable(grades, folds)


def load_difficulty(path: str | Path) -> dict[str, float]:
    """piece -> grade (0-10). The test folds: :func:`load_difficulty_folds` or :func:`load_difficulty_table`."""
    return load_difficulty_table(path).grades


def load_difficulty_folds(path: str | Path) -> dict[str, int]:
    """piece -> test fold (0..4)."""
    return load_difficulty_table(path).test_fold
