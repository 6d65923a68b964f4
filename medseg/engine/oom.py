"""What to do after an out-of-memory error in a training step.

The loop asks `OomRecovery` for the micro-batch size and calls `recover()` after an attempt failed,
outside the `except` block, so that the failed attempt's activations and graph are already released.
Remedies, in order: switch on gradient checkpointing (when the model offers it), then halve the
micro-batch (5 -> 2 -> 1). The new size applies at once, to the rest of the batch that failed and to
every later batch.

The loader keeps its batch size: each loaded batch is cut on the host into micro-batches of the
current size (5 -> 2 gives 2 + 2 + 1). So the samples, their order and augmentation, the effective
batch per optimizer step and the LR schedule's step count are those of the run without the error,
and a resumed run reads the same batches.

An error in the forward pass leaves the gradients accumulated so far intact. An error in the
backward pass may have added part of the failed micro-batch to some gradients: then the whole
accumulation group is recomputed from its batches (kept on the host), and the log says so.
"""

from __future__ import annotations

import gc
import logging

import torch
from torch import nn

from medseg.errors import TrainingError

log = logging.getLogger(__name__)


class OomRecovery:
    def __init__(self, enabled: bool, micro_batch_size: int) -> None:
        self.enabled = enabled
        self.micro_batch_size = int(micro_batch_size)  # 0 = the loader's batch, whatever it is
        self.in_backward = False  # set by the loop around backward(): an error there spoils the gradient

    def split(self, n: int) -> int:
        """Samples in the next micro-batch when n are left in the loaded batch."""
        return n if self.micro_batch_size <= 0 else min(n, self.micro_batch_size)

    def recover(self, model: nn.Module, failed_size: int) -> bool:
        """Apply the next remedy after an out-of-memory error; True when the accumulated gradient must be rebuilt."""
        spoiled, self.in_backward = self.in_backward, False
        if not self.enabled:
            raise TrainingError("out of memory in a training step; lower data.batch_size or data.scale")
        free_memory()
        if not getattr(model, "grad_checkpointing", True) and hasattr(model, "set_grad_checkpointing"):
            model.set_grad_checkpointing(True)
            log.warning("out of memory: switched on gradient checkpointing; retrying the micro-batch")
        elif failed_size < 2:
            raise TrainingError("out of memory with a micro-batch of 1; lower data.scale or choose a smaller model")
        else:
            self.micro_batch_size = failed_size // 2
            log.warning(
                "out of memory: micro-batch %d -> %d from now on; each loaded batch is split, so the effective"
                " batch and the LR schedule stay the same",
                failed_size,
                self.micro_batch_size,
            )
        if spoiled:
            log.warning("out of memory in the backward pass: the accumulation group is recomputed from its start")
        return spoiled


def free_memory() -> None:
    """Return cached blocks to the device once nothing refers to the failed attempt any more."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
