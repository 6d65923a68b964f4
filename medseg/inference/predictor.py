"""Whole-image inference: class probabilities for one volume or image, in the model's input space.

2D models on 3D volumes run slice by slice along data.slice_axis and are stacked back; 3D models
use sliding-window inference with Gaussian blending (or one pass when no patch size is set).
Inputs are padded to data.pad_divisible and cropped back. Optional flip test-time augmentation
averages the probabilities over flips of each spatial axis.
"""

from __future__ import annotations

import itertools
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medseg.precision import Precision


class VolumePredictor:
    def __init__(
        self,
        model: nn.Module,
        data_cfg: Any,
        device: torch.device,
        precision: Precision,
        tta: bool = False,
        overlap: float = 0.25,
        batch_size: int = 4,
    ) -> None:
        self.model, self.device, self.precision = model.eval(), device, precision
        self.dims, self.axis = int(data_cfg.dims), int(data_cfg.slice_axis)
        self.patch = list(data_cfg.patch_size) if data_cfg.patch_size else None
        self.k = int(data_cfg.pad_divisible)
        self.tta, self.overlap, self.batch_size = tta, overlap, max(1, batch_size)

    @torch.no_grad()
    def probabilities(self, image: torch.Tensor) -> torch.Tensor:
        """image (C, *spatial) -> softmax probabilities (K, *spatial), float32 on the CPU."""
        spatial = image.ndim - 1
        if self.dims == 3:
            return self._forward_batched(image[None])[0]
        if spatial == 2:
            return self._forward_batched(image[None])[0]
        slices = image.movedim(self.axis + 1, 0)  # (S, C, a, b)
        outs = [
            self._forward_batched(slices[i : i + self.batch_size]) for i in range(0, slices.shape[0], self.batch_size)
        ]
        return torch.cat(outs, 0).movedim(0, self.axis + 1)  # (K, ...) with the slice axis restored

    def _forward_batched(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device).float()
        size = x.shape[2:]
        padded = F.pad(x, _pad_amounts(size, self.k))
        flips = [()]
        if self.tta:
            axes = list(range(2, padded.ndim))
            flips += [c for r in range(1, len(axes) + 1) for c in itertools.combinations(axes, r)]
        total = None
        for dims in flips:
            inp = padded.flip(dims) if dims else padded
            with self.precision.autocast(self.device):
                logits = self._logits(inp)
            probs = torch.softmax(logits.float(), dim=1)
            probs = probs.flip(dims) if dims else probs
            total = probs if total is None else total + probs
        probs = total / len(flips)
        crop = tuple(slice(0, s) for s in size)
        return probs[(slice(None), slice(None), *crop)].cpu()

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.dims == 3 and self.patch:
            from monai.inferers import sliding_window_inference

            return sliding_window_inference(
                x, self.patch, self.batch_size, self.model, overlap=self.overlap, mode="gaussian"
            )
        return self.model(x)


def _pad_amounts(size: torch.Size, k: int) -> list[int]:
    pads: list[int] = []
    for s in reversed(size):
        pads += [0, (-s) % k]
    return pads


def resize_probabilities(probs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Resize (K, *spatial) probabilities to `shape` (linear interpolation); a no-op when equal."""
    if tuple(probs.shape[1:]) == tuple(shape):
        return probs
    mode = "bilinear" if len(shape) == 2 else "trilinear"
    return F.interpolate(probs[None], size=tuple(shape), mode=mode, align_corners=False)[0]


def to_labels(probs: torch.Tensor, threshold: float | None) -> torch.Tensor:
    """Argmax for multi-class; for two classes, foreground where its probability exceeds `threshold`."""
    if probs.shape[0] == 2 and threshold is not None:
        return (probs[1] > threshold).to(torch.int64)
    return probs.argmax(0)
