"""The public JSON (``report --json``, ``status --json``) against its document and its models.

The end-to-end run (tests/protocol/test_run_e2e.py) validates a real run's output against the same models.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pianoray.protocol import schema
from pianoray.protocol.ledger import Ledger
from pianoray.protocol.storage import RunStorage
from pianoray.protocol.view import build_results

DOC = Path(__file__).resolve().parents[2] / "docs" / "results-schema.md"
# prefix of a documented key -> the model whose fields it lists
SECTIONS: dict[str, type[BaseModel]] = {
    "": schema.ResultsJSON, "run.": schema.RunInfo, "experiments[].": schema.ExperimentRow,
    "decisions[].": schema.DecisionRow, "tracks[].": schema.TrackInfo, "selection.<track>.": schema.TrackSelection,
}


def _documented() -> dict[str, set[str]]:
    keys = re.findall(r"^\| `([^`]+)` \|", DOC.read_text(), flags=re.M)
    out: dict[str, set[str]] = {p: set() for p in SECTIONS}
    for key in keys:
        prefix = max((p for p in SECTIONS if key.startswith(p)), key=len)
        out[prefix].add(key[len(prefix):])
    return out


@pytest.mark.parametrize("prefix", list(SECTIONS))
def test_the_document_and_the_models_list_the_same_keys(prefix: str) -> None:
    assert _documented()[prefix] == set(SECTIONS[prefix].model_fields), prefix or "top level"


def test_the_keys_readers_rely_on_keep_their_names() -> None:
    """Add, never rename: the keys that existed when the schema was first published."""
    assert {"run", "experiments", "decisions", "winners", "selection"} <= set(schema.ResultsJSON.model_fields)
    assert {"name", "track", "role", "status", "furthest_round", "resource_hours"} <= set(
        schema.ExperimentRow.model_fields)
    assert {"round", "rung", "experiment", "decision", "reason", "gap_points"} <= set(schema.DecisionRow.model_fields)
    assert schema.STATUS_KEYS == ("schema_version", "run", "experiments", "decisions", "winners")
    assert schema.SCHEMA_VERSION == 1


def test_an_empty_and_a_partial_run_validate(tmp_path: Path) -> None:
    storage = RunStorage(tmp_path, "run", fsync=False)
    storage.write_json("run.json", {"name": "run", "config": "demo", "dimensions": ["a", "b"],
                                    "tracks": {"S2": ["symbolic", "candidate"]},
                                    "track_specs": [{"name": "symbolic", "order": 1, "robustness_veto": False,
                                                     "metrics": ["difficulty_rho"]}]})
    ledger = Ledger(storage)
    empty = build_results(ledger)
    schema.ResultsJSON.model_validate(empty)
    assert empty["winners"] == {"symbolic": None} and empty["schema_version"] == schema.SCHEMA_VERSION

    ledger.round_started("round1", {"S2": {"track": "symbolic", "role": "candidate"}})
    for ep in (1, 2):
        ledger.epoch("round1", "S2", 0, ep, {"val/pairwise_accuracy": 0.6 + ep / 100, "rung_epoch": ep})
    ledger.decision({"round": "round1", "rung": 2, "experiment": "S2", "track": "symbolic", "metric": 0.62,
                     "leader": "S2", "leader_metric": 0.62, "gap_points": 0.0, "decision": "continue",
                     "reason": "leads its track", "rule": "guard", "gap_ci": [-1.0, 1.0], "final": True})
    partial = build_results(ledger)
    schema.ResultsJSON.model_validate(partial)
    schema.StatusJSON.model_validate(schema.status_view(partial))
    (row,) = partial["experiments"]
    assert (row["name"], row["status"], row["round1"]["best_metric"]) == ("S2", "running", 0.62)
