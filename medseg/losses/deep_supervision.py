"""Deep supervision as nnU-Net weighs it, on top of MONAI's DeepSupervisionLoss.

A deeply supervised network returns, in training mode, several heads: MONAI DynUNet's stacked tensor
(B, 1 + n_ds, C, *spatial), or a list/tuple [main, deeper, ...]; in eval mode one plain (B, C, *spatial).
`DeepSupervised` accepts all three. Head i gets the weight 1/2^i; with `weights="nnunet"` the last
(lowest-resolution) head gets 0 and the weights are normalised to sum to 1, as nnU-Net v2's trainer
does (nnUNetTrainer._build_loss). `weights="exp"` keeps MONAI's own exp mode (1, 1/2, 1/4, ... floored at
1/16, unnormalised). The per-head loss (trainer.loss, e.g. MONAI DiceCELoss) and the target resizing for
smaller heads are MONAI's DeepSupervisionLoss; this wrapper only unstacks the heads and sets the weights.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medseg.errors import ConfigError

WEIGHT_MODES = ("nnunet", "exp")


def head_weights(n_heads: int, mode: str = "nnunet") -> list[float]:
    """Loss weight of each head, main output first."""
    if mode not in WEIGHT_MODES:
        raise ConfigError(f"trainer.loss.deep_supervision={mode!r} is not known; choose one of {list(WEIGHT_MODES)}")
    if mode == "exp":
        return [max(0.5**i, 0.0625) for i in range(n_heads)]
    weights = [0.5**i for i in range(n_heads)]
    if n_heads > 1:
        weights[-1] = 0.0  # nnU-Net drops the lowest-resolution head
    total = sum(weights)
    return [w / total for w in weights]


def split_heads(output: Any, target: torch.Tensor) -> list[torch.Tensor]:
    """The heads of a network output: a list/tuple as it is; a tensor with one more axis than the
    target (B, 1, *spatial) is DynUNet's stack (B, heads, C, *spatial); otherwise one head."""
    if isinstance(output, (list, tuple)):
        return list(output)
    if output.ndim == target.ndim + 1:
        return list(torch.unbind(output, dim=1))
    return [output]


class DeepSupervised(nn.Module):
    """`loss` over every head of a deeply supervised output, weighted as nnU-Net weighs them."""

    def __init__(self, loss: nn.Module, weights: str = "nnunet") -> None:
        super().__init__()
        from monai.losses import DeepSupervisionLoss

        head_weights(1, weights)  # refuses an unknown mode now, not at the first step
        self.loss, self.mode = loss, weights
        self.wrapped = DeepSupervisionLoss(loss)

    def forward(self, output: Any, target: torch.Tensor) -> torch.Tensor:
        heads = split_heads(output, target)
        if len(heads) == 1:
            return self.loss(heads[0], target)
        weights = head_weights(len(heads), self.mode)
        kept = [(h, w) for h, w in zip(heads, weights) if w > 0]  # a zero-weight head costs no loss evaluation
        self.wrapped.weights = [w for _, w in kept]
        if any(h.shape[2:] != target.shape[2:] for h, _ in kept):  # MONAI resizes the target: nearest on floats
            target = target.float()
        return self.wrapped([h for h, _ in kept], target)
