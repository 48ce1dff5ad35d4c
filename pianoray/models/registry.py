"""Registry of tracks and experiments: name -> spec (track, role, kind, config type, how to build or fit it).

The training loop and the Ray protocol look experiments and tracks up here and never branch on a name.
A track (:class:`TrackSpec`) is a family of experiments compared with each other, one winner each; it says
which metrics its comparison table shows and whether selection applies the robustness veto. A track's package
registers it (``pianoray.models.audio``, ``pianoray.models.symbolic``); every experiment names a registered
track.
``role="reference"`` marks baselines: trained and reported, but never a track's leader nor a winner.

Three kinds of experiment (``spec.kind``):

- ``"neural"`` (:class:`EncoderSpec`): an encoder built from its config and trained epoch by epoch on batch
  views; it takes part in Round-1 rungs and early stopping, under the encoder contract.
- ``"fitted"`` (:class:`FittedReferenceSpec`): a non-neural reference fitted once per fold on one summary
  vector per segment (no epochs, no rungs, never stopped); exempt from the encoder contract, always a
  reference, scored on every fold with the same metrics as the neural ones.
- ``"fusion"`` (:class:`FusionSpec`): a fusion module over a run's two frozen winners (F1-F3, F-score), built only
  in Round 3 once the winners are known. It is never a Round-1/2 experiment (a configuration naming one is
  refused), and loops over ``names(kind="neural")`` never see it.

Encoders register themselves when their module is imported; :func:`load_builtin` imports them all.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from pianoray.errors import UnknownNameError
from pianoray.models.contract import Encoder
from pianoray.records import DEFAULT_TRACK_METRICS, Role

Track = str  # a registered TrackSpec's name
Kind = Literal["neural", "fitted", "fusion"]


@dataclass(frozen=True)
class TrackSpec:
    """One track.

    order: its place in tables and reports (lowest first); robustness_veto: whether selection vetoes a
    candidate whose pairwise accuracy drops more than ``selection.robustness_veto`` on augmented twins (the
    audio augmentations are the ones the seed vetoes on); metrics: the per-experiment figures its comparison
    table shows beside R2 and pairwise accuracy, as dotted paths into the results' ``experiments[]`` rows
    (``"difficulty_rho"``, ``"robustness.drop"``, ``"test.<scorer key>"``; ``pianoray.report.tables``).
    """

    name: str
    order: int
    robustness_veto: bool = False
    metrics: tuple[str, ...] = DEFAULT_TRACK_METRICS
    description: str = ""

    def to_json(self) -> dict[str, Any]:
        """What a run records of the track (run.json), so that status and report need no registry."""
        return {"name": self.name, "order": self.order, "robustness_veto": self.robustness_veto,
                "metrics": list(self.metrics), "description": self.description}


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


@dataclass(frozen=True)
class FusionSpec:
    """One registered fusion experiment (Round 3).

    build(config, data_spec) -> Encoder, where the config names the two winners to fuse (their encoder names
    and model configs) besides the fusion's own sizes. It reads the winners' views, unknown until they are
    chosen (``views`` is empty; the built encoder's ``views`` are the union of theirs), and has no pretraining
    task of its own.
    """

    name: str
    track: Track
    role: Role
    config_cls: type[ModelConfig]
    build: Callable[[Any, DataSpec], Encoder]
    description: str = ""
    views: tuple[str, ...] = ()
    pretrain: None = None
    kind: ClassVar[Kind] = "fusion"


Spec = EncoderSpec | FittedReferenceSpec | FusionSpec

_REGISTRY: dict[str, Spec] = {}
_TRACKS: dict[str, TrackSpec] = {}

# Modules that register encoders on import. Later issues add theirs here.
BUILTIN_MODULES = ("pianoray.models.baselines", "pianoray.models.boosting", "pianoray.models.audio",
                   "pianoray.models.symbolic", "pianoray.models.fusion")


def register(spec: Spec) -> Spec:
    if spec.name in _REGISTRY and _REGISTRY[spec.name] is not spec:
        raise ValueError(f"encoder {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def register_track(spec: TrackSpec) -> TrackSpec:
    if spec.name in _TRACKS and _TRACKS[spec.name] != spec:
        raise ValueError(f"track {spec.name!r} is registered twice")
    _TRACKS[spec.name] = spec
    return spec


def load_builtin() -> None:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    unknown = sorted({s.track for s in _REGISTRY.values()} - set(_TRACKS))
    if unknown:
        raise ValueError(f"experiments name unregistered track(s) {unknown}; registered: {sorted(_TRACKS)}")


def tracks(kinds: Iterable[Kind] | None = None) -> list[TrackSpec]:
    """Every registered track, in display order; given ``kinds``, only those an experiment of one of them names."""
    load_builtin()
    listed = sorted(_TRACKS.values(), key=lambda t: (t.order, t.name))
    if kinds is None:
        return listed
    wanted = set(kinds)
    named = {s.track for s in _REGISTRY.values() if s.kind in wanted}
    return [t for t in listed if t.name in named]


def get(name: str) -> Spec:
    load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError(f"unknown encoder {name!r}; registered: {', '.join(sorted(_REGISTRY))}") from None


def names(track: Track | None = None, kind: Kind | None = None) -> list[str]:
    load_builtin()
    return sorted(n for n, s in _REGISTRY.items()
                  if (track is None or s.track == track) and (kind is None or s.kind == kind))


def all_specs() -> dict[str, Spec]:
    load_builtin()
    return dict(_REGISTRY)
