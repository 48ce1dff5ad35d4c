"""Round 3's starting point per fold: a fusion experiment over two winners, and the fusion encoder's state with
each winner's fold-k weights loaded (frozen) and its fusion module initialised under the run's seed; and
``round3.unfreeze_lr``: the winners unfrozen once the frozen fusion plateaus."""

from __future__ import annotations

import pytest
import torch

from pianoray.config import ExperimentConfig, ResourcesConfig
from pianoray.training.checkpoint import TopKSink, read_state
from pianoray.training.fusion import fusion_experiment, initial_state, write_state
from pianoray.training.loop import UNFROZEN, Budget, build_model, fit, seed_everything
from tests.models.conftest import demo  # noqa: F401  (fixture)

WINNERS = {"audio": "audio-frozen", "symbolic": "symbolic-features"}


def with_fusion(cfg, name="F2"):
    cfg = cfg.model_copy(update={"experiments": {
        **cfg.experiments, "audio-frozen": cfg.experiments["audio-frozen"].model_copy(
            update={"resources": ResourcesConfig(cpu=2.0, gpu=0.5)})}})
    exp = fusion_experiment(cfg, name, WINNERS)
    return cfg.model_copy(update={"experiments": {**cfg.experiments, name: exp}}), exp


def test_the_fusion_experiment_names_each_winner_and_takes_the_larger_resources(demo) -> None:  # noqa: F811
    cfg, _ = demo
    cfg, exp = with_fusion(cfg)
    assert isinstance(exp, ExperimentConfig) and exp.encoder == "F2"
    assert exp.model == {"audio": {"encoder": "audio-frozen", "model": dict(cfg.experiments["audio-frozen"].model)},
                         "symbolic": {"encoder": "symbolic-features",
                                      "model": dict(cfg.experiments["symbolic-features"].model)}}
    assert (exp.resources.cpu, exp.resources.gpu) == (2.0, 0.5)


def test_the_starting_state_holds_the_winners_fold_weights_and_loads_through_build_model(demo, tmp_path) -> None:  # noqa: F811
    cfg, data = demo
    cfg, exp = with_fusion(cfg)
    torch.manual_seed(7)
    trained = {t: build_model(cfg, w, data).state_dict() for t, w in WINNERS.items()}  # stand-ins for fold k's best
    state = initial_state(cfg, "F2", trained, data)
    assert initial_state(cfg, "F2", trained, data).keys() == state.keys()
    assert all(torch.equal(a, b) for a, b in zip(state.values(), initial_state(cfg, "F2", trained, data).values()))
    path = write_state(state, tmp_path / "F2" / "fold1.pt")
    cfg = cfg.model_copy(update={"experiments": {**cfg.experiments, "F2": exp.model_copy(
        update={"init_encoder_folds": {1: path}})}})
    model = build_model(cfg, "F2", data, fold=1)
    for track, winner in WINNERS.items():
        part = getattr(model.encoder, track)
        for key, value in part.state_dict().items():
            assert torch.equal(value, trained[track][f"encoder.{key}"]), (track, key)
        assert not any(p.requires_grad for p in part.parameters())
    assert not list(tmp_path.rglob("*.part"))


