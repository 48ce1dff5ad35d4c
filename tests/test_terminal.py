"""The command line's console: piped to a file, tables keep their cells and rows, lines stay whole."""

from __future__ import annotations

import io

import pytest

from pianoray.protocol.progress import ProgressBoard
from pianoray.terminal import PIPED_WIDTH, console_for


def _board() -> ProgressBoard:
    board = ProgressBoard({"symbolic-features": ("symbolic", "reference"), "A3": ("audio", "candidate")})
    for name in ("symbolic-features", "A3"):
        row = board.row("round2", name, 3)
        row.status, row.epoch, row.budget, row.metric, row.best = "ELIMINATED", 4, 5, 0.71, 0.72
    return board


def test_piped_without_columns_prints_whole_rows(monkeypatch: pytest.MonkeyPatch):
    """Rich assumes 80 columns when stdout is no terminal: the board (about 105 wide) had its names cut to
    "symbo…" and every row wrapped onto two lines. Piped, each row is one line with every cell whole."""
    out = io.StringIO()
    monkeypatch.setattr("sys.stdout", out)
    monkeypatch.delenv("COLUMNS", raising=False)
    console = console_for()
    assert console.width == PIPED_WIDTH
    console.file = out
    console.print(_board().render("pianoray · demo"))
    console.print("a sentence " * 20)
    text = out.getvalue()
    assert "…" not in text
    rows = [line for line in text.splitlines() if "round2" in line]
    assert len(rows) == 2 and "symbolic-features (ref)" in rows[1] and "ELIMINATED" in rows[1]
    assert ("a sentence " * 20).rstrip() in text  # one line, not broken at 80 columns


def test_columns_set_is_obeyed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    monkeypatch.setenv("COLUMNS", "90")
    assert console_for().width == 90
