"""A model artifact: what ``pianoray export`` writes and ``evaluate``/``predict`` read, self-contained.

A folder (written whole or not at all: built beside its destination, then renamed into place)::

    MODEL/
      pianoray-model.json     the manifest (:class:`Manifest`): schema, experiment, encoder and model config,
                              labels (set, names, taxonomy), input settings, members, versions, provenance
      weights/<member>.safetensors   one PerformanceModel per member (a fold model, or the refit one)
      tokenizer.json          the REMI vocabulary, when the model reads REMI tokens
      reference.joblib        the fitted hand-crafted reference, one fit per member's training part
      fingerprints.npz        hashed pitch runs of every segment the members saw (pianoray.data.fingerprints)

The model is the **mean ensemble** of its members: each member predicts every segment whole (windows merged by
``segment_mean``, as in training), and the members' predictions are averaged. The reference is averaged the same
way, so ``evaluate`` compares like with like.

Loading checks, each one line naming the artifact: the schema (another pianoray's artifact is refused, not
misread), the manifest's fields, the REMI vocabulary (a tokenizer that differs from this miditok's is refused),
the symbolic feature settings. A model exported by a CUDA build of torch and loaded by a CPU one (or the
reverse) loads and runs; ``notes`` says so. ``reference.joblib`` is a pickle (scikit-learn models have no
other format): load only artifacts you trust, as with any pickled model.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

import pianoray
from pianoray.data.fingerprints import Fingerprints
from pianoray.data.loaders import grade_range
from pianoray.data.tiers import Tier
from pianoray.errors import InputError, MissingInputError
from pianoray.models.contract import PerformanceModel
from pianoray.models.registry import DataSpec
from pianoray.training.evaluate import Predictions, predict
from pianoray.training.loop import model_from, pick_device

ARTIFACT_SCHEMA = 1
MANIFEST_FILE = "pianoray-model.json"
WEIGHTS_DIR = "weights"
TOKENIZER_FILE = "tokenizer.json"
REFERENCE_FILE = "reference.joblib"
FINGERPRINTS_FILE = "fingerprints.npz"
REMI_VIEW = "remi"
SYMBOLIC_VIEWS = ("remi", "graph", "hetero_graph", "curves")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LabelInfo(_Strict):
    """The label set the model predicts: ``set`` (``percepiano19`` or ``composite``), the dimension names in
    output order, and the run's taxonomy (names, definitions and weights): what a composite model was trained on,
    and what maps a 19-dimension model's outputs to the composite set."""

    set: Literal["percepiano19", "composite"]
    names: list[str]
    taxonomy: dict[str, Any] | None = None


class InputInfo(_Strict):
    """How inputs become batches: the views the encoder reads, the window lengths, the batch size, and what
    the inputs must match (the MuQ frames' width and layer; the symbolic feature settings)."""

    views: list[str]
    max_frames: int
    max_notes: int
    batch_size: int
    frames: dict[str, Any] | None = None
    symbolic: dict[str, Any] | None = None


class ReferenceInfo(_Strict):
    experiment: str
    encoder: str
    features_id: str


class Manifest(_Strict):
    schema_version: int
    experiment: str
    encoder: str
    track: str
    kind: Literal["fold-ensemble", "refit"]
    model: dict[str, Any]
    n_dims: int = Field(ge=1)
    frame_width: int | None = None
    difficulty_head: bool = False  # Round 3's fusions train an auxiliary difficulty head beside the others
    # The grades the head's [0, 1] output was scaled over (the training corpus's lowest and highest): what turns
    # its output back into a grade. None without a head.
    difficulty_grades: tuple[float, float] | None = None
    members: list[str] = Field(min_length=1)
    labels: LabelInfo
    inputs: InputInfo
    rank_threshold: float
    reference: ReferenceInfo | None = None
    fingerprints: dict[str, Any]
    versions: dict[str, str | None]
    provenance: dict[str, Any] = Field(default_factory=dict)


