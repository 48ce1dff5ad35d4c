"""`pianoray train` on a corpus without a symbolic cache builds it first (as `pianoray run` does), so training
reads stored features instead of the 512-entry in-process memo; and it prints what its pretraining read."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from pianoray.cli import app
from pianoray.data.demo import generate_demo
from pianoray.settings import PROJECT_ROOT


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    return generate_demo(tmp_path / "d", seed=3, scale=0.3)


def test_train_builds_the_symbolic_cache_when_absent(corpus: Path, tmp_path: Path) -> None:
    assert not (corpus / "symbolic" / "cache.json").exists()
    config = tmp_path / "c.yaml"
    config.write_text(f"extends: {PROJECT_ROOT / 'experiments' / 'demo.yaml'}\n"
                      f"pretrain: {{epochs: 1, max_files: 30, max_notes: 64, per_fold: true, cache: {tmp_path / 'pc'}}}\n")
    r = CliRunner().invoke(app, ["train", "--experiment", "S3", "--fold", "1", "--config", str(config),
                                 "--data", str(corpus), "--epochs", "1"])
    assert r.exit_code == 0, r.output
    assert (corpus / "symbolic" / "cache.json").is_file()
    assert "symbolic cache" in r.output and "in-memory memo" not in r.output
    text = " ".join(r.output.split())  # undo the console's wrapping
    assert "S3: self-supervised pretraining did not see the evaluation folds' MIDI (validation/test of fold 1)" in text
