"""One plain optimizer step (autocast, scaled backward, step) for tools outside the Trainer.

lr_find and the benchmarks time or probe a bare step; the Trainer has its own, with accumulation,
clipping and recovery.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from medseg.precision import Precision


def plain_train_step(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """Forward, backward and step on one batch; returns the detached loss (no host sync)."""
    optimizer.zero_grad(set_to_none=True)
    with precision.autocast(device):
        loss = loss_fn(model(images), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()
