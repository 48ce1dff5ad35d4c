"""Composite labels and label sets: known values, labels.json round trip, the real PercePiano subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pianoray.data.labels import (
    LabelError,
    build_composite_labels,
    label_set,
    read_labels_json,
    write_labels_json,
)
from pianoray.data.percepiano import PERCEPIANO_DIMS, load_percepiano
from pianoray.data.taxonomy import Taxonomy


@pytest.fixture
def tiny_tax():
    return Taxonomy.from_dict({"version": 1, "name": "t", "dimensions": [
        {"name": "clean_pedal", "definition": "d", "percepiano_weights": {"Pedal_Clean_Blurred": -1}},
        {"name": "range", "definition": "d", "percepiano_weights": {
            "Dynamic_Little_dynamic_range_Large_dynamic_range": 1, "Timbre_Even_Colorful": 1}},
    ]})


def _labels(**dims):
    x = np.full(19, 0.5, dtype=np.float32)
    for name, v in dims.items():
        x[PERCEPIANO_DIMS.index(name)] = v
    return x


def test_build_composite_known_values(tiny_tax):
    labels19 = {
        "b": _labels(Pedal_Clean_Blurred=0.9, Timbre_Even_Colorful=0.0,
                     Dynamic_Little_dynamic_range_Large_dynamic_range=1.0),
        "a": _labels(Pedal_Clean_Blurred=0.0),
    }
    out = build_composite_labels(labels19, tiny_tax)
    assert list(out) == ["a", "b"]
    assert out["a"] == pytest.approx({"clean_pedal": 1.0, "range": 0.5})
    assert out["b"] == pytest.approx({"clean_pedal": 0.1, "range": 0.5})


def test_labels_json_round_trip(tiny_tax, tmp_path):
    labels = build_composite_labels({"s1": _labels(), "s2": _labels(Pedal_Clean_Blurred=0.25)}, tiny_tax)
    path = tmp_path / "out" / "labels.json"
    write_labels_json(path, labels)
    back = read_labels_json(path, tiny_tax.names)
    np.testing.assert_allclose(back["s2"], [0.75, 0.5])
    assert json.loads(path.read_text()) == labels
    assert [p.name for p in path.parent.iterdir()] == ["labels.json"]


@pytest.mark.parametrize(
    "payload, match",
    [({"s": {"a": 1.5}}, r"'s': values must lie in \[0, 1\]"), ({"s": {"a": 0.1}, "t": {"b": 0.1}}, "differ"),
     ({"s": [0.1]}, "expected an object")],
)
def test_read_labels_json_errors_name_file_and_segment(tmp_path, payload, match):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps(payload))
    with pytest.raises(LabelError, match=match) as e:
        read_labels_json(path)
    assert str(path) in str(e.value)


def test_label_set_kinds(tiny_tax):
    labels19 = {"x": _labels(Pedal_Clean_Blurred=0.2)}
    names, values = label_set("percepiano19", labels19)
    assert names == list(PERCEPIANO_DIMS) and values["x"].shape == (19,) and values["x"].dtype == np.float32
    names, values = label_set("composite", labels19, tiny_tax)
    assert names == ["clean_pedal", "range"]
    np.testing.assert_allclose(values["x"], [0.8, 0.5], atol=1e-6)
    names, _ = label_set("composite", labels19)  # default taxonomy
    assert len(names) == 6
    with pytest.raises(ValueError, match="label kind"):
        label_set("raw", labels19)


def test_bad_ratings_name_the_segment(tiny_tax):
    with pytest.raises(LabelError, match="'bad'.*19"):
        build_composite_labels({"bad": np.zeros(18)}, tiny_tax)
    with pytest.raises(LabelError, match="'bad'.*0, 1"):
        label_set("percepiano19", {"bad": np.full(19, 2.0)})


def test_real_composite_labels_for_every_segment(percepiano_dir):
    df = load_percepiano(percepiano_dir, hash_files=False)
    labels19 = dict(zip(df.segment_id, df.labels19))
    out = build_composite_labels(labels19, Taxonomy.default())
    assert len(out) == 961
    values = np.array([list(v.values()) for v in out.values()])
    assert values.shape == (961, 6) and values.min() >= 0.0 and values.max() <= 1.0
    # the composites vary between performances (they are not collapsed by opposing signs)
    assert (values.std(axis=0) > 0.05).all()
