"""Resolve `trainer.precision` for the device: autocast dtype and whether a GradScaler is needed."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from medseg.errors import ConfigError

log = logging.getLogger(__name__)

CHOICES = ("32", "16-mixed", "bf16-mixed")


@dataclass
class Precision:
    name: str
    dtype: torch.dtype | None  # autocast dtype; None = full fp32
    use_scaler: bool

    def autocast(self, device: torch.device) -> torch.autocast:
        return torch.autocast(
            device_type=device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None
        )


def resolve_precision(requested: str, device: torch.device) -> Precision:
    requested = str(requested)
    if requested not in CHOICES:
        raise ConfigError(f"trainer.precision={requested!r} is not known; choose one of {', '.join(CHOICES)}")
    if requested == "32":
        return Precision("32", None, False)
    if device.type == "cuda":
        if requested == "bf16-mixed" and not torch.cuda.is_bf16_supported():
            log.warning("precision: bf16-mixed not supported on this GPU; using 16-mixed")
            return Precision("16-mixed", torch.float16, True)
        if requested == "bf16-mixed":
            return Precision("bf16-mixed", torch.bfloat16, False)
        return Precision("16-mixed", torch.float16, True)
    if requested == "16-mixed":
        log.warning("precision: 16-mixed needs a CUDA device; using 32 on %s", device.type)
        return Precision("32", None, False)
    return Precision("bf16-mixed", torch.bfloat16, False)
