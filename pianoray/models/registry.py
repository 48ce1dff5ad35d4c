"""Registry of encoders: name -> builder, track, role, config type, views.

The training loop and the Ray protocol look experiments up here and never branch on a name.
``role="reference"`` marks baselines: trained and reported, but never a track's leader nor a winner.

Encoders register themselves when their module is imported; :func:`load_builtin` imports them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict

from pianoray.models.contract import Encoder

Track = Literal["audio", "symbolic", "fusion"]
Role = Literal["candidate", "reference"]


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


_REGISTRY: dict[str, EncoderSpec] = {}

# Modules that register encoders on import. Later issues add theirs here.
BUILTIN_MODULES = ("pianoray.models.baselines", "pianoray.models.audio", "pianoray.models.symbolic")


def register(spec: EncoderSpec) -> EncoderSpec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"encoder {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)


def get(name: str) -> EncoderSpec:
    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def names(track: Track | None = None) -> list[str]:
    load_builtin()
    return sorted(n for n, s in _REGISTRY.items() if track is None or s.track == track)


def all_specs() -> dict[str, EncoderSpec]:
    load_builtin()
    return dict(_REGISTRY)