def test_unfreeze_lr_trains_the_winners_after_the_plateau_and_a_resume_decides_alike(demo, tmp_path) -> None:  # noqa: F811
    """Frozen, the winners never change; once patience runs out they unfreeze at ``unfreeze_lr`` (the fusion keeps
    optim.lr) and training goes on to the budget; resumed from the plateau epoch or after it, the run ends with
    the same weights. Without ``unfreeze_lr`` the same run stops at the plateau."""
    cfg, data = demo
    cfg, exp = with_fusion(cfg)
    # a fusion that cannot improve (lr ~ 0): patience 1 runs out at epoch 2, deterministically
    cfg = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 1e-12, "warmup_fraction": 0.0})})
    frozen = [r.stop for r in fit(cfg, "F2", data, 1, Budget(5, 1))]
    assert frozen == [False, True]

    def winners(model) -> dict[str, torch.Tensor]:
        return {f"{t}.{k}": v.clone() for t in WINNERS for k, v in getattr(model.encoder, t).state_dict().items()}

    seed_everything(cfg.seed)  # as fit does before it builds the model
    start = winners(build_model(cfg, "F2", data, fold=1))
    sink = TopKSink(tmp_path / "ckpt", k=10)
    records = list(fit(cfg, "F2", data, 1, Budget(5, 1, unfreeze_lr=1e-2), sink=sink))
    last = records[-1].epoch  # the budget, or a second plateau
    assert [r.stage for r in records] == ["supervised", "supervised"] + [UNFROZEN] * (last - 2) and last >= 3
    assert not any(r.stop for r in records[:-1]) and records[-1].stop

    def state_at(epoch: int) -> dict[str, torch.Tensor]:
        return read_state(tmp_path / "ckpt" / f"epoch-{epoch:04d}")["model"]

    def changed(state) -> set[str]:
        return {k for k, v in start.items() if not torch.equal(v, state[f"encoder.{k}"])}

    assert not changed(state_at(2)), "a frozen epoch changed a winner"
    assert changed(state_at(last)), "the unfrozen epochs left the winners as they were"
    final = state_at(last)
    for epoch in (2, 3):  # from the plateau epoch itself, and from an unfrozen one
        if epoch >= last:
            continue
        resumed = TopKSink(tmp_path / f"resume{epoch}", k=10)
        rest = list(fit(cfg, "F2", data, 1, Budget(5, 1, unfreeze_lr=1e-2), sink=resumed,
                        resume_from=tmp_path / "ckpt" / f"epoch-{epoch:04d}"))
        assert [r.epoch for r in rest] == list(range(epoch + 1, last + 1)) and rest[-1].stage == UNFROZEN
        again = read_state(tmp_path / f"resume{epoch}" / f"epoch-{last:04d}")["model"]
        assert all(torch.equal(final[k], again[k]) for k in final), f"resumed from epoch {epoch}: other weights"


def test_round3_fusions_get_the_difficulty_head_and_rounds_1_2_keep_their_model(demo) -> None:  # noqa: F811
    """The head is Round 3's (``round3.difficulty_head`` > 0); a Round-1/2 experiment builds the model (and the
    state dict) it always had, and with weight 0 a fusion has no head either."""
    from pianoray.training.loop import difficulty_weight, param_groups

    cfg, data = demo
    cfg, _ = with_fusion(cfg)
    assert (difficulty_weight(cfg, "F2"), difficulty_weight(cfg, "symbolic-features")) == (0.1, 0.0)
    torch.manual_seed(0)
    plain = build_model(cfg, "symbolic-features", data)
    assert plain.difficulty is None and not any(k.startswith("difficulty.") for k in plain.state_dict())
    fused = build_model(cfg, "F2", data)
    assert [k for k in fused.state_dict() if k.startswith("difficulty.")] == ["difficulty.linear.weight",
                                                                             "difficulty.linear.bias"]
    assert {id(p) for p in fused.difficulty.parameters()} <= {id(p) for g in param_groups(fused, 1e-3)
                                                             for p in g["params"]}
    off = cfg.model_copy(update={"round3": cfg.round3.model_copy(update={"difficulty_head": 0.0})})
    assert build_model(off, "F2", data).difficulty is None


