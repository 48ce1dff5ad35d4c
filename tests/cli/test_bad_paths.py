"""Paths a new user gets wrong, at every entry point that reads or writes one: a binary file where a YAML goes,
a folder where a file goes, a file where a folder goes, an empty config. Each gives exit 2 and one line naming
the path, no traceback, and leaves nothing half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pianoray.cli import app
from pianoray.settings import PROJECT_ROOT
from tests.cli.test_cli import corpus, demo, one_error  # noqa: F401  (corpus, demo: fixtures)

runner = CliRunner()
DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


@pytest.fixture
def place(tmp_path: Path) -> Path:
    (tmp_path / "binary.yaml").write_bytes(b"\x7fELF\x02\x01\x01\x00" + bytes(range(128, 256)))
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "a-file").write_text("not a folder\n")
    (tmp_path / "a-folder").mkdir()
    return tmp_path


CASES = {
    "cluster check: a binary file": (["cluster", "check", "{p}/binary.yaml"], ["binary.yaml", "not a text"]),
    "cluster check: a folder": (["cluster", "check", "{p}/a-folder"], ["a-folder", "a folder, not a cluster YAML"]),
    "validate: a binary config": (["validate", "--config", "{p}/binary.yaml"], ["binary.yaml", "not a text config"]),
    "validate: a folder as the config": (["validate", "--config", "{p}/a-folder"], ["a-folder", "a folder"]),
    "validate: an empty config": (["validate", "--config", "{p}/empty.yaml"], ["empty.yaml", "the config is empty"]),
    "plan: an empty config": (["plan", "--config", "{p}/empty.yaml"], ["empty.yaml", "the config is empty"]),
    "data demo: --out is a file": (["data", "demo", "--out", "{p}/a-file"], ["a-file"]),
    "data demo: --out under a file": (["data", "demo", "--out", "{p}/a-file/demo"], ["a-file/demo"]),
    "data folds: --out is a folder": (["data", "folds", "--out", "{p}/a-folder", "--data", "{demo}"], ["a-folder"]),
    "run: --storage under a file": (["run", "--config", str(DEMO_YAML), "--storage", "{p}/a-file/runs"],
                                    ["a-file/runs"]),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_a_bad_path_gives_one_line_naming_it(case: str, place: Path, demo: Path) -> None:  # noqa: F811
    args, needles = CASES[case]
    before = sorted(p.relative_to(place) for p in place.rglob("*"))
    result = runner.invoke(app, [a.format(p=place, demo=demo) for a in args])
    one_error(result, *needles)
    assert sorted(p.relative_to(place) for p in place.rglob("*")) == before, "something was written"
    assert (place / "a-file").read_text() == "not a folder\n"


def test_data_symbolic_on_a_folder_where_no_midi_can_be_used(tmp_path: Path) -> None:
    """Not a cache to go on with: exit 2, one line naming the folder and the first file's reason."""
    (tmp_path / "midi").mkdir()
    (tmp_path / "midi" / "a.mid").write_bytes(b"MThd not midi at all")
    (tmp_path / "midi" / "b.mid").write_bytes(b"")
    result = runner.invoke(app, ["data", "symbolic", "--midi", str(tmp_path / "midi"), "--out", str(tmp_path / "c")])
    one_error(result, str(tmp_path / "midi"), "none of its 2 MIDI files could be used", "a.mid")


def test_an_out_of_range_or_nan_rating_names_the_labels_file(corpus: Path) -> None:  # noqa: F811
    path = corpus / "labels" / "percepiano19.json"
    labels = json.loads(path.read_text())
    first = sorted(labels)[0]
    labels[first] = [1.5] + labels[first][1:]
    path.write_text(json.dumps(labels))
    one_error(runner.invoke(app, ["validate", "--config", str(DEMO_YAML), "--data", str(corpus)]),
              str(path), repr(first), "[0, 1]")
    labels[first] = [float("nan")] + labels[first][1:]
    path.write_text(json.dumps(labels))  # json writes NaN, and reads it back
    one_error(runner.invoke(app, ["validate", "--config", str(DEMO_YAML), "--data", str(corpus)]),
              str(path), repr(first))


def test_a_damaged_symbolic_cache_record_is_named(tmp_path: Path) -> None:
    from tests.data.symbolic.test_cache import make_midis

    make_midis(tmp_path / "midi", 2)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "cache.json").write_text('{"format_version": ')
    result = runner.invoke(app, ["data", "symbolic", "--midi", str(tmp_path / "midi"), "--out", str(tmp_path / "cache")])
    one_error(result, str(tmp_path / "cache" / "cache.json"), "not valid JSON at line 1")
