"""Bad input as a new user gives it, at every entry point that reads it: paths (a binary file where a YAML goes,
a folder where a file goes, a file where a folder goes, an empty config), broken data (frames, MIDI, labels)
reaching every command that trains, a checkpoint of another experiment, damaged caches. Each case checks exit 2,
one ``error:`` line naming the culprit (no traceback), and that nothing was written or damaged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
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
    (tmp_path / "bad-midi").mkdir()
    (tmp_path / "bad-midi" / "a.mid").write_bytes(b"MThd junk")
    (tmp_path / "audio").mkdir()
    (tmp_path / "audio" / "a.wav").write_bytes(b"RIFF not audio")
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
    "pretrain: no readable MIDI": (["pretrain", "--experiment", "S3", "--data", "{demo}", "--midi", "{p}/bad-midi"],
                                   ["no readable MIDI", "a.mid"]),
    "extract: a MuQ checkpoint that is no checkpoint": (
        ["extract", "--audio", "{p}/audio", "--out", "{p}/frames", "--muq-checkpoint", "{p}/a-file"],
        ["a-file", "not a readable checkpoint"]),
    "extract: --audio is a file": (
        ["extract", "--audio", "{p}/a-file", "--out", "{p}/frames", "--muq-checkpoint", "{p}/a-file"], ["a-file"]),
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


# ---------------------------------------------------------------------- broken data, at every command that trains


def _first_t1_midi(corpus: Path) -> Path:
    return corpus / pd.read_parquet(corpus / "T1" / "manifest.parquet")["perf_midi"].iloc[0]


def _frames(corpus: Path, value: float) -> str:
    shard = corpus / "T1" / "frames-00000.npy"
    a = np.load(shard, mmap_mode="r+")
    a[3, 5] = value
    a.flush()
    return "frames-00000.npy"


def _width(corpus: Path) -> str:
    shard = corpus / "T2" / "frames-00000.npy"
    a = np.load(shard)
    np.save(shard, np.zeros((a.shape[0], a.shape[1] + 1), dtype=np.float16))
    return "frames-00000.npy"


def _midi(corpus: Path, content: bytes) -> str:
    target = _first_t1_midi(corpus)
    target.write_bytes(content)
    return target.name


def _labels(corpus: Path, change) -> str:
    path = corpus / "labels" / "percepiano19.json"
    labels = json.loads(path.read_text())
    first = sorted(labels)[0]
    change(labels, first)
    path.write_text(json.dumps(labels))
    return first


BROKEN = {
    "NaN frames": lambda c: _frames(c, float("nan")),
    "Inf frames": lambda c: _frames(c, float("inf")),
    "frames of the wrong width": _width,
    "a corrupt MIDI file": lambda c: _midi(c, b"MThd garbage"),
    "an empty MIDI file": lambda c: _midi(c, b""),
    "a rating out of range": lambda c: _labels(c, lambda d, k: d.__setitem__(k, [1.5] + d[k][1:])),
    "ratings of the wrong length": lambda c: _labels(c, lambda d, k: d.__setitem__(k, d[k][:18])),
    "a segment without ratings": lambda c: _labels(c, lambda d, k: d.pop(k)),
}
COMMANDS = {
    "validate": lambda c, tmp: ["validate", "--config", str(DEMO_YAML), "--data", str(c)],
    "train": lambda c, tmp: ["train", "--experiment", "audio-frozen", "--data", str(c), "--epochs", "1",
                             "--out", str(tmp / "written")],
    "run": lambda c, tmp: ["run", "--config", str(DEMO_YAML), "--data", str(c), "--storage", str(tmp / "written")],
}


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("broken", list(BROKEN))
def test_broken_data_stops_every_command_before_it_trains(broken: str, command: str, corpus: Path,  # noqa: F811
                                                          tmp_path: Path) -> None:
    culprit = BROKEN[broken](corpus)
    one_error(runner.invoke(app, COMMANDS[command](corpus, tmp_path)), culprit)
    assert not (tmp_path / "written").exists(), "a command wrote before its checks"


def test_resuming_from_a_checkpoint_of_another_experiment_is_refused(demo: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "ckpt"
    args = ["train", "--data", str(demo), "--epochs", "1", "--out", str(out)]
    assert runner.invoke(app, [*args[:1], "--experiment", "audio-frozen", *args[1:]]).exit_code == 0
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    one_error(runner.invoke(app, [*args[:1], "--experiment", "symbolic-features", *args[1:]]),
              str(out / "epoch-0001"), "a checkpoint of experiment 'audio-frozen', not 'symbolic-features'")
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_a_held_out_group_that_is_no_passage_is_named_before_anything_runs(demo: Path, tmp_path: Path) -> None:  # noqa: F811
    from pianoray.data.corpus import open_cache
    from pianoray.data.tiers import Tier

    passage = sorted(open_cache(demo).manifest(Tier.T1)["passage"])[0]
    for groups, run in (([passage, "no_such_passage"], False), ([passage], True)):
        cfg = tmp_path / "holdout.yaml"
        cfg.write_text(f"extends: {DEMO_YAML}\ndata: {{holdout_groups: {json.dumps(groups)}}}\n")
        result = runner.invoke(app, ["validate", "--config", str(cfg), "--data", str(demo)])
        if not run:
            one_error(result, "data.holdout_groups", "[1] 'no_such_passage' is not a passage of")
        else:
            assert result.exit_code == 0, result.output
            assert "data.holdout_groups: 1 music groups" in result.output and "held out of every fold" in result.output