def test_the_difficulty_loss_is_the_weighted_mse_over_the_graded_samples_only(demo) -> None:  # noqa: F811
    """supervised_step adds weight * MSE(head, scaled grade) over ``has_difficulty``; the head trains."""
    from pianoray.data.tiers import Tier
    from pianoray.objectives.losses import multitask_loss
    from pianoray.training.loop import supervised_step

    cfg, data = demo
    cfg, _ = with_fusion(cfg)
    model = build_model(cfg, "F2", data)
    batch = next(b for b in data.loader(0, "train", (Tier.T1, Tier.T3), model.encoder.views, 8, epoch=1, seed=0)
                 if b.has_difficulty is not None and int(b.has_difficulty[1:].sum()) >= 2)
    graded = batch.has_difficulty.clone()
    graded[0] = False  # a sample without a grade counts nowhere, whatever its target says
    batch.has_difficulty, batch.difficulty[0] = graded, 123.0
    with torch.no_grad():
        out = model.eval()(batch)
        base, _ = multitask_loss(out.regression, out.scores, out.z, batch, cfg.loss)
        mse = ((out.difficulty[graded] - batch.difficulty[graded]) ** 2).mean()
    model.eval()  # no dropout: the step's forward is the one above
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    before = model.difficulty.linear.weight.clone()
    parts = supervised_step(model, batch, cfg.loss, None, optimizer, None, 1.0, torch.device("cpu"), difficulty=0.5)
    assert parts["difficulty"] == pytest.approx(float(mse), rel=1e-5)
    assert parts["total"] == pytest.approx(float(base + 0.5 * mse), rel=1e-5)
    assert model.difficulty.linear.weight.grad is not None and model.difficulty.linear.weight.grad.abs().sum() > 0
    assert torch.equal(before, model.difficulty.linear.weight)  # lr 0: only the gradient was checked


def test_the_head_never_trains_on_a_grade_of_a_piece_the_fold_holds_out(demo) -> None:  # noqa: F811
    """Folds keep a passage's music together, not a piece's: every piece held out (val or test) loses its grade
    in training; every other graded piece keeps its scaled grade; evaluation splits carry none."""
    from pianoray.data.loaders import held_pieces, scaled_grades, training_grades
    from pianoray.data.tiers import Tier

    _, data = demo
    corpus = data.corpus
    fold = data.fold(0)
    held = held_pieces(corpus, fold)
    t1 = corpus.manifest(Tier.T1).set_index("segment_id")
    assert held == set(t1.loc[fold["val"] + fold["test"], "piece"].astype(str))
    assert set(t1.loc[fold["train"], "piece"]) & held  # the demo's folds share pieces: why the mask is needed
    grades = training_grades(corpus, fold)
    assert grades == {p: g for p, g in scaled_grades(corpus.difficulty).items() if p not in held}
    split = data.dataset(0, "train", (Tier.T1, Tier.T2, Tier.T3), ("notes",))
    for part in split.parts.values():
        for i in range(len(part)):
            sample = part[i][0]
            piece = str(part.rows[i]["piece"])
            assert sample.difficulty == grades.get(piece) and (sample.difficulty is None) == (piece not in grades)
    assert next(iter(data.eval_loader(0, "test", ("notes",), 8))).difficulty is None
    assert scaled_grades({"a": 2, "b": 6, "c": 4}) == {"a": 0.0, "b": 1.0, "c": 0.5}
    assert scaled_grades({"a": 3, "b": 3}) == {}


def test_the_frozen_feature_memo_changes_no_figure_of_a_fusions_fit(demo, monkeypatch) -> None:  # noqa: F811
    """Trained with the process's frozen-feature memo (its validation batches encoded once, then served), a fusion
    reports the same validation figures every epoch, to the bit, as with a memo that keeps nothing."""
    from pianoray.models import fusion

    cfg, data = demo
    cfg, _ = with_fusion(cfg, "F3")
    runs = []
    for memo in (fusion.FrozenFeatures(), fusion.FrozenFeatures(max_bytes=0)):
        monkeypatch.setattr(fusion, "FROZEN_FEATURES", memo)
        runs.append([r.metrics for r in fit(cfg, "F3", data, 0, Budget(3))])
        assert (memo.hits > 0) == (memo.bytes > 0) == (memo.max_bytes > 0)
    assert runs[0] == runs[1]
