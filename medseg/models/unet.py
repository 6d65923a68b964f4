"""The classic U-Net: double-conv blocks, max-pool down, transposed-conv or bilinear up.

Depth and width follow `channels`; works in 2D and 3D. With `bilinear=True` the up path
interpolates and halves channels with the following convolution, as in the classic PyTorch U-Net.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from medseg.models.checkpointing import scale_channels


def _conv(dims: int) -> type[nn.Module]:
    return nn.Conv2d if dims == 2 else nn.Conv3d


def _norm(kind: str, dims: int, channels: int) -> nn.Module:
    if kind == "batch":
        return (nn.BatchNorm2d if dims == 2 else nn.BatchNorm3d)(channels)
    if kind == "instance":
        return (nn.InstanceNorm2d if dims == 2 else nn.InstanceNorm3d)(channels, affine=True)
    if kind == "group":
        return nn.GroupNorm(min(8, channels), channels)
    raise ValueError(f"model.norm={kind!r}: choose batch, instance or group")


class DoubleConv(nn.Sequential):
    """(conv => norm => ReLU) x 2."""

    def __init__(self, dims: int, c_in: int, c_out: int, norm: str, dropout: float = 0.0) -> None:
        conv = _conv(dims)
        layers: list[nn.Module] = [
            conv(c_in, c_out, 3, padding=1, bias=False),
            _norm(norm, dims, c_out),
            nn.ReLU(inplace=True),
            conv(c_out, c_out, 3, padding=1, bias=False),
            _norm(norm, dims, c_out),
            nn.ReLU(inplace=True),
        ]
        if dropout > 0:
            layers.append((nn.Dropout2d if dims == 2 else nn.Dropout3d)(dropout))
        super().__init__(*layers)


class Up(nn.Module):
    """Upsample the deeper features, concatenate the skip, then DoubleConv."""

    def __init__(self, dims: int, c_deep: int, c_skip: int, c_out: int, bilinear: bool, norm: str) -> None:
        super().__init__()
        self.bilinear, self.dims = bilinear, dims
        if bilinear:
            self.up = None
            self.conv = DoubleConv(dims, c_deep + c_skip, c_out, norm)
        else:
            tconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.up = tconv(c_deep, c_deep // 2, kernel_size=2, stride=2)
            self.conv = DoubleConv(dims, c_deep // 2 + c_skip, c_out, norm)

    def forward(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        if self.up is None:
            mode = "bilinear" if self.dims == 2 else "trilinear"
            deep = F.interpolate(deep, size=skip.shape[2:], mode=mode, align_corners=False)
        else:
            deep = self.up(deep)
            if deep.shape[2:] != skip.shape[2:]:  # odd sizes: pad to the skip's size
                deep = F.interpolate(deep, size=skip.shape[2:], mode="nearest")
        return self.conv(torch.cat([skip, deep], dim=1))


class UNet(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        channels: list[int] | tuple[int, ...] = (16, 32, 64, 128),
        bilinear: bool = False,
        norm: str = "instance",
        dropout: float = 0.0,
        grad_checkpointing: bool = False,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("model.channels needs at least two levels")
        chans = [int(c) if width == 1 else scale_channels(int(c), width) for c in channels]
        pool = nn.MaxPool2d if spatial_dims == 2 else nn.MaxPool3d
        self.inc = DoubleConv(spatial_dims, in_channels, chans[0], norm)
        self.downs = nn.ModuleList(
            nn.Sequential(pool(2), DoubleConv(spatial_dims, chans[i], chans[i + 1], norm, dropout))
            for i in range(len(chans) - 1)
        )
        self.ups = nn.ModuleList(
            Up(spatial_dims, chans[i + 1], chans[i], chans[i], bilinear, norm) for i in reversed(range(len(chans) - 1))
        )
        self.head = _conv(spatial_dims)(chans[0], out_channels, kernel_size=1)
        self.grad_checkpointing = grad_checkpointing

    def set_grad_checkpointing(self, enabled: bool = True) -> None:
        """Recompute block activations in the backward pass: less memory, about a third more compute."""
        self.grad_checkpointing = enabled

    def _run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [self._run(self.inc, x)]
        for down in self.downs:
            skips.append(self._run(down, skips[-1]))
        out = skips.pop()
        for up in self.ups:
            out = self._run(up, out, skips.pop())
        return self.head(out)