def versions() -> dict[str, str | None]:
    """What an artifact was built with."""
    import safetensors

    return {"pianoray": pianoray.__version__, "torch": torch.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "safetensors": safetensors.__version__}


# ------------------------------------------------------------------------------------------ writing


@dataclass
class ArtifactParts:
    """Everything :func:`write_artifact` writes: the manifest, one state dict per member (in manifest order),
    the fitted reference's member fits (or None), the fingerprints, and the REMI tokenizer when used."""

    manifest: Manifest
    states: Sequence[Mapping[str, torch.Tensor]]
    fingerprints: Fingerprints
    reference: list[Any] | None = None
    tokenizer: Any = None


def write_artifact(out: Path, parts: ArtifactParts) -> Path:
    """Write the artifact folder ``out`` whole or not at all. Each member's weights are loaded into the model
    the manifest describes before they are written (so an artifact that would not load is never written).
    An existing ``out`` is replaced only if it is a pianoray model; anything else there is refused."""
    from safetensors.torch import save_model

    out = Path(out)
    if out.exists() and not (out.is_dir() and (out / MANIFEST_FILE).is_file()):
        what = "a file" if not out.is_dir() else "a folder that is not a pianoray model"
        raise InputError(f"{out}: --out is {what}; give a new path (an existing model there is replaced)")
    m = parts.manifest
    if len(parts.states) != len(m.members):
        raise ValueError(f"{len(parts.states)} member states for {len(m.members)} members")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        (tmp / WEIGHTS_DIR).mkdir(parents=True)
        for member, state in zip(m.members, parts.states):
            model = _model(m)
            model.load_state_dict(state)
            save_model(model, str(tmp / WEIGHTS_DIR / f"{member}.safetensors"))
        if parts.tokenizer is not None:
            parts.tokenizer.save(tmp / TOKENIZER_FILE)
        if parts.reference is not None:
            import joblib

            joblib.dump(parts.reference, tmp / REFERENCE_FILE)
        parts.fingerprints.save(tmp / FINGERPRINTS_FILE)
        (tmp / MANIFEST_FILE).write_text(m.model_dump_json(indent=2))  # last: its presence says "whole"
        if out.exists():
            old = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _model(m: Manifest) -> PerformanceModel:
    from pianoray.models.contract import DifficultyHead

    model = model_from(m.encoder, m.model, DataSpec(n_dims=m.n_dims, frame_width=m.frame_width))
    if m.difficulty_head:
        model.difficulty = DifficultyHead()
    return model


# ------------------------------------------------------------------------------------------ reading


def read_manifest(path: Path) -> Manifest:
    """The manifest of the artifact at ``path``; one :class:`InputError` naming the artifact when it is not
    one, is another schema's, or has a bad field."""
    path = Path(path)
    file = path / MANIFEST_FILE
    if not path.exists():
        raise MissingInputError(f"{path}: no such model")
    if not file.is_file():
        raise InputError(f"{path}: not a pianoray model (no {MANIFEST_FILE}; `pianoray export` writes one)")
    try:
        raw = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InputError(f"{file}: not a readable model manifest ({e})") from None
    schema = raw.get("schema_version") if isinstance(raw, dict) else None
    if schema != ARTIFACT_SCHEMA:
        raise InputError(f"{path}: model artifact schema {schema!r}; this pianoray ({pianoray.__version__}) reads "
                         f"schema {ARTIFACT_SCHEMA}: export the run again with this version")
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        raise InputError(f"{file}: {'.'.join(map(str, first['loc']))}: {first['msg']}") from None


