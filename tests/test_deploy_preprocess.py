"""The deployed volume stage (medseg/deploy/spacing.py, preprocess.py) against MONAI's transforms as
training runs them: data.spacing resampling and every intensity preset the manifest accepts."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest


def _rotated(angles: tuple[float, float, float], zooms: tuple[float, float, float]) -> np.ndarray:
    (a, b, c) = angles
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ ry @ rx @ np.diag(zooms)
    affine[:3, 3] = [5.0, -6.0, 7.0]
    return affine


AFFINES = {
    "flipped": np.diag([-0.7, -0.8, 2.0, 1.0]),
    "rotated": _rotated((0.3, -0.2, 0.5), (0.9, 1.1, 2.5)),
    "sheared": np.array([[0.8, 0.2, 0, 0], [0, 0.9, 0.3, 0], [0, 0, 2.2, 0], [0, 0, 0, 1.0]]),
    "one axis at the target": np.diag([1.0005, 0.8, 1.5, 1.0]),  # within MONAI's 1e-3: kept, not resampled
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_numpy_spacing_equals_monai_spacingd(name, tmp_path):
    """The deployed resampler against MONAI's Spacingd as training runs it, on a two-channel NIfTI: the same
    grid and values to one float32 rounding step (MONAI forms its coordinates through normalised grid
    coordinates, the twin directly; both in float64)."""
    import torch
    from monai import transforms as T

    from medseg.data.image_loading import load_imaged
    from medseg.deploy.spacing import resample_to_spacing

    rng = np.random.default_rng(5)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(rng.normal(0, 100, (23, 19, 9, 2)).astype(np.float32), AFFINES[name]), path)
    chain = T.Compose(
        [
            load_imaged(keys="image", image_only=True, ensure_channel_first=True),
            T.Spacingd(keys=["image"], pixdim=[1.0, 1.0, 1.5], mode=["bilinear"]),
            T.EnsureTyped(keys=["image"], dtype=torch.float32, track_meta=False),
        ]
    )
    expect = chain({"image": str(path)})["image"].numpy()
    img = nib.load(str(path))
    got = resample_to_spacing(np.moveaxis(np.asarray(img.dataobj, dtype=np.float32), -1, 0), img.affine, [1, 1, 1.5])
    assert got.dtype == np.float32 and got.shape == expect.shape
    assert np.all(np.abs(got - expect) <= np.spacing(np.abs(expect))), float(np.abs(got - expect).max())


INTENSITY = {
    "none": {},
    "minmax": {},
    "zscore": {},
    "zscore_nonzero": {},
    "percentile": {"percentiles": [0.5, 99.5]},
    "ct": {"ct_window": [-150.0, 250.0]},
    "ct_zscore": {"ct_window": [-150.0, 250.0], "mean": [40.0], "std": [60.0]},
    "imagenet": {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}


@pytest.mark.parametrize("preset", list(INTENSITY))
def test_numpy_intensity_equals_monai_for_every_manifest_preset(preset):
    """A CT-like volume with a zero background (what zscore_nonzero leaves alone)."""
    import torch
    from omegaconf import OmegaConf

    from medseg.data.transforms import intensity_transforms
    from medseg.deploy.manifest import PRESETS
    from medseg.deploy.preprocess import intensity

    assert set(INTENSITY) == set(PRESETS)
    rng = np.random.default_rng(7)
    channels = 1 if preset == "imagenet" else 2  # imagenet: a grey image takes the mean RGB statistics
    image = rng.normal(40, 300, (channels, 17, 13, 6)).astype(np.float32)
    image[:, :4] = 0.0
    spec = {"preset": preset, **INTENSITY[preset]}
    chain = intensity_transforms(OmegaConf.create(spec))
    expect = torch.as_tensor(image.copy())
    for transform in chain:
        expect = transform({"image": expect})["image"]
    expect = np.asarray(expect, dtype=np.float32)
    got = intensity(image.copy(), spec)
    assert got.dtype == np.float32 and got.shape == expect.shape
    if preset == "zscore_nonzero":
        assert np.array_equal(got[:, :4], np.zeros_like(got[:, :4]))
    # statistics are summed in another order than PyTorch's: float32 rounding, not an algorithm difference
    assert np.allclose(got, expect, rtol=1e-5, atol=1e-5), float(np.abs(got - expect).max())
