"""LoRA adapters on the MuQ tail's attention projections (peft), and parameter accounting.

``inject_adapter_in_model`` rewrites the tail in place (each ``linear_q/_k/_v/_out`` becomes a peft
``lora.Linear`` holding the original as ``base_layer``), so the tail keeps its class (its BatchNorm-in-eval
``train()`` override still runs) and its place inside the encoder; ``get_peft_model`` would wrap it in a
PeftModel and rename every key. The base weights are frozen here explicitly rather than relying on
peft's default, which only applies when peft owns the whole model.
"""

from __future__ import annotations

from peft import LoraConfig, inject_adapter_in_model
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

# MuQ Conformer attention projections (HF Wav2Vec2ConformerSelfAttention).
ATTENTION_PROJECTIONS = ("linear_q", "linear_k", "linear_v", "linear_out")


class LoraSettings(BaseModel):
    """LoRA hyper-parameters. The seed searches rank 16-64; the demo uses smaller ranks on a narrow tail."""

    model_config = ConfigDict(extra="forbid")

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    # rsLoRA (peft's use_rslora): scale by alpha/sqrt(rank), not alpha/rank, so that a rank search does not
    # also change the adapters' effective learning rate (Kalajdzievski 2023).
    rslora: bool = False
    target_modules: tuple[str, ...] = ATTENTION_PROJECTIONS


def apply_lora(module: nn.Module, settings: LoraSettings) -> nn.Module:
    """Inject LoRA into every Linear of ``module`` named in ``settings.target_modules``; freeze the rest.

    Returns the same module object (modified in place). Only ``lora_A`` / ``lora_B`` weights train.
    """
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_rslora=settings.rslora,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    module = inject_adapter_in_model(config, module)
    n_lora = 0
    for name, param in module.named_parameters():
        is_lora = "lora_" in name
        param.requires_grad_(is_lora)
        n_lora += is_lora
    if n_lora == 0:
        raise ValueError(f"LoRA target_modules {settings.target_modules} matched no Linear layer in the tail")
    return module


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = trainable = 0
    for p in model.parameters():
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def trainable_fraction(model: nn.Module) -> float:
    """Trainable parameters / all parameters (0 for a parameterless module)."""
    trainable, total = count_parameters(model)
    return trainable / total if total else 0.0
