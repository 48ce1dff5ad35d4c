"""Registry of experiments: name -> spec (track, role, kind, config type, and how to build or fit it).

The training loop and the Ray protocol look experiments up here and never branch on a name.
``role="reference"`` marks baselines: trained and reported, but never a track's leader nor a winner.

Two kinds of experiment (``spec.kind``):

- ``"neural"`` (:class:`EncoderSpec`): an encoder built from its config and trained epoch by epoch on batch
  views; it takes part in Round-1 rungs and early stopping, under the encoder contract.
- ``"fitted"`` (:class:`FittedReferenceSpec`): a non-neural reference fitted once per fold on one summary
  vector per segment (no epochs, no rungs, never stopped); exempt from the encoder contract, always a
  reference, scored on every fold with the same metrics as the neural ones.

Encoders register themselves when their module is imported; :func:`load_builtin` imports them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from pianoray.models.contract import Encoder

Track = Literal["audio", "symbolic", "fusion"]
Role = Literal["candidate", "reference"]
Kind = Literal["neural", "fitted"]


class ModelConfig(BaseModel):
    """Base of every encoder's size/shape config; unknown fields are errors."""

    model_config = ConfigDict(extra="forbid")
    dropout: float = 0.1


@dataclass(frozen=True)
class DataSpec:
    """What a builder needs to know of the data: frame width, label dims, symbolic vocabulary etc."""

    n_dims: int
    frame_width: int | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class EncoderSpec:
    """One registered experiment's encoder.

    build(config, data_spec) -> Encoder. ``views`` are the batch inputs it reads. ``pretrain``, if set,
    maps the encoder's config to a ``pianoray.training.pretrain.PretrainTask`` that runs on a MIDI folder
    (cached by corpus hash) before fine-tuning.
    """

    name: str
    track: Track
    role: Role
    config_cls: type[ModelConfig]
    build: Callable[[Any, DataSpec], Encoder]
    views: tuple[str, ...]
    description: str = ""
    pretrain: Callable[[Any], Any] | None = None
    kind: ClassVar[Kind] = "neural"


class FittedModel(Protocol):
    """What a fitted reference's ``fit`` returns: predictions for new segments of known passages."""

    def predict(self, x: Any, groups: Any) -> Any:
        """x [M, F] features, groups [M] passage keys -> [M, N] predicted labels."""
        ...


@dataclass(frozen=True)
class FittedReferenceSpec:
    """One registered non-neural reference, fitted once per fold.

    ``features(notes) -> [F]`` summarises a whole performance (a ``pianoray.data.midi.NoteTable``);
    ``features_id`` names that definition (feature caches key on it). ``fit(config, x [M, F], y [M, N],
    groups [M], seed) -> FittedModel`` fits on a fold's training part; ``groups`` are passage keys (the
    model may use them, e.g. to z-score within a passage). It reads no batch view (``views`` is empty) and
    has no pretraining task; it is always a reference.
    """

    name: str
    track: Track
    config_cls: type[BaseModel]
    fit: Callable[[Any, Any, Any, Any, int], FittedModel]
    features: Callable[[Any], Any]
    features_id: str
    description: str = ""
    role: Role = "reference"
    views: tuple[str, ...] = ()
    pretrain: None = None
    kind: ClassVar[Kind] = "fitted"

    def __post_init__(self) -> None:
        if self.role != "reference":
            raise ValueError(f"fitted experiment {self.name!r}: role must be 'reference' (it never takes part "
                             "in rungs, so it cannot be a candidate)")


Spec = EncoderSpec | FittedReferenceSpec

_REGISTRY: dict[str, Spec] = {}

# Modules that register encoders on import. Later issues add theirs here.
BUILTIN_MODULES = ("pianoray.models.baselines", "pianoray.models.boosting", "pianoray.models.audio",
                   "pianoray.models.symbolic")


def register(spec: Spec) -> Spec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"encoder {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get(name: str) -> Spec:
    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def names(track: Track | None = None, kind: Kind | None = None) -> list[str]:
    load_builtin()
    return sorted(n for n, s in _REGISTRY.items()
                  if (track is None or s.track == track) and (kind is None or s.kind == kind))


def all_specs() -> dict[str, Spec]:
    load_builtin()
    return dict(_REGISTRY)
