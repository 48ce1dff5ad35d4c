"""Round 3's starting point per fold: a fusion experiment over two winners, and the fusion encoder's state with
each winner's fold-k weights loaded (frozen) and its fusion module initialised under the run's seed; and
``round3.unfreeze_lr``: the winners unfrozen once the frozen fusion plateaus."""

from __future__ import annotations

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
