"""Where a prediction lands in mm after the data.spacing round trip: the input resampled to the target spacing
by the store's own chain (MONAI Spacingd), then mapped back to the input's grid by the predictor.

    python -m medseg.benchmarks.spacing_backmap

Each case is a NIfTI volume whose channel d is a linear ramp of the world coordinate along axis d. A stand-in
"model" returns logits whose softmax is (ramp, 1 - ramp), so `VolumePredictor.probability_slices` hands back
the ramp itself on the input's grid, through the same resampling as predict, evaluate, val/dice and the
out-of-fold predictions. Linear interpolation reproduces a linear ramp exactly, so any difference between the
returned ramp and the voxel's true world coordinate is a displacement of the prediction; it is printed in mm
per axis (first slice, last slice, largest between the first and the last model voxel centre, largest over
the volume: beyond the model grid's outer centres values are clipped, as MONAI's inverse clips them).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

CASES = [  # (input spacing, input shape, data.spacing, data.scale)
    ((0.7, 0.8, 2.0), (37, 41, 23), (1.0, 1.1, 1.5), 1.0),  # down in-plane, up along z
    ((1.5, 1.5, 3.0), (30, 27, 19), (0.8, 0.9, 1.0), 1.0),  # up on every axis
    ((0.5, 0.5, 0.5), (45, 33, 21), (1.3, 0.75, 2.0), 1.0),  # down, odd sizes
    ((0.7, 0.8, 2.0), (37, 41, 23), (1.0, 1.1, 1.5), 0.6),  # spacing, then data.scale
]


def ramp_model(channel: int):  # noqa: ANN201
    """A module whose logits have the softmax (x, 1 - x) over two classes for an input x in (0, 1)."""
    import torch
    from torch import nn

    class Ramp(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = x[:, channel : channel + 1].clamp(1e-6, 1 - 1e-6)
            return torch.cat([torch.log(p), torch.log1p(-p)], dim=1)

    return Ramp()


def ramp_data_cfg(spacing: tuple[float, ...], scale: float):  # noqa: ANN201
    """The data settings a ramp case is read with: 3D, one volume, the given data.spacing and data.scale."""
    from omegaconf import OmegaConf

    return OmegaConf.create(
        {
            "dims": 3,
            "slice_axis": 2,
            "patch_size": None,
            "pad_divisible": 1,
            "context_slices": 0,
            "spacing": list(spacing),
            "image_size": None,
            "scale": scale,
            "layout": "msd",
            "intensity": {"preset": "none"},
        }
    )


def round_trip(folder: Path, spacing, shape, target, scale, channel: int, image: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """Channel `channel` of `image` (C, *shape) after Spacingd (and data.scale) and the predictor's back-mapping."""
    import nibabel as nib
    import torch

    from medseg.data.datasets import plain
    from medseg.data.transforms import volume_transforms
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import Precision

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = [-3.0, 5.0, 11.0]
    path = folder / "case.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(image, 0, -1).astype(np.float32), affine), str(path))
    cfg = ramp_data_cfg(target, scale)
    stored = plain(volume_transforms(cfg, with_label=False)({"image": str(path)})["image"]).float()
    predictor = VolumePredictor(ramp_model(channel), cfg, torch.device("cpu"), Precision("32", None, False))
    out = np.zeros(shape, np.float32)
    for t, probs in _slices(predictor, stored, shape, nib.load(str(path)).affine):
        out[:, :, t] = probs[0].numpy()
    return out


def _slices(predictor, stored, shape, affine):  # noqa: ANN001, ANN202
    import inspect

    if "affine" in inspect.signature(predictor.probability_slices).parameters:
        return predictor.probability_slices(stored, tuple(shape), affine=affine)
    return predictor.probability_slices(stored, tuple(shape))  # before the geometric back-mapping


def measure(spacing, shape, target, scale) -> dict[str, list[float]]:  # noqa: ANN001
    spacing, shape = np.asarray(spacing, float), tuple(shape)
    coords = [np.arange(n) * s for n, s in zip(shape, spacing)]  # mm from the first voxel centre
    extent = [c[-1] for c in coords]
    ramps = np.stack(
        [np.broadcast_to(_expand(0.1 + 0.8 * c / e, d), shape) for d, (c, e) in enumerate(zip(coords, extent))]
    )
    figures: dict[str, list[float]] = {"first": [], "last": [], "inside": [], "max": []}
    with tempfile.TemporaryDirectory() as tmp:
        for d in range(3):
            back = round_trip(Path(tmp), spacing, shape, target, scale, d, ramps)
            err = (back - ramps[d]) / 0.8 * extent[d]  # mm
            along = np.moveaxis(err, d, 0)
            figures["first"].append(float(along[0].mean()))
            figures["last"].append(float(along[-1].mean()))
            figures["max"].append(float(np.abs(err).max()))
            inside = _covered(coords[d], shape[d], spacing[d], target[d], scale)
            figures["inside"].append(float(np.abs(along[inside]).max()))
    return figures


def _covered(coords: np.ndarray, n: int, spacing: float, target: float, scale: float) -> np.ndarray:
    """Input voxels between the first and the last model voxel centre (mm from the first input centre): Spacingd's
    grid starts at the first input centre with round(extent / target) + 1 voxels, data.scale then resizes it
    (centres at (m + 0.5) * S / M - 0.5). Outside, the model has no voxel: values are clipped (border)."""
    grid = round((n - 1) * spacing / target) + 1 if abs(spacing - target) > 1e-3 else n
    model = int(np.floor(grid * scale)) if scale != 1.0 else grid
    first, last = ((np.array([0.5, model - 0.5]) * grid / model - 0.5) * (target if grid != n else spacing)).tolist()
    return (coords >= first - 1e-6) & (coords <= last + 1e-6)


def _expand(v: np.ndarray, axis: int) -> np.ndarray:
    shape = [1, 1, 1]
    shape[axis] = len(v)
    return v.reshape(shape)


def main() -> None:
    print("position error after the round trip, mm per axis (x, y, z)")
    for spacing, shape, target, scale in CASES:
        f = measure(spacing, shape, target, scale)
        print(f"input {spacing} mm {shape} -> data.spacing {target}, data.scale {scale}")
        for key, label in (
            ("first", "first slice"),
            ("last", "last slice"),
            ("inside", "inside the grid"),
            ("max", "largest |error|"),
        ):
            print(f"  {label:16s} " + "  ".join(f"{v:+.3f}" for v in f[key]))


if __name__ == "__main__":
    main()
