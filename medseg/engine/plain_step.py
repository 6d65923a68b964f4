"""One plain optimizer step (autocast, scaled backward, step) for tools outside the Trainer.

lr_find and the benchmarks time or probe a bare step; the Trainer has its own, with clipping and
recovery.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from medseg.precision import Precision


def plain_train_step(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    precision: Precision,
    device: torch.device,
    micro_batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
) -> torch.Tensor:
    """One optimizer step on the mean gradient of the (images, labels) micro-batches, as training with
    trainer.accumulate_grad_batches = len(micro_batches) steps; returns their mean loss, detached (no
    host sync)."""
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for images, labels in micro_batches:
        with precision.autocast(device):
            loss = loss_fn(model(images), labels) / len(micro_batches)
        scaler.scale(loss).backward()
        total += loss.detach().float()
    scaler.step(optimizer)
    scaler.update()
    return total
