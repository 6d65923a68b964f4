"""MONAI networks behind thin adapters: the same constructor keywords as every medseg model
(in_channels, out_channels, spatial_dims from the data; `width` and `grad_checkpointing` from the
config), switchable block checkpointing, and input-size handling where a network needs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from monai.networks import nets
from monai.networks.blocks import UnetBasicBlock, UnetResBlock, UnetrUpBlock, UnetUpBlock
from monai.networks.blocks.segresnet_block import ResBlock
from monai.networks.blocks.transformerblock import TransformerBlock
from monai.networks.nets.attentionunet import ConvBlock
from monai.networks.nets.swin_unetr import SwinTransformerBlock

from medseg.errors import ConfigError
from medseg.models.checkpointing import BlockCheckpointing, scale_channels


def _widths(channels: Sequence[int], width: float, multiple: int = 4) -> list[int]:
    return [int(c) if width == 1 else scale_channels(int(c), width, multiple) for c in channels]


class AttentionUNet(BlockCheckpointing, nets.AttentionUnet):
    """U-Net with attention gates on the skips (Oktay et al. 2018); strides of 2 between levels."""

    checkpoint_blocks = (ConvBlock,)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        kernel_size: int = 3,
        dropout: float = 0.0,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        chans = _widths(channels, width)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            channels=chans,
            strides=[2] * (len(chans) - 1),
            kernel_size=kernel_size,
            up_kernel_size=kernel_size,
            dropout=dropout,
        )
        self._setup_checkpointing(grad_checkpointing)


class SegResNet(BlockCheckpointing, nets.SegResNet):
    """Residual encoder-decoder (Myronenko 2018), group norm; `upsample_mode` deconv | nontrainable | pixelshuffle."""

    checkpoint_blocks = (ResBlock,)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        init_filters: int = 16,
        blocks_down: Sequence[int] = (1, 2, 2, 4),
        blocks_up: Sequence[int] = (1, 1, 1),
        upsample_mode: str = "nontrainable",
        dropout: float | None = None,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            spatial_dims=spatial_dims,
            init_filters=_widths([init_filters], width, 8)[0],  # group norm with 8 groups
            in_channels=in_channels,
            out_channels=out_channels,
            dropout_prob=dropout or None,
            blocks_down=tuple(blocks_down),
            blocks_up=tuple(blocks_up),
            upsample_mode=upsample_mode,
        )
        self._setup_checkpointing(grad_checkpointing)


class DynUNet(BlockCheckpointing, nets.DynUNet):
    """nnU-Net style U-Net: 3x3 kernels, stride 1 then 2 per level, instance norm, leaky ReLU.

    With `deep_supervision`, training-mode forward returns a list of full-size logits (main output
    first, then the deeper heads); the training task wraps the loss in MONAI's DeepSupervisionLoss and
    the trainer's metrics use the first. Eval mode returns the main output only.
    """

    checkpoint_blocks = (UnetBasicBlock, UnetResBlock, UnetUpBlock)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        filters: Sequence[int] = (16, 32, 64, 128),
        res_block: bool = False,
        deep_supervision: bool = False,
        deep_supr_num: int = 1,
        dropout: float | None = None,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        chans = _widths(filters, width)
        if deep_supervision and not 1 <= deep_supr_num <= len(chans) - 2:
            raise ConfigError(
                f"model.deep_supr_num={deep_supr_num} must be between 1 and {len(chans) - 2}"
                f" for {len(chans)} levels; lower it or add levels to model.filters"
            )
        strides = [1] + [2] * (len(chans) - 1)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=[3] * len(chans),
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=chans,
            dropout=dropout or None,
            deep_supervision=deep_supervision,
            deep_supr_num=deep_supr_num,
            res_block=res_block,
        )
        self._setup_checkpointing(grad_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = super().forward(x)
        if self.training and self.deep_supervision:
            return list(torch.unbind(out, dim=1))  # (B, heads, C, ...) -> [main, deeper...]
        return out


class _FixedSizeInput:
    """For networks with position embeddings: inputs of another size are resized to `img_size` and
    the logits resized back, so validation and prediction on other sizes still work."""

    img_size: tuple[int, ...]

    def _resize_call(self, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        size = tuple(x.shape[2:])
        if size == self.img_size:
            return run(x)
        mode = "bilinear" if len(size) == 2 else "trilinear"
        logits = run(F.interpolate(x, size=self.img_size, mode=mode, align_corners=False))
        return F.interpolate(logits, size=size, mode=mode, align_corners=False)


def _img_size(img_size: Sequence[int] | None, spatial_dims: int, name: str) -> tuple[int, ...]:
    if not img_size:
        raise ConfigError(
            f"model={name} needs a fixed input size: set data.image_size=[H,W] (2D) or data.patch_size (3D),"
            " or model.img_size"
        )
    size = tuple(int(s) for s in img_size)
    if len(size) != spatial_dims:
        raise ConfigError(f"model.img_size={list(size)} has {len(size)} values but data.dims={spatial_dims}")
    return size


class UNETR(BlockCheckpointing, _FixedSizeInput, nets.UNETR):
    """ViT encoder with a convolutional decoder (Hatamizadeh et al. 2022); 2D and 3D, 16-pixel patches."""

    checkpoint_blocks = (TransformerBlock, UnetrUpBlock)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        img_size: Sequence[int] | None = None,
        image_size: Sequence[int] | None = None,
        patch_size: Sequence[int] | None = None,
        feature_size: int = 16,
        hidden_size: int = 768,
        mlp_dim: int = 3072,
        num_heads: int = 12,
        dropout: float = 0.0,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        size = _img_size(img_size or (image_size if spatial_dims == 2 else patch_size), spatial_dims, "unetr")
        if any(s % 16 for s in size):
            raise ConfigError(f"model.img_size={list(size)}: UNETR needs sizes divisible by 16")
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            img_size=size,
            feature_size=_widths([feature_size], width)[0],
            hidden_size=hidden_size,
            mlp_dim=mlp_dim,
            num_heads=num_heads,
            dropout_rate=dropout,
            spatial_dims=spatial_dims,
        )
        self.img_size = size
        self._setup_checkpointing(grad_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._resize_call(x, super().forward)


class SwinUNETR(BlockCheckpointing, nets.SwinUNETR):
    """Swin Transformer encoder with a convolutional decoder (Hatamizadeh et al. 2022); 2D and 3D.

    Input sizes must be divisible by 32 and at least 64; `feature_size` divisible by 12.
    """

    checkpoint_blocks = (SwinTransformerBlock, UnetrUpBlock)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 3,
        feature_size: int = 24,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        window_size: int = 7,
        dropout: float = 0.0,
        use_v2: bool = False,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__(
            in_channels=in_channels,
            out_channels=out_channels,
            feature_size=_widths([feature_size], width, 12)[0],
            depths=tuple(depths),
            num_heads=tuple(num_heads),
            window_size=window_size,
            drop_rate=dropout,
            spatial_dims=spatial_dims,
            use_v2=use_v2,
        )
        self._setup_checkpointing(grad_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(s % 32 or s < 64 for s in x.shape[2:]):
            raise ConfigError(
                f"swinunetr needs input sizes divisible by 32 and at least 64, got {list(x.shape[2:])};"
                " set data.pad_divisible=32 and a data.image_size / data.patch_size of 64 or more"
            )
        return super().forward(x)
