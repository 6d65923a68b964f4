"""How much memory a planned U-Net needs per training step, as nnU-Net v2 estimates it.

nnU-Net does not measure: it counts the elements of every convolution's output feature map for one
sample (encoder, decoder, transposed convs, segmentation heads) and compares the count with a reference
that its authors calibrated on real GPUs: a plain U-Net of 560 M (3D) / 85 M (2D) feature elements per
step fits 8 GB at a batch of 2 (3D) / 12 (2D). The residual-encoder presets carry their own references
(M: 680 M / 135 M at 8 GB, L: 2.1 G / 380 M at 24 GB, XL: 3.6 G / 560 M at 40 GB). The reference
scales linearly with the budget. We use the same counts and constants, so our plans and nnU-Net's agree,
and print the estimate in GB: budget_ref_gb * elements * batch / (reference * reference_batch).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# nnU-Net v2's blocks per stage: plain U-Net (2 convs per stage) and residual encoder (1, 3, 4, 6, 6, ...)
PLAIN_ENCODER_BLOCKS = (2,) * 14
PLAIN_DECODER_BLOCKS = (2,) * 13
RESENC_ENCODER_BLOCKS = (1, 3, 4, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6, 6)
RESENC_DECODER_BLOCKS = (1,) * 13


@dataclass(frozen=True)
class Reference:
    """nnU-Net's calibration: `elements_3d` / `elements_2d` feature elements per sample at `batch_3d` /
    `batch_2d` fill `memory_gb`; `dataset_cover` caps a batch at this share of the dataset's voxels."""

    name: str
    residual: bool
    elements_3d: float
    elements_2d: float
    memory_gb: float
    batch_3d: int = 2
    batch_2d: int = 12
    dataset_cover: float = 0.05
    shrink_to_reference: bool = False


# nnU-Net v2.8.1: ExperimentPlanner, nnUNetPlannerResEncM / L / XL (experiment_planners/)
REFERENCES: dict[str, Reference] = {
    "plain": Reference("plain", False, 560e6, 85e6, 8.0),
    "resenc_m": Reference("resenc_m", True, 680e6, 135e6, 8.0, dataset_cover=1.0, shrink_to_reference=True),
    "resenc_l": Reference("resenc_l", True, 2100e6, 380e6, 24.0, dataset_cover=1.0, shrink_to_reference=True),
    "resenc_xl": Reference("resenc_xl", True, 3600e6, 560e6, 40.0, dataset_cover=1.0, shrink_to_reference=True),
}


def _prod(values: Sequence[int]) -> int:
    return int(math.prod(int(v) for v in values))


def _after(size: Sequence[int], stride: Sequence[int]) -> list[int]:
    return [int(s) // int(t) for s, t in zip(size, stride, strict=True)]


def feature_elements(
    patch_size: Sequence[int],
    strides: Sequence[Sequence[int]],
    features: Sequence[int],
    num_classes: int,
    residual: bool,
    deep_supervision: bool = True,
) -> int:
    """Elements of all conv output feature maps for one sample: nnU-Net's `compute_conv_feature_map_size`
    of PlainConvUNet / ResidualEncoderUNet, counted from the plan alone."""
    stages = len(strides)
    encoder_blocks = (RESENC_ENCODER_BLOCKS if residual else PLAIN_ENCODER_BLOCKS)[:stages]
    decoder_blocks = (RESENC_DECODER_BLOCKS if residual else PLAIN_DECODER_BLOCKS)[: stages - 1]
    total = 0
    size = [int(p) for p in patch_size]
    if residual:
        total += features[0] * _prod(size)  # the stem conv
    sizes = []  # each stage's output size
    for s in range(stages):
        out = _after(size, strides[s])
        if residual:
            first_in = features[0] if s == 0 else features[s - 1]
            projection = first_in != features[s] or out != size  # a 1x1 skip conv on the first block
            total += (2 + int(projection)) * features[s] * _prod(out)
            total += 2 * (encoder_blocks[s] - 1) * features[s] * _prod(out)
        else:
            total += encoder_blocks[s] * features[s] * _prod(out)
        sizes.append(out)
        size = out
    for s in range(stages - 1):  # decoder, from the deepest skip upwards
        level = stages - 2 - s
        voxels = _prod(sizes[level])
        total += decoder_blocks[s] * features[level] * voxels  # conv blocks
        total += features[level] * voxels  # the transposed conv
        if deep_supervision or s == stages - 2:
            total += num_classes * voxels  # the segmentation head
    return total


def estimate_gb(elements: int, batch_size: int, dims: int, reference: Reference) -> float:
    """GB per training step of a configuration of `elements` per sample at `batch_size`, on nnU-Net's scale."""
    ref_elements = reference.elements_3d if dims == 3 else reference.elements_2d
    ref_batch = reference.batch_3d if dims == 3 else reference.batch_2d
    return reference.memory_gb * elements * batch_size / (ref_elements * ref_batch)
