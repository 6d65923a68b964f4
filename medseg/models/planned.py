"""nnU-Net's planned U-Nets, built from MONAI's DynUNet: a plan's stages, strides and kernel sizes per axis
and features per stage; plain (two convs per stage) or with a residual encoder (nnU-Net ResEnc:
1, 3, 4, 6, 6, 6, ... residual blocks per encoder stage); deep supervision on every decoder stage but
the lowest, as nnU-Net trains it.

Why DynUNet rather than nnU-Net's own `dynamic-network-architectures`: installing that package (or
nnunetv2) replaces the pinned torch with another build and CUDA libraries; DynUNet is already a
dependency and builds the same topology (stride per axis, anisotropic kernels, instance norm, leaky ReLU,
transposed-conv upsampling, deep-supervision heads). DynUNet has one block per stage; the residual
encoder stacks MONAI's UnetResBlock per stage (get_input_block / get_downsamples / get_bottleneck).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks import nets
from monai.networks.blocks import UnetBasicBlock, UnetResBlock, UnetUpBlock
from torch import nn

from medseg.errors import ConfigError
from medseg.models.checkpointing import BlockCheckpointing
from medseg.models.monai_nets import _widths

RESENC_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)  # nnU-Net ResEnc presets, per encoder stage


class PlannedUNet(BlockCheckpointing, nets.DynUNet):
    """A U-Net of a plan. Train mode with deep supervision returns a list of logits, the full-resolution
    output first, then each deeper head at its own resolution (as nnU-Net does:
    the training loss (medseg.losses.deep_supervision) shrinks the target to each head). DynUNet
    itself would upsample every head to full size and stack them, which for many classes costs more memory
    than the whole network (TotalSegmentator, 118 classes: 4 heads x 118 x 112 x 112 x 128 floats per
    sample). Eval mode returns the main output."""

    checkpoint_blocks = (UnetBasicBlock, UnetResBlock, UnetUpBlock)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        features_per_stage: Sequence[int] = (32, 64, 128, 256),
        strides: Sequence[Sequence[int]] | None = None,
        kernel_sizes: Sequence[Sequence[int]] | None = None,
        residual: bool = False,
        deep_supervision: bool = True,
        dropout: float | None = None,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        chans = _widths(features_per_stage, width)
        stages = len(chans)
        strides = [list(s) for s in strides] if strides else [[1] * spatial_dims] + [[2] * spatial_dims] * (stages - 1)
        kernels = [list(k) for k in kernel_sizes] if kernel_sizes else [[3] * spatial_dims] * stages
        if len(strides) != stages or len(kernels) != stages:
            raise ConfigError(
                f"model.strides ({len(strides)}) and model.kernel_sizes ({len(kernels)}) need one entry per stage of"
                f" model.features_per_stage ({stages}); take all three from one plan (plan=auto)"
            )
        if any(len(s) != spatial_dims for s in [*strides, *kernels]):
            raise ConfigError(
                f"model.strides / model.kernel_sizes need {spatial_dims} values per stage for data.dims={spatial_dims}"
            )
        if stages < 3 and deep_supervision:
            deep_supervision = False  # no decoder stage between the output and the lowest one
        object.__setattr__(self, "_encoder_blocks", RESENC_BLOCKS[:stages] if residual else None)
        super().__init__(
            spatial_dims=spatial_dims,
            in_channels=in_channels,
            out_channels=out_channels,
            kernel_size=kernels,
            strides=strides,
            upsample_kernel_size=strides[1:],
            filters=chans,
            dropout=dropout or None,
            deep_supervision=deep_supervision,
            deep_supr_num=max(1, stages - 2),
            res_block=residual,
            trans_bias=False,
        )
        self.residual = residual
        self.variant = "resenc" if residual else "plain"
        self._setup_checkpointing(grad_checkpointing)

    # residual encoder: several residual blocks per stage (the first one strides)
    def _stage(self, index: int, in_c: int, out_c: int) -> nn.Module:
        blocks = [
            UnetResBlock(
                self.spatial_dims,
                in_c,
                out_c,
                self.kernel_size[index],
                self.strides[index],
                self.norm_name,
                self.act_name,
                dropout=self.dropout,
            )
        ]
        for _ in range(self._encoder_blocks[index] - 1):
            blocks.append(
                UnetResBlock(
                    self.spatial_dims,
                    out_c,
                    out_c,
                    self.kernel_size[index],
                    1,
                    self.norm_name,
                    self.act_name,
                    dropout=self.dropout,
                )
            )
        return nn.Sequential(*blocks) if len(blocks) > 1 else blocks[0]

    def get_input_block(self) -> nn.Module:
        if not self._encoder_blocks:
            return super().get_input_block()
        return self._stage(0, self.in_channels, self.filters[0])

    def get_downsamples(self) -> nn.ModuleList:
        if not self._encoder_blocks:
            return super().get_downsamples()
        n = len(self.filters)
        return nn.ModuleList(self._stage(i, self.filters[i - 1], self.filters[i]) for i in range(1, n - 1))

    def get_bottleneck(self) -> nn.Module:
        if not self._encoder_blocks:
            return super().get_bottleneck()
        n = len(self.filters)
        return self._stage(n - 1, self.filters[-2], self.filters[-1])

    def get_upsamples(self) -> nn.ModuleList:
        # the decoder is plain in both variants (one conv block per stage), as in nnU-Net's ResEnc U-Net
        saved, self.conv_block = self.conv_block, UnetBasicBlock
        try:
            return super().get_upsamples()
        finally:
            self.conv_block = saved

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        out = self.output_block(self.skip_layers(x))
        if self.training and self.deep_supervision:
            return [out, *self.heads]  # the skip layers filled self.heads on the way up
        return out
