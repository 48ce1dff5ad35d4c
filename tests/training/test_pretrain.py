"""Pretraining data: piece/performer groups of MIDI files and cross-performer batches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pianoray.training.pretrain import _batches, grouped_order, rendition_groups


def test_rendition_groups_from_manifest_names_and_folders() -> None:
    files = [
        Path("/a/asap/Bach/Fugue/bwv_846/ChenC01.mid"),
        Path("/a/asap/Bach/Fugue/bwv_846/midi_score.mid"),  # a score: no group
        Path("/a/asap/Bach/Fugue/bwv_846/KimY02.mid"),
        Path("/a/asap/Bach/Fugue/bwv_848/ChenC01.mid"),  # same stem, other piece: another rendition
        Path("/a/pp/Beethoven_WoO80_thema_8bars_11_1.mid"),  # PercePiano: passage ..._8bars_1, player 11
        Path("/a/pp/Beethoven_WoO80_thema_8bars_14_1.mid"),
        Path("/a/pp/Beethoven_WoO80_thema_8bars_11_2.mid"),  # player 11, another passage
        Path("/a/demo/perf007.mid"),  # known from a corpus manifest
        Path("/a/demo/perf009.mid"),
    ]
    known = {files[7]: ("passage-3", "perf-a"), files[8]: ("passage-3", "perf-b")}
    piece, performer = rendition_groups(files, known)
    assert piece.tolist() == [0, -1, 0, 1, 2, 2, 3, 4, 4]
    assert performer[1] == -1
    assert len({performer[i] for i in (0, 2, 3)}) == 3
    assert performer[4] == performer[6] != performer[5]  # the same PercePiano player in two passages
    assert performer[7] != performer[8]


def test_grouped_order_pairs_different_performers_of_a_piece() -> None:
    piece = np.array([0, 0, 0, 1, 1, 2, -1, 3, 3, 0])
    performer = np.array([0, 1, 2, 3, 3, 4, 5, 6, 7, 1])  # piece 1: one performer twice -> no pair
    order = grouped_order(piece, performer, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(len(piece)))
    pairs = []
    for a, b in zip(order[0::2], order[1::2]):
        if piece[a] == piece[b] >= 0 and performer[a] != performer[b]:
            pairs.append((a, b))
        else:
            break
    # piece 0 (4 renditions, performers 0,1,2,1) gives 2 pairs, piece 3 gives 1: all up front.
    assert len(pairs) == 3
    assert {int(piece[a]) for a, _ in pairs} == {0, 3}


def test_batches_carry_piece_and_performer_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    from pianoray.data import views

    scalar = views.View("_test_scalar", lambda ctx: 0, lambda items: {"x": np.array(items)}, needs="perf_midi")
    monkeypatch.setitem(views._VIEWS, "_test_scalar", scalar)
    samples = [{"_test_scalar": i, "_file": i} for i in range(6)]
    groups = (np.array([0, 0, 1, 1, -1, 2]), np.array([0, 1, 2, 3, 4, 5]))
    batches = list(_batches(samples, ("_test_scalar",), 2, np.random.default_rng(0), groups, grouped=True))
    assert [b["piece"].tolist()[0] == b["piece"].tolist()[1] for b in batches[:2]] == [True, True]
    assert sorted(int(i) for b in batches for i in b["x"]) == list(range(6))
    with pytest.raises(ValueError, match="even"):
        next(_batches(samples, ("_test_scalar",), 3, np.random.default_rng(0), groups, grouped=True))
