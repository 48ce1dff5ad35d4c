"""The command line as a user meets it: every command has --help; `validate` names each problem in one line
with exit code 2 and no traceback; the data commands write what they say."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from pianoray.cli import app
from pianoray.data.demo import generate_demo
from pianoray.settings import PROJECT_ROOT

runner = CliRunner()
DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_demo(tmp_path_factory.mktemp("demo") / "d", seed=3, scale=0.3)


@pytest.fixture
def corpus(demo: Path, tmp_path: Path) -> Path:
    """A private copy of the demo, for tests that break it."""
    out = tmp_path / "corpus"
    shutil.copytree(demo, out)
    return out


def validate(data: Path, config: Path = DEMO_YAML):
    return runner.invoke(app, ["validate", "--config", str(config), "--data", str(data)])


def one_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    lines = [l for l in result.output.splitlines() if l.startswith("error:")]
    assert any(all(n in l for n in needles) for l in lines), result.output


COMMANDS = [[], ["data"], ["data", "demo"], ["data", "folds"], ["data", "labels"], ["data", "symbolic"],
            ["validate"], ["train"], ["run"], ["status"], ["report"], ["experiments"], ["cluster"],
            ["cluster", "check"], ["pretrain"], ["plan"], ["extract"], ["export"], ["evaluate"], ["predict"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_every_command_has_help(cmd: list[str]) -> None:
    r = runner.invoke(app, [*cmd, "--help"])
    assert r.exit_code == 0 and "Usage" in r.output, r.output


def test_demo_validates(demo: Path) -> None:
    r = validate(demo)
    assert r.exit_code == 0, r.output
    assert "valid" in r.output


def test_missing_data_root(tmp_path: Path) -> None:
    one_error(validate(tmp_path / "nowhere"), "data.root", "nowhere")


def test_unknown_and_ill_typed_config_fields(tmp_path: Path, demo: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"extends: {DEMO_YAML}\nround1: {{gap: ten, rungz: [1]}}\n")
    r = validate(demo, bad)
    one_error(r, str(bad), "round1.gap")
    one_error(r, str(bad), "round1.rungz")


def test_nan_frames(corpus: Path) -> None:
    shard = corpus / "T1" / "frames-00000.npy"
    a = np.load(shard, mmap_mode="r+")
    a[3, 5] = np.nan
    a.flush()
    del a
    one_error(validate(corpus), "frames-00000.npy", "NaN")


def test_wrong_width_frames(corpus: Path) -> None:
    shard = corpus / "T2" / "frames-00000.npy"
    a = np.load(shard)
    np.save(shard, np.zeros((a.shape[0], a.shape[1] + 1), dtype=np.float16))
    one_error(validate(corpus), "frames-00000.npy", "width")


def test_corrupt_midi(corpus: Path) -> None:
    m = pd.read_parquet(corpus / "T1" / "manifest.parquet")
    target = corpus / m["perf_midi"].iloc[0]
    target.write_bytes(b"MThd garbage")
    one_error(validate(corpus), target.name)


def test_label_keys_without_data_and_data_without_labels(corpus: Path) -> None:
    path = corpus / "labels" / "percepiano19.json"
    labels = json.loads(path.read_text())
    dropped = sorted(labels)[0]
    labels.pop(dropped)
    labels["ghost_segment"] = [0.5] * 19
    path.write_text(json.dumps(labels))
    r = validate(corpus)
    one_error(r, "label key without data", "ghost_segment")
    one_error(r, "data without labels", dropped)


def test_empty_tier(corpus: Path) -> None:
    path = corpus / "T3" / "manifest.parquet"
    pd.read_parquet(path).head(0).to_parquet(path)
    one_error(validate(corpus), "T3")


def test_folds_that_split_a_passage(corpus: Path, tmp_path: Path) -> None:
    m = pd.read_parquet(corpus / "T1" / "manifest.parquet")
    out = tmp_path / "folds.json"
    assert runner.invoke(app, ["data", "folds", "--data", str(corpus), "--out", str(out)]).exit_code == 0
    folds = json.loads(out.read_text())
    # move one segment of a passage into another fold's test set: the passage is now split
    passage = m.set_index("segment_id")["passage"]
    moved = folds["folds"][0]["test"].pop()
    folds["folds"][1]["test"].append(moved)
    out.write_text(json.dumps(folds))
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"extends: {DEMO_YAML}\ndata: {{folds: {out}}}\n")
    one_error(validate(corpus, cfg), "data.folds", passage[moved])


def test_frames_encoder_on_a_corpus_without_frames(tmp_path: Path, percepiano_dir: Path) -> None:
    cfg = tmp_path / "p.yaml"
    cfg.write_text(f"extends: {PROJECT_ROOT / 'experiments' / 'percepiano.yaml'}\n"
                   "experiments: {audio-frozen: {enabled: true}}\n")
    r = runner.invoke(app, ["validate", "--config", str(cfg), "--data", str(percepiano_dir)])
    one_error(r, "experiments.audio-frozen", "frames")


def test_folds_on_real_percepiano(tmp_path: Path, percepiano_dir: Path) -> None:
    out = tmp_path / "f.json"
    r = runner.invoke(app, ["data", "folds", "--percepiano", str(percepiano_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "45 groups over 79 passages" in r.output and "largest music group" in r.output
    folds = json.loads(out.read_text())
    assert folds["k"] == 4 and folds["unit"] == "music" and len(folds["folds"]) == 4
    passages_of = folds["music_groups"]
    assert sum(map(len, passages_of.values())) == 79 and max(map(len, passages_of.values())) == 11
    fold_of = {}
    for i, f in enumerate(folds["folds"]):
        for key in f["test"]:
            group = folds["groups"][key]
            assert fold_of.setdefault(group, i) == i, f"music group {group} in two folds"


def _real_folds_config(tmp_path: Path, percepiano_dir: Path, unit: str) -> Path:
    out = tmp_path / f"{unit}.json"
    r = runner.invoke(app, ["data", "folds", "--percepiano", str(percepiano_dir), "--out", str(out), "--unit", unit])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / f"{unit}.yaml"
    cfg.write_text(f"extends: {PROJECT_ROOT / 'experiments' / 'percepiano.yaml'}\ndata: {{folds: {out}}}\n")
    return cfg


def test_validate_refuses_passage_folds_that_separate_music(tmp_path: Path, percepiano_dir: Path) -> None:
    cfg = _real_folds_config(tmp_path, percepiano_dir, "passage")
    r = runner.invoke(app, ["validate", "--config", str(cfg), "--data", str(percepiano_dir)])
    # The 16-bar passage and the 8-bar passage cut from it land on different sides: named, in one line.
    one_error(r, "data.folds", "separates music", "Schubert_D960_mv", "16bars", "8bars")
    assert len([l for l in r.output.splitlines() if l.startswith("error:")]) == 1


def test_validate_passes_music_and_performer_folds(tmp_path: Path, percepiano_dir: Path) -> None:
    for unit, note in (("music", "folds by music group"), ("performer", "music is not separated")):
        cfg = _real_folds_config(tmp_path, percepiano_dir, unit)
        r = runner.invoke(app, ["validate", "--config", str(cfg), "--data", str(percepiano_dir)])
        assert r.exit_code == 0, r.output
        assert note in " ".join(r.output.split())


def test_composite_labels_for_every_percepiano_segment(tmp_path: Path, percepiano_dir: Path) -> None:
    out = tmp_path / "labels.json"
    r = runner.invoke(app, ["data", "labels", "--percepiano", str(percepiano_dir), "--out", str(out)])
    assert r.exit_code == 0, r.output
    labels = json.loads(out.read_text())
    assert len(labels) == 961
    assert {len(v) for v in labels.values()} == {6}
    assert all(0 <= x <= 1 for v in labels.values() for x in v.values())


def test_train_json(demo: Path) -> None:
    r = runner.invoke(app, ["train", "--experiment", "audio-frozen", "--fold", "1", "--data", str(demo),
                            "--epochs", "2", "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["experiment"] == "audio-frozen" and out["epochs_run"] == 2
    assert set(out["best"]) >= {"pairwise_accuracy", "r2", "epoch"}
    assert len(out["best"]["pairwise_accuracy"]["per_dim"]) == 6


def test_train_runs_validates_checks_before_it_trains(corpus: Path, tmp_path: Path) -> None:
    """A segment without labels was silently dropped by train; now it is the same one line as validate's,
    before any epoch (no checkpoint folder is made)."""
    path = corpus / "labels" / "percepiano19.json"
    labels = json.loads(path.read_text())
    dropped = sorted(labels)[0]
    labels.pop(dropped)
    path.write_text(json.dumps(labels))
    r = runner.invoke(app, ["train", "--experiment", "symbolic-features", "--data", str(corpus), "--epochs", "1",
                            "--out", str(tmp_path / "ckpt")])
    one_error(r, "data without labels", dropped)
    assert not (tmp_path / "ckpt").exists()


def test_train_unknown_experiment(demo: Path) -> None:
    one_error(runner.invoke(app, ["train", "--experiment", "Z9", "--data", str(demo)]), "--experiment", "Z9")


def test_cluster_check_ships_valid_yamls() -> None:
    for name in ("cluster.yaml", "cluster-gcp.yaml"):
        r = runner.invoke(app, ["cluster", "check", str(PROJECT_ROOT / name)])
        assert r.exit_code == 0, r.output


def test_plan_prints_the_cluster_budget() -> None:
    r = runner.invoke(app, ["plan", "--config", str(PROJECT_ROOT / "experiments" / "protocol.yaml")])
    assert r.exit_code == 0, r.output
    assert "GPU-h" in r.output and "round1" in r.output and "2-4 GPU-h" in r.output


def test_extract_refuses_real_audio_without_a_muq_checkpoint(tmp_path: Path, percepiano_dir: Path) -> None:
    r = runner.invoke(app, ["extract", "--audio", str(percepiano_dir / "examples"), "--out", str(tmp_path / "c")])
    one_error(r, "MuQ checkpoint")
    assert not (tmp_path / "c" / "corpus.json").exists()


def test_status_without_storage_reads_the_plain_runs_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`pianoray run` then `pianoray status`: no --storage needed for the run a plain `run` makes (the default
    config's storage and name); without one there, one line says where it looked."""
    import pianoray.cli as cli
    from pianoray.protocol.storage import RunStorage

    config = tmp_path / "demo.yaml"
    config.write_text(f"extends: {PROJECT_ROOT / 'experiments' / 'demo.yaml'}\nstorage: {tmp_path / 'runs'}\n")
    monkeypatch.setattr(cli, "_default_config", lambda: config)
    r = runner.invoke(app, ["status"])
    assert r.exit_code == 2 and "no pianoray run here" in r.output and "run it first, or give --storage" in r.output
    RunStorage(tmp_path / "runs", "demo").write_json("run.json", {"name": "demo", "config": "demo", "tracks": {}})
    r = runner.invoke(app, ["status", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["run"]["name"] == "demo"
