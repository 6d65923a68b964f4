"""How a U-Net pools a patch: stages, strides and kernel sizes per axis (nnU-Net v2's rule).

An axis is pooled at a stage when its feature map is still at least twice the minimum edge length and
its current spacing is within a factor 2 of the finest pooled axis: a coarse (anisotropic) axis waits
until the fine axes have caught up, so the network sees roughly isotropic context at every stage. A
lone axis is pooled only while it stays three times the minimum edge. Kernels are 3 on an axis once its
spacing is within a factor 2 of the finest, 1 before (a coarse axis gets in-plane convolutions first).
The patch is then padded up to a multiple of 2**pools per axis.

nnU-Net builds this in `get_pool_and_conv_props`; we plan without importing nnU-Net (it replaces the
pinned torch), so the rule is written here, checked against nnU-Net by medseg.benchmarks.plan_vs_nnunet.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Topology:
    """Per stage (the first stage has stride 1 on every axis): strides and conv kernel sizes; the patch
    padded to a multiple of `divisible_by` per axis."""

    strides: list[list[int]]
    kernel_sizes: list[list[int]]
    patch_size: list[int]
    divisible_by: list[int]

    @property
    def num_stages(self) -> int:
        return len(self.strides)

    @property
    def pools_per_axis(self) -> list[int]:
        return [int(round(math.log2(d))) for d in self.divisible_by]


def pool_and_conv(spacing: Sequence[float], patch_size: Sequence[int], min_edge: int = 4) -> Topology:
    """The topology for `patch_size` voxels at `spacing` mm (any number of axes)."""
    dims = len(spacing)
    current_spacing = [float(s) for s in spacing]
    current_size = [float(p) for p in patch_size]
    pools = [0] * dims
    kernel = [1] * dims
    strides: list[list[int]] = [[1] * dims]
    kernels: list[list[int]] = []
    while True:
        poolable = [a for a in range(dims) if current_size[a] >= 2 * min_edge]
        if not poolable:
            break
        # nnU-Net compares the spacing of the d-th size-poolable axis below (not of axis d); kept so plans agree
        poolable_spacings = [current_spacing[a] for a in poolable]
        finest = min(poolable_spacings)
        poolable = [a for a in poolable if current_spacing[a] / finest < 2]
        if len(poolable) == 1 and current_size[poolable[0]] < 3 * min_edge:
            break
        if not poolable:
            break
        for d in range(dims):
            if kernel[d] != 3 and d < len(poolable_spacings) and poolable_spacings[d] / min(current_spacing) < 2:
                kernel[d] = 3
        stride = [1] * dims
        for a in poolable:
            stride[a] = 2
            pools[a] += 1
            current_spacing[a] *= 2
            current_size[a] = math.ceil(current_size[a] / 2)
        strides.append(stride)
        kernels.append(list(kernel))
    kernels.append([3] * dims)  # the bottleneck: 3 on every axis
    divisible = [2**p for p in pools]
    return Topology(strides, kernels, pad_to_multiple(patch_size, divisible), divisible)


def pad_to_multiple(shape: Sequence[int], multiple: Sequence[int]) -> list[int]:
    """Each size rounded up to a multiple of its divisor."""
    return [int(math.ceil(float(s) / int(m)) * int(m)) for s, m in zip(shape, multiple, strict=True)]
