"""How a batch becomes logits: a plain forward for 2D, sliding windows (Gaussian) for 3D patches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn


def make_inferer(
    data_cfg: Any, overlap: float = 0.25, sw_batch_size: int = 4
) -> Callable[[torch.Tensor, nn.Module], torch.Tensor]:
    if int(data_cfg.dims) == 3 and data_cfg.patch_size:
        from monai.inferers import sliding_window_inference

        roi = list(data_cfg.patch_size)

        def window(images: torch.Tensor, model: nn.Module) -> torch.Tensor:
            return sliding_window_inference(images, roi, sw_batch_size, model, overlap=overlap, mode="gaussian")

        return window
    return lambda images, model: model(images)