@dataclass
class ModelArtifact:
    """An exported model, loaded: its manifest, members (built lazily), reference fits and fingerprints."""

    path: Path
    manifest: Manifest
    fingerprints: Fingerprints
    notes: list[str] = field(default_factory=list)
    device: torch.device = field(default_factory=lambda: pick_device(None))
    _members: list[PerformanceModel] | None = field(default=None, repr=False)
    _reference: list[Any] | None = field(default=None, repr=False)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device | None = None) -> "ModelArtifact":
        path = Path(path)
        m = read_manifest(path)
        if REMI_VIEW in m.inputs.views:
            from pianoray.data.symbolic.remi import RemiTokenizer

            RemiTokenizer.load(path / TOKENIZER_FILE)  # refuses a vocabulary that differs from this miditok's
        if m.inputs.symbolic is not None:
            from pianoray.data.symbolic.cache import SymbolicFeatureConfig

            here = SymbolicFeatureConfig().model_dump(mode="json")
            if m.inputs.symbolic != here:
                diff = sorted(k for k in here if here[k] != m.inputs.symbolic.get(k))
                raise InputError(f"{path}: symbolic feature settings differ from this pianoray's ({', '.join(diff)})"
                                 ": export the run again with this version")
        notes = []
        built, here_cuda = m.versions.get("cuda"), torch.version.cuda
        if (built is None) != (here_cuda is None):
            notes.append(f"exported with a {'CUDA ' + built if built else 'CPU'} build of torch, loaded by a "
                         f"{'CUDA ' + here_cuda if here_cuda else 'CPU'} build: the weights are the same")
        try:
            fingerprints = Fingerprints.load(path / FINGERPRINTS_FILE)
        except (OSError, KeyError, ValueError) as e:
            raise InputError(f"{path / FINGERPRINTS_FILE}: unreadable ({e})") from None
        return cls(path, m, fingerprints, notes, pick_device(device))

    # ---------------------------------------------------------------- the model
    @property
    def label_names(self) -> list[str]:
        return list(self.manifest.labels.names)

    def members(self) -> list[PerformanceModel]:
        """The member models, weights loaded, in eval mode on the artifact's device."""
        if self._members is None:
            from safetensors.torch import load_model

            out = []
            for member in self.manifest.members:
                file = self.path / WEIGHTS_DIR / f"{member}.safetensors"
                model = _model(self.manifest)
                try:
                    load_model(model, str(file), strict=True)
                except FileNotFoundError:
                    raise MissingInputError(f"{file}: missing (the artifact is incomplete)") from None
                except (RuntimeError, OSError, ValueError) as e:
                    raise InputError(f"{file}: weights do not fit {self.manifest.experiment} ({e})") from None
                out.append(model.to(self.device).eval())
            self._members = out
        return self._members

    def check_inputs(self, corpus: Any, what: str) -> None:
        """One error naming ``what`` (the inputs) when ``corpus`` cannot feed this model: frames it reads but the
        corpus lacks or has at another width; performance or score MIDI it reads but a segment lacks."""
        from pianoray.data.views import SCORE

        views, name = self.manifest.inputs.views, self.manifest.experiment
        t1 = corpus.manifest(Tier.T1)
        width = (self.manifest.inputs.frames or {}).get("width")
        if "frames" in views and not corpus.has_frames():
            raise InputError(f"{what}: {name} reads audio frames: give a pianoray cache of the recordings "
                             "(`pianoray extract`), not MIDI alone")
        if "frames" in views and corpus.meta.width != width:
            raise InputError(f"{what}: frames are {corpus.meta.width} wide; {name} was trained on {width}")
        for column, reads in (("perf_midi", any(v in SYMBOLIC_VIEWS for v in views)),
                              ("score_midi", any(v.startswith(SCORE) for v in views))):
            if reads and (column not in t1 or t1[column].isna().any()):
                raise InputError(f"{what}: {name} reads each segment's {column.replace('_', ' ')}, and "
                                 "some segments have none")

    def loader(self, corpus: Any, segment_ids: Sequence[str], labels: Mapping[str, np.ndarray] | None = None) -> Any:
        """Whole-segment evaluation batches of ``segment_ids`` (T1 of ``corpus``), windows as in training."""
        from pianoray.data.loaders import SegmentDataset, make_loader

        i = self.manifest.inputs
        ds = SegmentDataset(corpus, Tier.T1, list(segment_ids), i.views, labels=labels, train=False,
                            max_frames=i.max_frames, max_notes=i.max_notes, n_dims=self.manifest.n_dims)
        return make_loader(ds, batch_size=i.batch_size, shuffle=False, train=False)

    def predict(self, corpus: Any, segment_ids: Sequence[str],
                labels: Mapping[str, np.ndarray] | None = None) -> Predictions:
        """The mean ensemble's per-segment predictions: each member over every window of every segment,
        merged per segment, then averaged over members (scores, regression and z alike)."""
        runs = [predict(model, self.loader(corpus, segment_ids, labels), self.device) for model in self.members()]
        first = runs[0]
        mean = lambda attr: np.mean([getattr(r, attr) for r in runs], axis=0)  # noqa: E731
        return Predictions(first.segment_ids, mean("scores"), mean("regression"), first.labels, first.has_labels,
                           first.groups, mean("z"), mean("difficulty") if first.difficulty is not None else None)

    def grade(self, scaled: np.ndarray) -> np.ndarray:
        """The difficulty head's [0, 1] output as grades, on the scale of the corpus it trained on
        (``difficulty_grades``)."""
        if self.manifest.difficulty_grades is None:
            raise ValueError(f"{self.path}: the model has no difficulty head")
        lo, hi = self.manifest.difficulty_grades
        return lo + np.asarray(scaled) * (hi - lo)

    # ---------------------------------------------------------------- the reference
    def reference_predict(self, corpus: Any, segment_ids: Sequence[str]) -> np.ndarray | None:
        """[M, N]: the fitted reference's mean over its member fits, on whole-performance MIDI features; None
        when the artifact has no reference."""
        info = self.manifest.reference
        if info is None:
            return None
        from pianoray.models import registry
        from pianoray.training.reference import segment_features

        if self._reference is None:
            import joblib

            try:
                self._reference = joblib.load(self.path / REFERENCE_FILE)
            except FileNotFoundError:
                raise MissingInputError(f"{self.path / REFERENCE_FILE}: missing (the artifact is incomplete)") from None
            except Exception as e:  # unpickling raises many types
                raise InputError(f"{self.path / REFERENCE_FILE}: unreadable ({type(e).__name__}: {e})") from None
        spec = registry.get(info.encoder)
        x, passages = segment_features(spec, corpus, list(segment_ids))
        return np.mean([fit.predict(x, passages) for fit in self._reference], axis=0)


