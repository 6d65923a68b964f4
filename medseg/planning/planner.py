"""The plan: target spacing, patch, topology, features and batch size per configuration, from a dataset
fingerprint and a memory budget, by nnU-Net v2's rules (ExperimentPlanner / ResEncUNetPlanner).

- target spacing: the median spacing; for strongly anisotropic data (the coarsest axis more than 3x the
  others in spacing, and fewer than a third of their voxels) the coarse axis takes its 10th percentile;
- patch: start from a 256^3 (3D) / 2048^2 (2D) voxel patch shaped like the physical aspect ratio, clip it
  to the median image, pool it (medseg.planning.topology), then shrink the axis largest relative to the
  median image by one pooling step until a batch of 2 fits the budget (medseg.planning.memory);
- features: 32 doubling per stage, capped at 320 (3D) / 512 (2D);
- batch: what the budget allows, at most 5% of the dataset's voxels (plain U-Net), at least 2;
- normalisation: CT channels clipped to the foreground 0.5-99.5 percentiles and z-scored with the
  foreground mean and std; other channels z-scored per case (inside the non-zero region when cropping to
  it removes more than a quarter of the image).

Everything is returned in medseg's axis order (the order the arrays are read in); internally the axes are
ordered as nnU-Net orders them (coarsest spacing first), so ties break the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from medseg.errors import ConfigError
from medseg.planning.memory import REFERENCES, Reference, estimate_gb, feature_elements
from medseg.planning.topology import pool_and_conv

ANISOTROPY = 3.0  # nnU-Net's ANISO_THRESHOLD
BASE_FEATURES = 32
MAX_FEATURES = {2: 512, 3: 320}
MIN_EDGE = 4  # feature map edge at the bottleneck
MIN_BATCH = 2
INITIAL_VOXELS = {2: 2048**2, 3: 256**3}
LOWEST_BUDGET_GB = 0.25  # below this no plan is attempted


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> list[float]:
    """The median spacing, with nnU-Net's rule for an axis much coarser (and much shorter) than the others."""
    spacings_arr = np.asarray(spacings, dtype=np.float64)
    target = np.percentile(spacings_arr, 50, axis=0)
    median_size = np.percentile(np.asarray(shapes, dtype=np.float64), 50, axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    if not others:
        return [float(t) for t in target]
    other_spacing = max(target[a] for a in others)
    aniso_spacing = target[worst] > ANISOTROPY * other_spacing
    aniso_voxels = median_size[worst] * ANISOTROPY < min(median_size[a] for a in others)
    if aniso_spacing and aniso_voxels:
        coarse = float(np.percentile(spacings_arr[:, worst], 10))
        if coarse < other_spacing:  # never finer than the other axes
            coarse = max(other_spacing, coarse) + 1e-5
        target[worst] = coarse
    return [float(t) for t in target]


def axis_order(spacing: Sequence[float]) -> list[int]:
    """The axes in the order nnU-Net plans them for a NIfTI: SimpleITK reads the array reversed, and nnU-Net
    puts the coarsest axis first (the first maximum of the reversed order), the others after it as read.
    So ties go to the highest medseg axis (the slice axis of a NIfTI, axis 2), as they do in nnU-Net."""
    reversed_axes = list(range(len(spacing)))[::-1]
    nn_spacing = [spacing[a] for a in reversed_axes]
    coarse = int(np.argmax(nn_spacing))
    nn_order = [coarse] + [i for i in range(len(spacing)) if i != coarse]
    return [reversed_axes[i] for i in nn_order]


def resampled_shape(shape: Sequence[int], spacing: Sequence[float], target: Sequence[float]) -> list[int]:
    return [int(round(s / t * n)) for n, s, t in zip(shape, spacing, target, strict=True)]


def features_per_stage(stages: int, dims: int) -> list[int]:
    return [min(MAX_FEATURES[dims], BASE_FEATURES * 2**i) for i in range(stages)]


def plan_configuration(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    num_classes: int,
    dataset_voxels: float,
    memory_gb: float,
    reference: Reference,
    budget_key: str = "hardware.memory_gb",
) -> dict[str, Any]:
    """One configuration (2D or 3D, in the given axis order): patch, topology, features and batch size."""
    dims = len(spacing)
    inverse = 1.0 / np.asarray(spacing, dtype=np.float64)
    initial = [round(float(i)) for i in inverse * (INITIAL_VOXELS[dims] / np.prod(inverse)) ** (1 / dims)]
    initial = [min(i, m) for i, m in zip(initial, median_shape, strict=True)]
    topo = pool_and_conv(spacing, initial, MIN_EDGE)
    ref_elements = (reference.elements_3d if dims == 3 else reference.elements_2d) * memory_gb / reference.memory_gb
    ref_batch = reference.batch_3d if dims == 3 else reference.batch_2d

    def elements(t: Any) -> int:
        # as nnU-Net counts while planning: the final segmentation head only (its planner builds the
        # network without deep supervision)
        features = features_per_stage(t.num_stages, dims)
        return feature_elements(t.patch_size, t.strides, features, num_classes, reference.residual, False)

    estimate = elements(topo)
    must_fit = ref_batch if reference.shrink_to_reference else MIN_BATCH
    while estimate / ref_batch * must_fit > ref_elements:
        patch = list(topo.patch_size)
        axis = int(np.argsort([p / m for p, m in zip(patch, median_shape, strict=True)])[-1])
        trial = list(patch)
        trial[axis] -= topo.divisible_by[axis]
        step = pool_and_conv(spacing, trial, MIN_EDGE).divisible_by[axis]  # the step the smaller patch pools by
        patch[axis] -= step
        if min(patch) < 2 * MIN_EDGE or patch[axis] <= 0:
            raise ConfigError(
                f"{budget_key}={memory_gb:g}: no patch of a {dims}D U-Net fits a batch of {must_fit} in it"
                f" (reached {patch} voxels); give a larger budget (e.g. {budget_key}=4)"
            )
        topo = pool_and_conv(spacing, patch, MIN_EDGE)
        estimate = elements(topo)
    # nnU-Net rounds here (up to half a sample over its target); we floor, so a plan never exceeds its budget
    batch = math.floor(ref_elements / estimate * ref_batch)
    cap = round(dataset_voxels * reference.dataset_cover / math.prod(topo.patch_size))
    batch = max(min(batch, cap), MIN_BATCH)
    features = features_per_stage(topo.num_stages, dims)
    return {
        "patch_size": [int(p) for p in topo.patch_size],
        "batch_size": int(batch),
        "num_stages": topo.num_stages,
        "strides": topo.strides,
        "kernel_sizes": topo.kernel_sizes,
        "features_per_stage": features,
        "feature_elements": int(estimate),
        "estimated_memory_gb": round(estimate_gb(estimate, batch, dims, reference), 3),
        "median_shape": [float(m) for m in median_shape],
    }


def normalization(fingerprint: dict[str, Any]) -> list[dict[str, Any]]:
    """Per channel: CT clipped to the foreground percentiles and z-scored with the foreground mean and std;
    others z-scored per case (inside the non-zero region when cropping to it removes over a quarter)."""
    out = []
    use_mask = float(fingerprint.get("median_relative_size_after_cropping", 1.0)) < 0.75
    for channel, stats in zip(fingerprint["channel_names"], fingerprint["foreground_intensity"], strict=True):
        if str(channel).strip().lower() == "ct":
            out.append(
                {
                    "scheme": "ct",
                    "clip": [float(stats["percentile_00_5"]), float(stats["percentile_99_5"])],
                    "mean": float(stats["mean"]),
                    "std": float(stats["std"]),
                }
            )
        else:
            out.append({"scheme": "zscore", "nonzero_mask": use_mask})
    return out


def _reorder(values: Sequence[Any], order: Sequence[int]) -> list[Any]:
    """Values given in `order` (transposed axes) back in the original axis order."""
    out: list[Any] = [None] * len(order)
    for position, axis in enumerate(order):
        out[axis] = values[position]
    return out


def make_plan(
    fingerprint: dict[str, Any],
    memory_gb: float,
    network: str = "plain",
    budget_key: str = "hardware.memory_gb",
) -> dict[str, Any]:
    """The plan of every configuration (`2d`, and `3d_fullres` for 3D data) in medseg's axis order."""
    if network not in REFERENCES:
        raise ConfigError(f"plan.network={network!r} is not known; choose one of {', '.join(REFERENCES)}")
    if memory_gb is None or not math.isfinite(float(memory_gb)) or float(memory_gb) < LOWEST_BUDGET_GB:
        raise ConfigError(
            f"{budget_key}={memory_gb}: a plan needs a memory budget of at least {LOWEST_BUDGET_GB} GB;"
            f" set {budget_key}=8 (nnU-Net's default) or pick hardware=4gb|8gb|16gb+|24gb|40gb|48gb|80gb"
        )
    memory_gb = float(memory_gb)
    reference = REFERENCES[network]
    spacings = fingerprint["spacings"]
    shapes = fingerprint["shapes_after_crop"]
    ndim = len(shapes[0])
    num_classes = int(fingerprint["num_classes"])
    num_cases = int(fingerprint["num_cases"])
    target = target_spacing(spacings, shapes)
    order = axis_order(target) if ndim == 3 else list(range(ndim))[::-1]
    new_shapes = [resampled_shape(sh, sp, target) for sh, sp in zip(shapes, spacings, strict=True)]
    median = np.median(np.asarray(new_shapes, dtype=np.float64), axis=0)
    median_t = [float(median[a]) for a in order]
    spacing_t = [target[a] for a in order]
    dataset_voxels = float(np.prod(median_t, dtype=np.float64) * num_cases)
    common = {"network": network, "memory_budget_gb": memory_gb, "normalization": normalization(fingerprint)}
    configs: dict[str, Any] = {}
    if ndim == 3 and median_t[0] > 1:
        c = plan_configuration(spacing_t, median_t, num_classes, dataset_voxels, memory_gb, reference, budget_key)
        configs["3d_fullres"] = {
            "dims": 3,
            "target_spacing": target,
            **_in_axis_order(c, order),
            **common,
        }
    in_plane = order[1:] if ndim == 3 else order
    c = plan_configuration(
        [target[a] for a in in_plane],
        [float(median[a]) for a in in_plane],
        num_classes,
        dataset_voxels,
        memory_gb,
        reference,
        budget_key,
    )
    sorted_plane = sorted(in_plane)  # medseg's 2D slices keep the remaining axes in their order
    position = [in_plane.index(a) for a in sorted_plane]
    c2 = {k: ([v[p] for p in position] if k in ("patch_size", "median_shape") else v) for k, v in c.items()}
    c2["strides"] = [[s[p] for p in position] for s in c["strides"]]
    c2["kernel_sizes"] = [[s[p] for p in position] for s in c["kernel_sizes"]]
    configs["2d"] = {
        "dims": 2,
        "slice_axis": int(order[0]) if ndim == 3 else None,
        "target_spacing": target,
        "median_slice_spacing": float(np.median([sp[order[0]] for sp in spacings])) if ndim == 3 else None,
        **c2,
        **common,
    }
    return {
        "planner": "medseg (nnU-Net v2 rules)",
        "network": network,
        "memory_budget_gb": memory_gb,
        "axis_order": "medseg (as the arrays are read; nnU-Net's transpose undone)",
        "median_spacing": [float(s) for s in np.median(np.asarray(spacings, dtype=np.float64), axis=0)],
        "configurations": configs,
    }


def _in_axis_order(c: dict[str, Any], order: Sequence[int]) -> dict[str, Any]:
    out = dict(c)
    out["patch_size"] = _reorder(c["patch_size"], order)
    out["median_shape"] = _reorder(c["median_shape"], order)
    out["strides"] = [_reorder(s, order) for s in c["strides"]]
    out["kernel_sizes"] = [_reorder(k, order) for k in c["kernel_sizes"]]
    return out
