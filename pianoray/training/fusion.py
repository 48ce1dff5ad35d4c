"""Round 3's fusion experiments: their config over a run's winners, and each fold's starting weights.

A fusion experiment (F1/F2/F3/F-score, ``pianoray.models.fusion``) is trained like any Round-2 fold (``fit``; a
Round-3 Ray Train job trains every fusion of its folds), from a starting state per fold: the fusion encoder with
both winners' fold-k best weights loaded (frozen) and its fusion module freshly initialised under the run's seed.
Fold k's winners never saw fold k's test part, so neither does its fusion. The state is written once per
(fusion, fold) and reaches the model through the experiment's ``init_encoder_folds``, the path pretrained
encoders already take.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import torch

from pianoray.config import ExperimentConfig, ProtocolConfig, model_config
from pianoray.files import atomic_write
from pianoray.models import registry
from pianoray.training.data import ExperimentData
from pianoray.training.loop import seed_everything


def fusion_experiment(cfg: ProtocolConfig, fusion: str, winners: Mapping[str, str]) -> ExperimentConfig:
    """Experiment ``fusion`` over ``winners`` (track -> the winning experiment: ``{"audio": "A3", "symbolic":
    "S3"}``): each part names the winner's encoder and the model config it was trained with; the fusion trains
    with the protocol's optimiser and holds the larger of the winners' resources (both run in its forward)."""
    parts = {track: {"encoder": cfg.encoder_name(name), "model": dict(cfg.experiments[name].model)}
             for track, name in winners.items()}
    res = [cfg.resources_for(name) for name in winners.values()]
    resources = max(res, key=lambda r: (r.gpu, r.cpu))
    return ExperimentConfig(encoder=fusion, model=parts, resources=resources)


def initial_state(cfg: ProtocolConfig, fusion: str, winners: Mapping[str, Mapping[str, Any]],
                  data: ExperimentData) -> dict[str, torch.Tensor]:
    """The fusion encoder's starting state dict on one fold: ``winners`` maps track -> that winner's fold-k
    PerformanceModel state dict (``trials.BestStore.weights``); the fusion module is initialised under the
    protocol's seed (the same state whichever session prepares it)."""
    seed_everything(cfg.seed)
    encoder = registry.get(cfg.encoder_name(fusion)).build(model_config(cfg, fusion), data.data_spec())
    encoder.load_winners(winners["audio"], winners["symbolic"])
    return encoder.state_dict()


def write_state(state: Mapping[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` to ``path`` atomically (a kill leaves no half-written starting state)."""
    return atomic_write(path, lambda tmp: torch.save(dict(state), tmp))
