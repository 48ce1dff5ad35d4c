"""Round 3's starting point per fold: a fusion experiment over two winners, and the fusion encoder's state with
each winner's fold-k weights loaded (frozen) and its fusion module initialised under the run's seed."""

from __future__ import annotations

import torch

from pianoray.config import ExperimentConfig, ResourcesConfig
from pianoray.training.fusion import fusion_experiment, initial_state, write_state
from pianoray.training.loop import build_model
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
