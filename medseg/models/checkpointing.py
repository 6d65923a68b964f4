"""Activation (gradient) checkpointing of chosen blocks, switchable at run time.

A network class mixes in `BlockCheckpointing`, names its block types in `checkpoint_blocks`, and
calls `self._setup_checkpointing(enabled)` at the end of `__init__`. In training with gradients on,
each such block then keeps only its inputs and recomputes its activations in the backward pass:
less memory for about a third more compute. Parameter names (and therefore checkpoints) are the same
with and without it. The trainer switches it on
after an out-of-memory error through `set_grad_checkpointing`.
"""

from __future__ import annotations

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
                if not isinstance(module, _Checkpointable):
                    module.__class__ = _checkpointable(type(module))
        self.set_grad_checkpointing(enabled)

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        assert isinstance(self, nn.Module)
        self.grad_checkpointing = bool(enabled)
        for module in self.modules():
            if isinstance(module, _Checkpointable):
                module.checkpoint_activations = bool(enabled)

    def checkpointed_block_count(self) -> int:
        assert isinstance(self, nn.Module)
        return sum(1 for m in self.modules() if isinstance(m, _Checkpointable))


class _Checkpointable:
    """Marker base of the block classes made by `_checkpointable`."""

    checkpoint_activations = False


_CLASSES: dict[type[nn.Module], type[nn.Module]] = {}


def _checkpointable(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of `cls` whose forward runs under torch.utils.checkpoint when switched on.

    Swapping the block's class (rather than patching its forward) keeps deepcopy and state dicts intact.
    """
    if cls not in _CLASSES:

        def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
            run = super(sub, self).forward
            if self.checkpoint_activations and self.training and torch.is_grad_enabled():
                return checkpoint(run, *args, use_reentrant=False, **kwargs)
            return run(*args, **kwargs)

        sub = type(cls.__name__, (cls, _Checkpointable), {"forward": forward, "__module__": cls.__module__})
        _CLASSES[cls] = sub
    return _CLASSES[cls]


def scale_channels(channels: int, width: float, multiple: int = 4) -> int:
    """`channels` x `width`, rounded to a multiple of `multiple` (norm groups and heads need it), at least one."""
    if width <= 0:
        from medseg.errors import ConfigError

        raise ConfigError(f"model.width={width} must be > 0 (1.0 = the configured size)")
    return max(multiple, int(round(channels * width / multiple)) * multiple)
