"""User errors are the project's types and end in one line; anything else is a bug: it keeps its traceback, and
a crashing run leaves a ``crash`` event in its ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from pianoray.cli import user_errors
from pianoray.config import ProtocolConfig
from pianoray.errors import InputError, MissingInputError, PianorayError, UnknownNameError
from pianoray.models import registry
from pianoray.protocol import run as run_module
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.storage import RunStorage


def test_user_errors_end_in_one_line_and_bugs_keep_their_traceback(capsys) -> None:
    for error in (InputError("--fold: must be in [0, 4), got 9"), UnknownNameError("unknown encoder 'S9'"),
                  MissingInputError("/x/y: no such folder")):
        with pytest.raises(typer.Exit) as exit_info, user_errors():
            raise error
        assert exit_info.value.exit_code == 2
    err = capsys.readouterr().err
    assert "unknown encoder 'S9'" in err and "\"unknown" not in err  # a KeyError's message, unquoted
    for bug in (ValueError("shape mismatch"), KeyError("val/r2"), FileNotFoundError("tmp")):
        with pytest.raises(type(bug)), user_errors():
            raise bug


def test_lookup_failures_are_project_errors_that_still_read_as_the_builtin() -> None:
    with pytest.raises(UnknownNameError, match="unknown encoder 'S9'") as info:
        registry.get("S9")
    assert isinstance(info.value, KeyError) and isinstance(info.value, PianorayError)


def _cfg(tmp_path: Path) -> ProtocolConfig:
    return ProtocolConfig.model_validate({"name": "crash", "storage": str(tmp_path),
                                          "experiments": {"audio-frozen": {}}})


def test_a_crashing_run_records_the_crash_and_reraises(tmp_path: Path, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise RuntimeError("a bug deep in the driver")

    monkeypatch.setattr(run_module, "_run", boom)
    with pytest.raises(RuntimeError, match="a bug deep"):
        run_module.run_protocol(_cfg(tmp_path), feedback=None)
    (crash,) = Ledger(RunStorage(tmp_path, "crash")).events("crash")
    assert crash.payload["type"] == "RuntimeError" and "boom" in crash.payload["traceback"]


def test_a_user_error_is_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise InputError("data.root: no corpus here")

    monkeypatch.setattr(run_module, "_run", refuse)
    with pytest.raises(InputError):
        run_module.run_protocol(_cfg(tmp_path), feedback=None)
    assert Ledger(RunStorage(tmp_path, "crash")).events("crash") == []
