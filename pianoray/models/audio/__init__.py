"""Audio track: the MuQ tail (layers 9-12 over cached hidden_states[8]), LoRA, and the A1/A2/A3 encoders.

Importing this package registers the ``audio`` track and A1, A2 and A3 (``pianoray.models.registry``).
"""

from pianoray.models import registry
from pianoray.models.audio import encoders  # noqa: F401  (registers A1, A2, A3)
from pianoray.models.audio.encoders import (
    GradualUnfreezeConfig,
    GradualUnfreezeEncoder,
    LoraEncoder,
    LoraEncoderConfig,
    MuQTailEncoder,
    StagedLoraConfig,
    StagedLoraEncoder,
)
from pianoray.models.audio.lora import LoraSettings, apply_lora, count_parameters, trainable_fraction
from pianoray.models.audio.muq_tail import MuQCheckpointError, MuQTail, MuQTailConfig, load_muq_state_dict

TRACK = registry.register_track(registry.TrackSpec(
    "audio", order=0, robustness_veto=True,
    description="encoders over cached MuQ hidden_states[8] frames (25 Hz)"))

__all__ = [
    "GradualUnfreezeConfig",
    "GradualUnfreezeEncoder",
    "LoraEncoder",
    "LoraEncoderConfig",
    "LoraSettings",
    "MuQCheckpointError",
    "MuQTail",
    "MuQTailConfig",
    "MuQTailEncoder",
    "StagedLoraConfig",
    "StagedLoraEncoder",
    "apply_lora",
    "count_parameters",
    "load_muq_state_dict",
    "trainable_fraction",
]
