"""Competition (T2) loader: placement scores within a round, ordinal pairs only within a round, errors."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pianoray.data.competition import (
    CompetitionError,
    load_competition_recordings,
    load_competition_segments,
    ordinal_pairs,
    placement_scores,
    t2_manifest,
)


@pytest.fixture(scope="module")
def competition_dir(shared_data):
    return shared_data / "competition"


def test_placement_scores_known_values():
    np.testing.assert_allclose(placement_scores(np.array([1, 7, 2, 7, 4])), [1.0, 0.0, 2 / 3, 0.0, 1 / 3])
    np.testing.assert_allclose(placement_scores(np.array([3, 3])), [0.5, 0.5])


def _toy():
    return pd.DataFrame({
        "segment_id": list("abcdef"),
        "round_id": ["r1", "r1", "r1", "r2", "r2", "solo"],
        "placement": [2, 1, 2, 5, 3, 1],
    })


def test_ordinal_pairs_known_values():
    pairs = ordinal_pairs(_toy())
    assert sorted(map(tuple, pairs.tolist())) == [(1, 0), (1, 2), (4, 3)]
    assert pairs.dtype == np.int64 and ordinal_pairs(_toy().iloc[:0]).shape == (0, 2)


def test_t2_manifest_scores_within_round_and_drops_missing_embeddings():
    m = t2_manifest(_toy(), {s: ("shard0", i, 10) for i, s in enumerate("abcdf")})
    assert m.attrs["dropped_without_embeddings"] == 1
    assert list(m.segment_id) == list("abcdf")
    assert dict(zip(m.segment_id, m.placement_score)) == {"a": 0.0, "b": 1.0, "c": 0.0, "d": 0.5, "f": 0.5}
    assert list(m.group) == ["r1", "r1", "r1", "r2", "solo"]
    assert list(m.offset) == [0, 1, 2, 3, 4] and (m.n_frames == 10).all()


def test_real_segments(competition_dir):
    df = load_competition_segments(competition_dir)
    assert len(df) == 2293 and df.segment_id.is_unique
    assert set(df.round_id) == {"chopin2021_stage2", "chopin2021_stage3", "chopin2021_final"}
    assert (df.end > df.start).all() and (df.placement >= 1).all()
    m = t2_manifest(df)
    assert m.placement_score.between(0, 1).all() and m.attrs["dropped_without_embeddings"] == 0
    for _, g in m.groupby("round_id"):
        assert g.placement_score.max() == 1.0 and g.placement_score.min() == 0.0
        best = g.placement == g.placement.min()
        assert (g.placement_score[best] == 1.0).all()
    pairs = ordinal_pairs(m)
    assert len(pairs) > 100_000
    rounds, placement = m.round_id.to_numpy(), m.placement.to_numpy()
    assert (rounds[pairs[:, 0]] == rounds[pairs[:, 1]]).all()
    assert (placement[pairs[:, 0]] < placement[pairs[:, 1]]).all()
    assert (m.placement_score.to_numpy()[pairs[:, 0]] > m.placement_score.to_numpy()[pairs[:, 1]]).all()


def test_real_recordings(competition_dir):
    rec = load_competition_recordings(competition_dir)
    assert rec.recording_id.is_unique
    assert {"chopin", "cliburn", "cliburn_amateur", "queen_elisabeth"} <= set(rec.competition)
    assert set(load_competition_segments(competition_dir).recording_id) <= set(rec.recording_id)


def _line(**over):
    row = {"segment_id": "s", "recording_id": "r", "competition": "c", "edition": 2021, "round": "final",
           "placement": 1, "performer": "p", "piece": "x", "segment_start": 0.0, "segment_end": 30.0}
    row.update(over)
    return json.dumps({k: v for k, v in row.items() if v is not None})


@pytest.mark.parametrize(
    "lines, match",
    [([_line(), "{oops"], r"metadata.jsonl:2: malformed JSON"),
     ([_line(placement=None)], r"metadata.jsonl:1: missing key\(s\) \['placement'\]"),
     ([_line(), _line()], "duplicate segment id"),
     ([_line(segment_end=0.0)], "segment_end"),
     ([_line(placement=0)], "placement 0")],
)
def test_bad_metadata_names_file_and_line(tmp_path, lines, match):
    (tmp_path / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(CompetitionError, match=match):
        load_competition_segments(tmp_path)


def test_missing_file(tmp_path):
    with pytest.raises(CompetitionError, match="metadata.jsonl: file not found"):
        load_competition_segments(tmp_path)
    with pytest.raises(CompetitionError, match="no \\*recordings.jsonl"):
        load_competition_recordings(tmp_path)
