"""The models' shared fixture: a small demo corpus with its symbolic cache, built once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from pianoray.config import load_config

DEMO_YAML = Path(__file__).resolve().parents[2] / "experiments" / "demo.yaml"
# The winners a fusion module is built over in tests: two demo encoders that build fast (untrained weights).
FUSED = {"audio": {"encoder": "audio-frozen"}, "symbolic": {"encoder": "symbolic-features"}}


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory):
    """A small demo corpus with its symbolic cache, and its ExperimentData."""
    from pianoray.training.data import ExperimentData
    from pianoray.validation import prepare_data

    root = tmp_path_factory.mktemp("contract-demo")
    cfg = load_config(DEMO_YAML, {"data": {"root": str(root), "demo": {"seed": 3, "scale": 0.25},
                                           "max_notes": 64, "max_frames": 16}})
    prepare_data(cfg)
    return cfg, ExperimentData.from_config(cfg)
