"""Taxonomy: validation errors name the file and field, normalisation, reversed scales, the shipped default."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pianoray.data.percepiano import PERCEPIANO_DIMS
from pianoray.data.taxonomy import Taxonomy, TaxonomyError

TIMING, ART_LONG, ART_HARD = 0, 1, 2


def _tax(dims):
    return {"version": 1, "name": "t", "dimensions": dims}


def test_reversed_dimension_known_values():
    t = Taxonomy.from_dict(_tax([
        {"name": "steady", "definition": "d", "percepiano_weights": {"Timing_Stable_Unstable": -2.0}},
        {"name": "crisp", "definition": "d", "percepiano_weights": {
            "Articulation_Short_Long": -1.0, "Articulation_Soft_cushioned_Hard_solid": 3.0}},
    ]))
    W, b = t.matrix()
    assert W.shape == (19, 2)
    assert W[TIMING, 0] == -1.0 and b[0] == 1.0  # normalised: steady = 1 - timing
    assert W[ART_LONG, 1] == -0.25 and W[ART_HARD, 1] == 0.75 and b[1] == 0.25
    x = np.full((2, 19), 0.5)
    x[0, TIMING], x[0, ART_LONG], x[0, ART_HARD] = 0.2, 1.0, 0.0  # unstable=0.2 -> steady 0.8
    x[1, TIMING], x[1, ART_LONG], x[1, ART_HARD] = 1.0, 0.0, 1.0
    np.testing.assert_allclose(t.composite(x), [[0.8, 0.0], [0.0, 1.0]], atol=1e-6)
    np.testing.assert_allclose(t.composite(x[0]), [0.8, 0.0], atol=1e-6)  # [19] -> [N]


def test_composites_stay_in_unit_interval_at_the_extremes():
    t = Taxonomy.default()
    corners = np.random.default_rng(0).integers(0, 2, size=(500, 19)).astype(float)
    c = t.composite(corners)
    assert c.min() >= 0.0 and c.max() <= 1.0 and c.shape == (500, 6)


def test_default_taxonomy():
    t = Taxonomy.default()
    assert t.names == ["dynamics", "timing", "pedaling", "articulation", "phrasing", "interpretation"]
    W, b = t.matrix()
    np.testing.assert_allclose(np.abs(W).sum(axis=0), 1.0)
    assert all(d.definition for d in t.dimensions)
    # timing is the reversed Timing_Stable_Unstable scale: stable playing scores high.
    assert W[TIMING, t.names.index("timing")] == -1.0


def test_load_names_file_and_field(tmp_path):
    path = tmp_path / "taxonomy.json"
    path.write_text(json.dumps(_tax([
        {"name": "ok", "definition": "d", "percepiano_weights": {"Timing_Stable_Unstable": 1}},
        {"name": "pedaling", "definition": "d", "percepiano_weights": {"Pedal_Clean_Blured": -1}},
    ])))
    with pytest.raises(TaxonomyError) as e:
        Taxonomy.load(path)
    msg = str(e.value)
    assert str(path) in msg and "dimensions[1] (pedaling).percepiano_weights" in msg
    assert "unknown PercePiano dimension 'Pedal_Clean_Blured'" in msg and "Pedal_Clean_Blurred" in msg


@pytest.mark.parametrize(
    "dims, match",
    [
        ([{"name": "a", "definition": "d", "percepiano_weights": {"Timing_Stable_Unstable": 0.0}}], "non-zero"),
        ([{"name": "a", "definition": "d", "percepiano_weights": {}}], "percepiano_weights"),
        ([{"name": "a", "definition": "d", "percepiano_weights": {"Timing_Stable_Unstable": 1}}] * 2, "twice"),
        ([{"name": "A b", "definition": "d", "percepiano_weights": {"Timing_Stable_Unstable": 1}}], "name"),
        ([{"name": "a", "definition": "d", "weights": {"Timing_Stable_Unstable": 1}}], "weights"),
        ([], "dimensions"),
    ],
)
def test_invalid_taxonomies(dims, match):
    with pytest.raises(TaxonomyError, match=match):
        Taxonomy.from_dict(_tax(dims), source="x.json")


def test_load_missing_and_bad_json(tmp_path):
    with pytest.raises(TaxonomyError, match="not found"):
        Taxonomy.load(tmp_path / "none.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(TaxonomyError, match="bad.json: not valid JSON"):
        Taxonomy.load(tmp_path / "bad.json")


def test_save_round_trip(tmp_path):
    t = Taxonomy.default()
    t.save(tmp_path / "t.json")
    assert Taxonomy.load(tmp_path / "t.json") == t


def test_composite_checks_width():
    with pytest.raises(ValueError, match="19"):
        Taxonomy.default().composite(np.zeros((3, 18)))


def test_every_default_weight_names_a_percepiano_dimension():
    for d in Taxonomy.default().dimensions:
        assert set(d.percepiano_weights) <= set(PERCEPIANO_DIMS)
