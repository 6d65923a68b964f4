"""The volume stage of medseg/data/transforms.py in numpy: spacing, intensity preset, then in-plane scale
or size.

The spacing step is medseg/deploy/spacing.py (MONAI's Spacingd); the rest is a twin of MONAI's
ScaleIntensity / NormalizeIntensity / ScaleIntensityRange(Percentiles) / Zoom / Resize as medseg
configures them, because the deployed predictor may not import torch or MONAI. The formulas
are MONAI's (rescale_array, unbiased=False std, linear interpolation with align_corners=False); sums run
in a different order than PyTorch's, so values agree to float32 rounding (tests compare the masks).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from medseg.deploy.resample import linear_resize
from medseg.deploy.spacing import resample_to_spacing
from medseg.errors import ConfigError


def _rescale(x: np.ndarray, lo: float = 0.0, hi: float = 1.0) -> np.ndarray:
    mina, maxa = x.min(), x.max()
    if mina == maxa:
        return x * np.float32(lo)
    return (x - mina) / (maxa - mina) * np.float32(hi - lo) + np.float32(lo)


def _zscore(c: np.ndarray) -> np.ndarray:
    """(c - mean) / std with the population std; a constant input is only centred."""
    mean, std = np.float32(c.mean(dtype=np.float64)), np.float32(c.std(dtype=np.float64))
    return c - mean if std == 0 else (c - mean) / std


def intensity(image: np.ndarray, spec: dict[str, Any]) -> np.ndarray:
    """image (C, *spatial) float32 -> normalised as the training run's data.intensity preset."""
    preset = spec["preset"]
    x = image.astype(np.float32, copy=False)
    if preset == "none":
        return x
    if preset == "minmax":
        return np.stack([_rescale(c) for c in x]).astype(np.float32)
    if preset == "zscore":
        return np.stack([_zscore(c) for c in x]).astype(np.float32)
    if preset == "zscore_nonzero":  # inside each channel's non-zero voxels; zeros stay 0 (NormalizeIntensity)
        out = []
        for c in x:
            mask = c != 0
            c = c.copy()
            if mask.any():
                c[mask] = _zscore(c[mask])
            out.append(c)
        return np.stack(out).astype(np.float32)
    if preset == "ct_zscore":  # the plan's CT normalisation: clip to ct_window, z-score with the foreground stats
        a_min, a_max = (float(v) for v in spec["ct_window"])
        mean, std = float(spec["mean"][0]), float(spec["std"][0])
        b_min, b_max = (a_min - mean) / std, (a_max - mean) / std
        if a_max == a_min:
            return (x - np.float32(a_min) + np.float32(b_min)).astype(np.float32)
        y = (x - np.float32(a_min)) / np.float32(a_max - a_min) * np.float32(b_max - b_min) + np.float32(b_min)
        return np.clip(y, np.float32(b_min), np.float32(b_max)).astype(np.float32)
    if preset == "percentile":
        lo_p, hi_p = spec["percentiles"]
        out = []
        for c in x:
            lo, hi = np.percentile(c, lo_p), np.percentile(c, hi_p)
            scaled = (c - np.float32(lo)) / np.float32(hi - lo) if hi != lo else c - np.float32(lo)
            out.append(np.clip(scaled, 0.0, 1.0))
        return np.stack(out).astype(np.float32)
    if preset == "ct":
        a_min, a_max = (float(v) for v in spec["ct_window"])
        return np.clip((x - np.float32(a_min)) / np.float32(a_max - a_min), 0.0, 1.0).astype(np.float32)
    if preset == "imagenet":
        x = _rescale(x)
        mean, std = list(spec["mean"]), list(spec["std"])
        if x.shape[0] != len(mean):
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        shape = (len(mean),) + (1,) * (x.ndim - 1)
        return ((x - np.asarray(mean, np.float32).reshape(shape)) / np.asarray(std, np.float32).reshape(shape)).astype(
            np.float32
        )
    raise ConfigError(f"manifest intensity preset {preset!r} is not known")


def geometry(image: np.ndarray, manifest: dict[str, Any]) -> np.ndarray:
    """In-plane scale (data.scale) or size (data.image_size); a 2D model on a volume keeps the slice axis."""
    spatial = image.ndim - 1
    dims, axis = int(manifest["dims"]), int(manifest["slice_axis"])
    size = manifest.get("image_size")
    if size:
        target = list(size)
        if spatial == 3 and dims == 2:
            target.insert(axis, image.shape[1 + axis])
        return linear_resize(image, {d + 1: int(t) for d, t in enumerate(target)})
    scale = float(manifest.get("scale", 1.0))
    if scale == 1.0:
        return image
    factors = [scale] * spatial
    if spatial == 3 and dims == 2:
        factors[axis] = 1.0
    return linear_resize(image, {d + 1: int(np.floor(s * f)) for d, (s, f) in enumerate(zip(image.shape[1:], factors))})


def prepare(image: np.ndarray, manifest: dict[str, Any], affine: np.ndarray | None = None) -> np.ndarray:
    """Raw image (C, *spatial) -> the model's input space, as training's volume stage. A model trained with
    data.spacing (manifest "spacing") needs the image's 4x4 affine: the volume is resampled to that
    spacing first, as Spacingd runs before the intensity preset in training."""
    spacing = manifest.get("spacing")
    if spacing:
        assert affine is not None and image.ndim == 4, "data.spacing resampling needs a volume and its affine"
        image = resample_to_spacing(image, affine, spacing)
    return geometry(intensity(image, manifest["intensity"]), manifest)
