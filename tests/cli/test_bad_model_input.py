"""Bad input to what comes after a run: ``export`` (no run, a run that has not finished), ``evaluate`` (a folder
that is no model, another schema's model, a folder that is no dataset) and ``predict`` (corrupt, note-less or
non-MIDI files, empty folders, missing paths). Each case: exit 2, one ``error:`` line naming the culprit, no
traceback, nothing written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pianoray.cli import app
from pianoray.config import load_config
from pianoray.inference.artifact import MANIFEST_FILE, artifact_parts, fold_members, write_artifact
from pianoray.settings import PROJECT_ROOT
from pianoray.training.data import ExperimentData
from pianoray.training.loop import build_model
from tests.cli.test_cli import demo, one_error  # noqa: F401  (demo: a fixture)

runner = CliRunner()
DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


@pytest.fixture(scope="module")
def model(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    """An S3 artifact (random weights) of the demo corpus."""
    cfg = load_config(DEMO_YAML, {"data": {"root": str(demo)},
                                  "experiments": {"symbolic-gbm": {"model": {"max_iter": 20}}}})
    data = ExperimentData.from_config(cfg)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("model") / "m"
    members = fold_members(data, {0: build_model(cfg, "S3", data).state_dict()})
    write_artifact(out, artifact_parts(cfg, "S3", data, members))
    return out


@pytest.fixture
def place(tmp_path: Path, model: Path) -> Path:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not music\n")
    (tmp_path / "corrupt.mid").write_bytes(b"MThd junk")
    (tmp_path / "silent.mid").write_bytes(  # a valid MIDI file with one track and no notes
        b"MThd\x00\x00\x00\x06\x00\x00\x00\x01\x01\xe0MTrk\x00\x00\x00\x04\x00\xff\x2f\x00")
    (tmp_path / "half-run").mkdir()
    (tmp_path / "half-run" / "run.json").write_text(json.dumps({"name": "half-run"}))
    old = tmp_path / "old-model"
    shutil.copytree(model, old)
    manifest = json.loads((old / MANIFEST_FILE).read_text())
    (old / MANIFEST_FILE).write_text(json.dumps({**manifest, "schema_version": 0}))
    return tmp_path


CASES = {
    "export: no run there": (["export", "--storage", "{p}/empty", "--out", "{p}/m"], ["empty", "no pianoray run here"]),
    "export: a run that has not finished": (["export", "--storage", "{p}/half-run", "--out", "{p}/m"],
                                            ["half-run", "has not finished selection"]),
    "evaluate: a folder that is no model": (["evaluate", "--model", "{p}/empty", "--data", "{demo}"],
                                            ["empty", "not a pianoray model"]),
    "evaluate: another schema's model": (["evaluate", "--model", "{p}/old-model", "--data", "{demo}"],
                                         ["old-model", "model artifact schema 0", "reads schema 1"]),
    "evaluate: a folder that is no dataset": (["evaluate", "--model", "{m}", "--data", "{p}/empty"],
                                              ["empty", "not a pianoray cache", "nor a PercePiano folder"]),
    "evaluate: a file as the dataset": (["evaluate", "--model", "{m}", "--data", "{p}/notes.txt"],
                                        ["notes.txt", "must be a dataset folder"]),
    "predict: corrupt MIDI": (["predict", "--model", "{m}", "{p}/corrupt.mid"], ["corrupt.mid", "not a readable MIDI"]),
    "predict: MIDI without notes": (["predict", "--model", "{m}", "{p}/silent.mid"], ["silent.mid", "no notes"]),
    "predict: not a MIDI file": (["predict", "--model", "{m}", "{p}/notes.txt"], ["notes.txt", "not a MIDI file"]),
    "predict: a folder without MIDI": (["predict", "--model", "{m}", "{p}/empty"], ["empty", "no MIDI files here"]),
    "predict: a missing file": (["predict", "--model", "{m}", "{p}/absent.mid"], ["absent.mid", "no such file"]),
    "predict: --json and --csv": (["predict", "--model", "{m}", "--json", "--csv", "{p}/corrupt.mid"],
                                  ["--json and --csv"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input_after_a_run_gives_one_line(case: str, place: Path, model: Path, demo: Path) -> None:  # noqa: F811
    args, needles = CASES[case]
    before = sorted(p.relative_to(place) for p in place.rglob("*"))
    result = runner.invoke(app, [a.format(p=place, m=model, demo=demo) for a in args])
    one_error(result, *needles)
    assert sorted(p.relative_to(place) for p in place.rglob("*")) == before, "something was written"
