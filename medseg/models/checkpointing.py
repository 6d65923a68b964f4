"""Activation (gradient) checkpointing of chosen blocks, switchable at run time.

A network class mixes in `BlockCheckpointing`, names its block types in `checkpoint_blocks`, and
calls `self._setup_checkpointing(enabled)` at the end of `__init__`. In training with gradients on,
each such block then keeps only its inputs and recomputes its activations in the backward pass:
less memory for about a third more compute. The blocks' forwards are wrapped in place, so parameter
names (and therefore checkpoints) are the same with and without it. The trainer switches it on
after an out-of-memory error through `set_grad_checkpointing`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


class BlockCheckpointing:
    checkpoint_blocks: tuple[type[nn.Module], ...] = ()
    grad_checkpointing: bool = False

    def _setup_checkpointing(self, enabled: bool) -> None:
        assert isinstance(self, nn.Module)
        for module in self.modules():
            if module is not self and isinstance(module, self.checkpoint_blocks):
                if not getattr(module, "_medseg_wrapped", False):
                    module.forward = _checkpointed(module, module.forward)
                    module._medseg_wrapped = True
        self.set_grad_checkpointing(enabled)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = bool(enabled)
        assert isinstance(self, nn.Module)
        for module in self.modules():
            if getattr(module, "_medseg_wrapped", False):
                module._medseg_checkpoint = bool(enabled)

    def checkpointed_block_count(self) -> int:
        assert isinstance(self, nn.Module)
        return sum(1 for m in self.modules() if getattr(m, "_medseg_wrapped", False))


def _checkpointed(block: nn.Module, forward: Callable[..., Any]) -> Callable[..., Any]:
    def run(*args: Any, **kwargs: Any) -> Any:
        if getattr(block, "_medseg_checkpoint", False) and block.training and torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run


def scale_channels(channels: int, width: float, multiple: int = 4) -> int:
    """`channels` x `width`, rounded to a multiple of `multiple` (norm groups and heads need it), at least one."""
    if width <= 0:
        from medseg.errors import ConfigError

        raise ConfigError(f"model.width={width} must be > 0 (1.0 = the configured size)")
    return max(multiple, int(round(channels * width / multiple)) * multiple)
