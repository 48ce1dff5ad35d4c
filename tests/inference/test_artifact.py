"""An exported model on the demo corpus: written whole, loaded with its checks, the mean ensemble of its members,
its held-out music scored as unseen beside its reference, and new MIDI ranked within a passage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pianoray.config import load_config
from pianoray.data.demo import generate_demo
from pianoray.data.tiers import Tier
from pianoray.errors import InputError, MissingInputError
from pianoray.inference.artifact import (
    MANIFEST_FILE,
    TOKENIZER_FILE,
    ModelArtifact,
    artifact_parts,
    fold_members,
    write_artifact,
)
from pianoray.inference.assess import PARTS, ROLES, evaluate_artifact
from pianoray.inference.predict import csv_text, predict_inputs
from pianoray.settings import PROJECT_ROOT
from pianoray.training.data import ExperimentData
from pianoray.training.evaluate import predict
from pianoray.training.loop import build_model

DEMO_YAML = PROJECT_ROOT / "experiments" / "demo.yaml"
EXPERIMENT = "S1"  # reads REMI tokens: the tokenizer travels with the model
MEMBERS = (0, 2)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    """(config, data, artifact path, held-out passages): S1 with two members of random weights (what the
    artifact does with weights does not depend on their training), two music groups held out."""
    from pianoray.data.corpus import open_cache

    tmp = tmp_path_factory.mktemp("artifact")
    root = generate_demo(tmp / "demo", seed=3, scale=0.3)
    passages = sorted(set(open_cache(root).manifest(Tier.T1)["passage"]))
    held = passages[:2]
    cfg = load_config(DEMO_YAML, {"data": {"root": str(root), "symbolic_cache": str(root / "symbolic"),
                                           "holdout_groups": held},
                                  "experiments": {"symbolic-gbm": {"model": {"max_iter": 30}}}})
    data = ExperimentData.from_config(cfg)
    states = {}
    for k in MEMBERS:
        torch.manual_seed(k)
        states[k] = build_model(cfg, EXPERIMENT, data).state_dict()
    out = tmp / "model"
    write_artifact(out, artifact_parts(cfg, EXPERIMENT, data, fold_members(data, states), provenance={"run": "test"}))
    return cfg, data, out, held


def test_holdout_groups_are_in_no_fold(exported) -> None:
    cfg, data, _, held = exported
    t1 = data.corpus.manifest(Tier.T1)
    held_ids = set(t1.loc[t1["passage"].isin(held), "segment_id"])
    assert held_ids and set(data.held_out) == held_ids
    for k in range(cfg.data.k):
        assert not held_ids & {s for part in ("train", "val", "test") for s in data.fold(k)[part]}


def test_the_artifact_is_whole_and_is_the_mean_of_its_members(exported) -> None:
    cfg, data, path, _ = exported
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".model")]  # no half-written folder left
    art = ModelArtifact.load(path)
    m = art.manifest
    assert (m.experiment, m.members, m.kind) == (EXPERIMENT, ["fold0", "fold2"], "fold-ensemble")
    assert m.labels.set == "composite" and m.labels.names == data.label_names
    assert m.inputs.views == ["remi"] and (path / TOKENIZER_FILE).is_file() and m.reference.experiment == "symbolic-gbm"
    assert m.fingerprints["available"] and m.fingerprints["n_segments"] == len(data.folds.keys)
    ids = data.fold(0)["test"]
    got = art.predict(data.corpus, ids, data.labels)
    members = []
    for k in MEMBERS:
        torch.manual_seed(k)
        model = build_model(cfg, EXPERIMENT, data).eval()
        members.append(predict(model, data.eval_loader(0, "test", model.encoder.views, cfg.optim.batch_size),
                               torch.device("cpu")))
    assert got.segment_ids == members[0].segment_ids
    assert not np.allclose(members[0].scores, members[1].scores)  # two different members: the mean is a mean
    np.testing.assert_allclose(got.scores, (members[0].scores + members[1].scores) / 2, rtol=1e-5, atol=1e-6)
    mean = (members[0].regression + members[1].regression) / 2
    np.testing.assert_allclose(got.regression, mean, rtol=1e-5, atol=1e-6)


def test_evaluate_splits_held_out_music_as_unseen(exported) -> None:
    _, data, path, held = exported
    result = evaluate_artifact(ModelArtifact.load(path), data.corpus.root, n_boot=50)
    # the documented JSON: {label_set: {part: {role: {pairwise_accuracy, r2, n_segments, n_passages}}}}
    assert list(result) == ["composite"] and list(result["composite"]) == list(PARTS)
    for part in PARTS:
        assert set(result["composite"][part]) == set(ROLES)
        for role in ROLES:
            block = result["composite"][part][role]
            assert set(block) == {"pairwise_accuracy", "r2", "n_segments", "n_passages"}
            for figure in ("pairwise_accuracy", "r2"):
                assert set(block[figure]) == {"mean", "ci", "per_dim"} and len(block[figure]["ci"]) == 2
                assert list(block[figure]["per_dim"]) == data.label_names
    json.dumps(result)  # JSON as it is: no numpy values
    unseen, seen = result["composite"]["unseen"]["model"], result["composite"]["seen"]["model"]
    assert unseen["n_passages"] == len(held) and unseen["n_segments"] == len(data.held_out)
    assert seen["n_segments"] == len(data.folds.keys)
    assert result["composite"]["all"]["model"]["n_segments"] == unseen["n_segments"] + seen["n_segments"]
    # the reference trained on the seen music: far better there than on the unseen music
    ref = result["composite"]
    assert ref["seen"]["reference"]["r2"]["mean"] > ref["unseen"]["reference"]["r2"]["mean"]


def test_predict_ranks_performances_of_one_passage(exported) -> None:
    _, data, path, _ = exported
    t1 = data.corpus.manifest(Tier.T1)
    rows = t1[t1["passage"] == t1["passage"].iloc[0]].head(3)
    files = [data.corpus.path(p) for p in rows["perf_midi"]]
    art = ModelArtifact.load(path)
    together = predict_inputs(art, files, passage="p")
    assert [p.input for p in together] == [str(f) for f in files]
    for d in art.label_names:
        assert sorted(p.ranks[d] for p in together) == ["1/3", "2/3", "3/3"]
    # each score is the ensemble's regression output for that file
    direct = art.predict(data.corpus, list(rows["segment_id"]))
    np.testing.assert_allclose([list(p.scores.values()) for p in together], direct.regression, rtol=1e-5, atol=1e-6)
    assert "first of 3 performances" in " ".join(p.summary() for p in together)
    alone = predict_inputs(art, files[:1])
    assert alone[0].ranks is None and alone[0].passage == Path(files[0]).stem


def _copy(path: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(path, dst)
    return dst


def test_another_schema_or_tokenizer_is_refused_in_one_line(exported, tmp_path: Path) -> None:
    _, _, path, _ = exported
    copy = _copy(path, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "schema_version": 99}))
    with pytest.raises(InputError, match=r"copy: model artifact schema 99; this pianoray .* reads schema 1"):
        ModelArtifact.load(copy)
    (copy / MANIFEST_FILE).write_text(json.dumps({**manifest, "members": "fold0"}))
    with pytest.raises(InputError, match=r"pianoray-model.json: members: "):
        ModelArtifact.load(copy)
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    tok = json.loads((copy / TOKENIZER_FILE).read_text())
    tok["vocab"] = {**tok["vocab"], "Pitch_200": 9999}
    (copy / TOKENIZER_FILE).write_text(json.dumps(tok))
    with pytest.raises(InputError, match="vocabulary differs"):
        ModelArtifact.load(copy)
    with pytest.raises(MissingInputError, match="no such model"):
        ModelArtifact.load(tmp_path / "absent")
    with pytest.raises(InputError, match="not a pianoray model"):
        ModelArtifact.load(tmp_path)


def test_a_cuda_export_loads_on_cpu_with_a_note(exported, tmp_path: Path) -> None:
    _, _, path, _ = exported
    copy = _copy(path, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    here = torch.version.cuda
    manifest["versions"]["cuda"] = None if here else "12.4"
    (copy / MANIFEST_FILE).write_text(json.dumps(manifest))
    art = ModelArtifact.load(copy)
    assert len(art.notes) == 1 and "the weights are the same" in art.notes[0]
    assert len(art.members()) == 2


def test_out_must_be_new_or_a_model(exported, tmp_path: Path) -> None:
    cfg, data, path, _ = exported
    from pianoray.inference.artifact import read_manifest

    one = fold_members(data, {0: build_model(cfg, EXPERIMENT, data).state_dict()})
    parts = artifact_parts(cfg, EXPERIMENT, data, one)
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="--out is a file"):
        write_artifact(tmp_path / "file", parts)
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match="not a pianoray model"):
        write_artifact(tmp_path / "folder", parts)
    replaced = _copy(path, tmp_path)
    write_artifact(replaced, parts)  # an existing model is replaced whole
    assert read_manifest(replaced).members == ["fold0"] and (tmp_path / "file").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "file", "folder"]


def test_refit_trains_one_model_on_the_folds_and_stops_on_fold_0s_inner_validation(exported, tmp_path: Path) -> None:
    from pianoray.inference.refit import refit

    cfg, data, _, _ = exported
    cfg = cfg.model_copy(update={"round2": cfg.round2.model_copy(update={"epochs": 2, "tiers": ["T1"]})})
    member = refit(cfg, "symbolic-features", data)
    first = data.folds.folds[0]
    assert member.name == "refit" and set(member.train) == set(first.train) | set(first.test)
    assert not set(member.train) & set(first.val) and not set(member.train) & set(data.held_out)
    out = tmp_path / "refit"
    write_artifact(out, artifact_parts(cfg, "symbolic-features", data, [member], kind="refit"))
    art = ModelArtifact.load(out)
    assert (art.manifest.kind, art.manifest.members) == ("refit", ["refit"])
    assert art.predict(data.corpus, first.val[:4]).scores.shape == (4, len(data.label_names))
    with pytest.raises(InputError, match="--refit: symbolic-gbm is a fitted model"):
        refit(cfg, "symbolic-gbm", data)


def test_a_model_of_the_19_dimensions_is_also_scored_on_the_composite_set(exported, tmp_path: Path) -> None:
    from pianoray.data.taxonomy import Taxonomy

    cfg, _, _, _ = exported
    cfg19 = cfg.model_copy(update={"data": cfg.data.model_copy(update={"labels": "percepiano19"})})
    data = ExperimentData.from_config(cfg19)
    torch.manual_seed(0)
    members = fold_members(data, {0: build_model(cfg19, "symbolic-features", data).state_dict()})
    write_artifact(tmp_path / "m19", artifact_parts(cfg19, "symbolic-features", data, members))
    art = ModelArtifact.load(tmp_path / "m19")
    assert art.manifest.labels.set == "percepiano19" and art.manifest.labels.taxonomy is not None
    result = evaluate_artifact(art, data.corpus.root, n_boot=20)
    assert list(result) == ["percepiano19", "composite"]
    assert list(result["percepiano19"]["all"]["model"]["r2"]["per_dim"]) == data.label_names
    assert list(result["composite"]["all"]["model"]["r2"]["per_dim"]) == Taxonomy.default().names
    assert result["composite"]["unseen"]["model"]["n_segments"] == len(data.held_out)


def test_predict_on_a_cache_scores_every_segment_and_ranks_within_its_passages(exported) -> None:
    _, data, path, _ = exported
    t1 = data.corpus.manifest(Tier.T1)
    out = predict_inputs(ModelArtifact.load(path), [data.corpus.root])
    assert [p.segment_id for p in out] == list(t1["segment_id"])
    assert all(p.difficulty is None for p in out)  # S1 has no difficulty head: no grade, no column
    assert "difficulty" not in csv_text(out, data.label_names).splitlines()[0]
    sizes = t1.groupby("passage").size()
    for p in out:
        assert p.passage == t1.set_index("segment_id").at[p.segment_id, "passage"]
        n = sizes[p.passage]
        assert p.ranks is None if n == 1 else all(r.endswith(f"/{n}") for r in p.ranks.values())


def test_a_fusion_with_a_difficulty_head_predicts_grades_on_its_corpus_scale(exported, tmp_path: Path) -> None:
    """Round 3's fusions train a difficulty head on grades scaled to [0, 1]; the artifact keeps the corpus's grade
    range and predict turns the members' mean output back into a grade on it (table, CSV, JSON)."""
    from pianoray.data.loaders import grade_range
    from pianoray.training.fusion import fusion_experiment

    cfg, data, _, _ = exported
    exp = fusion_experiment(cfg, "F2", {"audio": "audio-frozen", "symbolic": "symbolic-features"})
    cfg = cfg.model_copy(update={"experiments": {**cfg.experiments, "F2": exp}})
    states = {}
    for k in MEMBERS:
        torch.manual_seed(k)
        states[k] = build_model(cfg, "F2", data).state_dict()
    path = write_artifact(tmp_path / "fusion", artifact_parts(cfg, "F2", data, fold_members(data, states)))
    art = ModelArtifact.load(path)
    lo, hi = grade_range(data.corpus.difficulty)
    assert art.manifest.difficulty_head and art.manifest.difficulty_grades == (lo, hi) and lo < hi
    out = predict_inputs(art, [data.corpus.root])
    ids = [p.segment_id for p in out]
    scaled = np.mean([predict(m, art.loader(data.corpus, ids), art.device).difficulty for m in art.members()], axis=0)
    assert [p.difficulty for p in out] == pytest.approx(list(lo + scaled * (hi - lo)))
    assert all(lo <= p.difficulty <= hi for p in out) and "difficulty grade" in out[0].summary()
    assert csv_text(out, art.label_names).splitlines()[0].endswith(",difficulty")
    assert json.loads(json.dumps(out[0].to_json()))["difficulty"] == pytest.approx(out[0].difficulty)
