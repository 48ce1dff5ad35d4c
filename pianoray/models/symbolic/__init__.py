"""Symbolic encoders (MIDI track): importing this package registers the ``symbolic`` track and every encoder present.

S1 ``s1_remi`` (Transformer over REMI) and S3 ``s3_curves`` (CNN + Transformer over curves) live here
with S3's contrastive objective (``contrastive``); S2 ``s2_graph`` and S2H ``s2h_hetero`` (GNNs) are
written separately and registered when their modules exist.
"""

from __future__ import annotations

import importlib

from pianoray.models import registry
from pianoray.models.symbolic import s1_remi, s3_curves  # noqa: F401  (registration)

TRACK = registry.register_track(registry.TrackSpec(
    "symbolic", order=1, robustness_veto=False, description="encoders over performance MIDI"))

for _module in ("s2_graph", "s2h_hetero"):
    try:
        importlib.import_module(f"{__name__}.{_module}")
    except ModuleNotFoundError as e:
        # Only a missing module of that name is tolerated; a missing dependency inside it is a real error.
        if e.name != f"{__name__}.{_module}":
            raise
