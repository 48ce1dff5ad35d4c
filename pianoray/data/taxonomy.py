"""Composite-dimension taxonomy: N teacher-facing dimensions, each a signed, weighted map from PercePiano's 19.

Two levels: a dimension (``dynamics``) and the PercePiano sub-dimensions it draws on, with signs.
A negative weight means the reversed scale (1 - x). Weights are normalised so that their absolute values
sum to 1; each composite is then a convex combination of values in [0, 1] and stays in [0, 1]::

    composite_n = sum_j |w_jn| * (x_j if w_jn > 0 else 1 - x_j) = x @ W[:, n] + b[n],
    W[j, n] = w_jn (normalised, signed),  b[n] = sum of |w_jn| over the negative weights.

File format (``taxonomy['dimensions']`` as in the seed; the shipped default is
``pianoray/resources/taxonomy.json``, explained in ``docs/taxonomy.md``)::

    {"version": 1, "name": "...", "description": "...",
     "dimensions": [{"name": "pedaling", "definition": "...",
                     "percepiano_weights": {"Pedal_Clean_Blurred": -0.6, ...}}, ...]}
"""

from __future__ import annotations

import difflib
import json
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pianoray.data.percepiano import N_DIMS, PERCEPIANO_DIMS
from pianoray.errors import PianorayError

TAXONOMY_VERSION = 1
_DIM_INDEX = {name: i for i, name in enumerate(PERCEPIANO_DIMS)}


class TaxonomyError(PianorayError, ValueError):
    """An unusable taxonomy; the message names the file and the field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Dimension(_Strict):
    """One composite dimension and the PercePiano sub-dimensions it draws on (raw, unnormalised weights)."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    definition: str = Field(min_length=1)
    percepiano_weights: dict[str, float] = Field(min_length=1)

    @field_validator("percepiano_weights")
    @classmethod
    def _known_nonzero(cls, weights: dict[str, float]) -> dict[str, float]:
        for key, w in weights.items():
            if key not in _DIM_INDEX:
                close = difflib.get_close_matches(key, PERCEPIANO_DIMS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ValueError(f"unknown PercePiano dimension {key!r}{hint}")
            if not math.isfinite(w) or w == 0.0:
                raise ValueError(f"weight of {key!r} is {w}: weights must be finite and non-zero")
        return weights

    def normalised(self) -> dict[str, float]:
        """Weights scaled so that their absolute values sum to 1 (signs kept)."""
        total = sum(abs(w) for w in self.percepiano_weights.values())
        return {k: w / total for k, w in self.percepiano_weights.items()}


class Taxonomy(_Strict):
    version: int = TAXONOMY_VERSION
    name: str = Field(min_length=1)
    description: str = ""
    dimensions: list[Dimension] = Field(min_length=1)

    @field_validator("version")
    @classmethod
    def _version(cls, v: int) -> int:
        if v != TAXONOMY_VERSION:
            raise ValueError(f"version {v} is not supported (expected {TAXONOMY_VERSION})")
        return v

    @model_validator(mode="after")
    def _unique_names(self) -> "Taxonomy":
        seen: set[str] = set()
        for d in self.dimensions:
            if d.name in seen:
                raise ValueError(f"dimension name {d.name!r} appears twice")
            seen.add(d.name)
        return self

    # -- loading -------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "<taxonomy>") -> "Taxonomy":
        """Validate ``data``; raises TaxonomyError lines ``SOURCE: dimensions[2] (pedaling).field: message``."""
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise TaxonomyError(_format_errors(source, data, e)) from None

    @classmethod
    def load(cls, path: str | Path) -> "Taxonomy":
        path = Path(path)
        if not path.is_file():
            raise TaxonomyError(f"{path}: taxonomy file not found")
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise TaxonomyError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(data, source=path)

    @classmethod
    def default(cls) -> "Taxonomy":
        """The shipped 6-dimension taxonomy (dynamics, timing, pedaling, articulation, phrasing, interpretation)."""
        ref = resources.files("pianoray").joinpath("resources/taxonomy.json")
        return cls.from_dict(json.loads(ref.read_text()), source=str(ref))

    def save(self, path: str | Path) -> None:
        """Write as JSON (temporary file + os.replace), e.g. next to a run's labels."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
        tmp.write_text(json.dumps(self.model_dump(), indent=2))
        os.replace(tmp, path)

    # -- use -----------------------------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.dimensions]

    def __len__(self) -> int:
        return len(self.dimensions)

    def matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(W [19, N] float64, b [N] float64) with composite = labels19 @ W + b (see module docstring)."""
        W = np.zeros((N_DIMS, len(self.dimensions)), dtype=np.float64)
        b = np.zeros(len(self.dimensions), dtype=np.float64)
        for n, dim in enumerate(self.dimensions):
            for key, w in dim.normalised().items():
                W[_DIM_INDEX[key], n] = w
                if w < 0:
                    b[n] += -w  # the reversed scale: |w| * (1 - x) = |w| + w * x
        return W, b

    def composite(self, labels19: np.ndarray) -> np.ndarray:
        """labels19: [M, 19] (or [19]) in [0, 1] -> [M, N] (or [N]) in [0, 1], float32."""
        x = np.asarray(labels19, dtype=np.float64)
        if x.shape[-1] != N_DIMS:
            raise ValueError(f"labels19 must end in {N_DIMS} PercePiano dimensions, got shape {x.shape}")
        W, b = self.matrix()
        # Clip only float round-off: the convex combination is mathematically inside [0, 1].
        return np.clip(x @ W + b, 0.0, 1.0).astype(np.float32)


def _format_errors(source: str | Path, data: Any, error: ValidationError) -> str:
    lines = []
    for err in error.errors():
        parts = []
        loc = list(err["loc"])
        for i, part in enumerate(loc):
            if isinstance(part, int) and i > 0 and loc[i - 1] == "dimensions":
                name = _dimension_name(data, part)
                parts[-1] = f"dimensions[{part}]" + (f" ({name})" if name else "")
            else:
                parts.append(str(part))
        where = ".".join(parts) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{source}: {where}: {msg}")
    return "\n".join(lines)


def _dimension_name(data: Any, index: int) -> str | None:
    try:
        name = data["dimensions"][index]["name"]
    except (KeyError, IndexError, TypeError):
        return None
    return name if isinstance(name, str) else None
