"""`pianoray search --experiment A1 --trials 2`: Round 1 over A1's configurations alone, no Round 2, and the best
written as a YAML overlay that a config can ``extends:``."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import yaml

from pianoray.config import load_config
from tests.protocol.conftest import CLI, E2E_YAML, REPO

pytestmark = pytest.mark.slow


def test_search_one_experiment_writes_its_best_configuration(tmp_path: Path, e2e_data: Path) -> None:
    config = tmp_path / "search.yaml"
    config.write_text(yaml.safe_dump({
        "extends": str(E2E_YAML), "name": "e2e",
        "experiments": {"A1": {"search": {"configs": 4, "space": {
            "optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
            "model.lora.rank": {"type": "int", "low": 4, "high": 16}}}}},
    }))
    out = tmp_path / "A1.best.yaml"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "160"}
    env.pop("PIANORAY_REQUIRE_DATA", None)
    args = ["search", "--experiment", "A1", "--trials", "2", "--config", str(config), "--data", str(e2e_data),
            "--storage", str(tmp_path / "runs"), "--out", str(out)]
    done = subprocess.run(CLI + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert f"wrote {out}" in done.stdout.replace("\n", "")

    report = subprocess.run(CLI + ["report", "--storage", str(tmp_path / "runs" / "e2e-search-A1"), "--json"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-4000:]
    results = json.loads(report.stdout)
    (row,) = results["experiments"]  # A1 alone: no other experiment ran, no configuration has a row of its own
    assert row["name"] == "A1" and row["furthest_round"] == "round1"
    configs = row["search"]["configs"]
    assert [c["id"] for c in configs] == ["A1.c0", "A1.c1"]  # --trials 2 of the config's 4
    assert {d["experiment"] for d in results["decisions"]} == {"A1.c0", "A1.c1"}
    assert not [r for r in results["rounds"] if r["round"] == "round2"]
    best = next(c for c in configs if c["id"] == row["search"]["best"])
    assert best["state"] == "complete"

    # The overlay: A1's searched fields, nested, which a config extends
    assert yaml.safe_load(out.read_text()) == {"experiments": {"A1": {
        "optim": {"lr": best["params"]["optim.lr"]}, "model": {"lora": {"rank": best["params"]["model.lora.rank"]}}}}}
    child = tmp_path / "child.yaml"
    child.write_text(f"extends: {out}\nexperiments:\n  A1: {{model: {{lora: {{alpha: 8}}}}}}\n")
    cfg = load_config(child)
    assert cfg.experiments["A1"].model["lora"] == {"rank": best["params"]["model.lora.rank"], "alpha": 8}
    assert cfg.optim_for("A1").lr == best["params"]["optim.lr"]