@dataclass
class Member:
    """One member of an exported model: its name (``fold<k>``, ``refit``), weights, and the labelled segments it
    trained on (what the reference fits on beside it)."""

    name: str
    state: Mapping[str, torch.Tensor]
    train: Sequence[str]


def fold_members(data: Any, states: Mapping[int, Mapping[str, torch.Tensor]]) -> list[Member]:
    """Members from fold models (fold -> state dict), each beside its fold's training part."""
    return [Member(f"fold{k}", states[k], data.fold(k)["train"]) for k in sorted(states)]


def artifact_parts(cfg: Any, name: str, data: Any, members: Sequence[Member], *,
                   kind: Literal["fold-ensemble", "refit"] = "fold-ensemble", provenance: dict[str, Any] | None = None,
                   feedback: Any = None) -> ArtifactParts:
    """Everything an artifact of experiment ``name`` holds, from its config (``cfg``: the settings it was
    trained with), its data (``data``: a ``training.data.ExperimentData``) and its ``members``: the manifest;
    the fitted reference of its tracks (the first enabled ``fitted`` experiment of the tracks its inputs come
    from), fitted beside each member on that member's training segments; the fingerprints of every segment the
    folds hold (train, validation and test: a fold model trained on some and was selected or scored on the
    others; a refit model trained or early-stopped on all of them); the REMI tokenizer when the encoder reads REMI."""
    from pianoray.config import model_config
    from pianoray.data.fingerprints import midi_fingerprint
    from pianoray.data.symbolic.cache import SymbolicFeatureConfig
    from pianoray.data.symbolic.remi import RemiTokenizer
    from pianoray.data.taxonomy import Taxonomy
    from pianoray.feedback import or_default
    from pianoray.models import registry
    from pianoray.training.reference import fit_reference

    feedback = or_default(feedback)
    spec = registry.get(cfg.encoder_name(name))
    encoder_cfg = model_config(cfg, name)
    views = list(model_from(spec.name, encoder_cfg, data.data_spec()).encoder.views)
    meta = data.corpus.meta
    frames = ({"width": meta.width, "frame_rate": meta.frame_rate, "muq_layer": meta.muq_layer,
               "window_frames": meta.window_frames} if "frames" in views else None)
    symbolic = SymbolicFeatureConfig() if any(v in SYMBOLIC_VIEWS for v in views) else None
    taxonomy = Taxonomy.load(cfg.data.taxonomy) if cfg.data.taxonomy else Taxonomy.default()

    tracks = set(cfg.round3.fuse) if spec.kind == "fusion" else {spec.track}
    refs = [n for n in cfg.enabled_experiments()
            if registry.get(cfg.encoder_name(n)).kind == "fitted" and registry.get(cfg.encoder_name(n)).track in tracks]
    reference, ref_info = None, None
    if refs:
        ref_spec = registry.get(cfg.encoder_name(refs[0]))
        reference = [fit_reference(cfg, refs[0], data, list(m.train)) for m in members]
        ref_info = ReferenceInfo(experiment=refs[0], encoder=ref_spec.name, features_id=ref_spec.features_id)
        feedback.say(f"reference {refs[0]}: fitted beside each member on its training segments")

    seen = data.folds.keys
    table = data.corpus.manifest(Tier.T1).set_index("segment_id")
    files = list(dict.fromkeys(str(rel) for col in ("perf_midi", "score_midi") if col in table.columns
                               for rel in table.loc[seen, col].dropna()))
    fingerprints = Fingerprints.of([midi_fingerprint(data.corpus.path(rel)) for rel in files], len(seen))
    feedback.say(f"fingerprints: {fingerprints.runs.size} pitch runs of {len(seen)} segments ({len(files)} MIDI files)")

    head = any(k.startswith("difficulty.") for k in members[0].state)
    manifest = Manifest(
        schema_version=ARTIFACT_SCHEMA, experiment=name, encoder=spec.name, track=spec.track, kind=kind,
        model=encoder_cfg.model_dump(mode="json"), n_dims=len(data.label_names),
        frame_width=data.data_spec().frame_width, members=[m.name for m in members],
        difficulty_head=head, difficulty_grades=grade_range(data.corpus.difficulty) if head else None,
        labels=LabelInfo(set=cfg.data.labels, names=list(data.label_names),
                         taxonomy=taxonomy.model_dump(mode="json")),
        inputs=InputInfo(views=views, max_frames=cfg.data.max_frames, max_notes=cfg.data.max_notes,
                         batch_size=cfg.optim_for(name).batch_size, frames=frames,
                         symbolic=symbolic.model_dump(mode="json") if symbolic else None),
        rank_threshold=cfg.loss_for(name).rank_threshold, reference=ref_info,
        fingerprints={"rule": fingerprints.rule, "n_segments": len(seen), "n_runs": int(fingerprints.runs.size),
                      "available": bool(files)},
        versions=versions(), provenance=dict(provenance or {}))
    tokenizer = RemiTokenizer(symbolic.remi) if symbolic is not None and REMI_VIEW in views else None
    return ArtifactParts(manifest, [m.state for m in members], fingerprints, reference, tokenizer)


def provenance(run: str, experiment: str, reason: str, held_out: Sequence[str]) -> dict[str, Any]:
    """Where an artifact comes from: the run, the experiment and why it was chosen, the held-out music groups."""
    return {"run": run, "experiment": experiment, "why": reason, "holdout_groups": list(held_out),
            "exported": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
