"""A model trained with data.spacing predicts on Spacingd's grid; its prediction must come back onto the input's
own grid where it was, in mm. The check: a structure whose probability is a linear ramp of the world coordinate
(foreground past `edge` mm). Linear resampling reproduces a linear ramp exactly, so after Spacingd (the store's
chain) and the predictor's way back the 0.5 crossing must sit at `edge` up to float32 rounding (a ramp of slope
0.8 / extent per mm read to 1e-6: under 1e-4 mm; the tolerance is 1e-3 mm). A resize by shape put it 0.1 to
0.9 mm off (medseg/benchmarks/spacing_backmap.py prints the figures)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.benchmarks.spacing_backmap import ramp_data_cfg
from medseg.deploy.spacing_inverse import back_transform

CASES = {  # input affine, shape, data.spacing, data.scale
    "down in-plane, up along z": (np.diag([0.7, 0.8, 2.0, 1.0]), (37, 41, 23), (1.0, 1.1, 1.5), 1.0),
    "up on every axis": (np.diag([1.5, 1.5, 3.0, 1.0]), (30, 27, 19), (0.8, 0.9, 1.0), 1.0),
    "down, odd sizes, flipped": (np.diag([-0.5, 0.5, -0.5, 1.0]), (45, 33, 21), (1.3, 0.75, 2.0), 1.0),
    "spacing then data.scale": (np.diag([0.7, 0.8, 2.0, 1.0]), (37, 41, 23), (1.0, 1.1, 1.5), 0.6),
    # axes not orthogonal: sampled trilinearly slice by slice (a ramp of a voxel index is still linear in mm)
    "sheared": (
        np.array([[0.8, 0.2, 0, 0], [0, 0.9, 0.3, 0], [0, 0, 2.2, 0], [0, 0, 0, 1.0]]),
        (31, 29, 13),
        (1.1, 1.0, 1.5),
        1.0,
    ),
}
TOL_MM = 1e-3


def _ramps(affine: np.ndarray, shape: tuple[int, ...]) -> tuple[np.ndarray, list[float], list[np.ndarray]]:
    """(3, *shape) ramps 0.1..0.9 of the mm position along each axis, the edge (mm) where each is 0.5, the mm
    position of each voxel along each axis."""
    steps = np.abs(np.diag(affine)[:3])
    mm = [np.arange(n) * s for n, s in zip(shape, steps)]
    ramps = np.zeros((3, *shape), np.float32)
    for d in range(3):
        view = [1, 1, 1]
        view[d] = shape[d]
        ramps[d] = np.broadcast_to((0.1 + 0.8 * mm[d] / mm[d][-1]).reshape(view), shape)
    return ramps, [0.5 * m[-1] for m in mm], mm


def _central(shape: tuple[int, ...]) -> tuple[slice, ...]:
    """The middle half of each axis: more than a model voxel inside the model grid's outer centres, where the
    forward resampling clipped at the volume's border (border padding) and a ramp is not linear."""
    return tuple(slice(n // 4, n - n // 4) for n in shape)


def _profile(volume: np.ndarray, axis: int) -> np.ndarray:
    """The line of `volume` along `axis` through the middle of the other two axes."""
    index = [n // 2 for n in volume.shape]
    index[axis] = slice(None)
    return volume[tuple(index)]


def _crossing(values: np.ndarray, mm: np.ndarray) -> float:
    """Where a monotone profile crosses 0.5, linearly between the voxels around it (mm)."""
    i = int(np.argmax(values >= 0.5))
    return float(mm[i - 1] + (0.5 - values[i - 1]) / (values[i] - values[i - 1]) * (mm[i] - mm[i - 1]))


def ramp_model(channel: int) -> torch.nn.Module:
    class Ramp(torch.nn.Module):  # logits whose softmax over two classes is (1 - x, x)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            p = x[:, channel : channel + 1].clamp(1e-6, 1 - 1e-6)
            return torch.cat([torch.log1p(-p), torch.log(p)], dim=1)

    return Ramp()


@pytest.mark.parametrize("name", list(CASES))
def test_a_structure_edge_comes_back_where_it_was_in_mm(name, tmp_path):
    """predict / evaluate / val/dice / out-of-fold all map back through VolumePredictor.probability_slices:
    the ramps go through the store's own volume chain (Spacingd, data.scale) and back with the NIfTI's affine."""
    from medseg.data.datasets import plain
    from medseg.data.transforms import volume_transforms
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import Precision

    affine, shape, spacing, scale = CASES[name]
    ramps, edges, mm = _ramps(affine, shape)
    path = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.moveaxis(ramps, 0, -1), affine), str(path))
    cfg = ramp_data_cfg(spacing, scale)
    stored = plain(volume_transforms(cfg, with_label=False)({"image": str(path)})["image"]).float()
    assert tuple(stored.shape[1:]) != shape  # resampled: the way back has work to do
    read_affine = nib.load(str(path)).affine
    for d in range(3):
        model = ramp_model(d)
        predictor = VolumePredictor(model, cfg, torch.device("cpu"), Precision("32", None, False))
        back = np.zeros(shape, np.float32)
        for t, probs in predictor.probability_slices(stored, shape, read_affine):
            back[:, :, t] = probs[1].numpy()
        profile = _profile(back, d)
        assert _crossing(profile, mm[d]) == pytest.approx(edges[d], abs=TOL_MM), f"axis {d}"
        inside = (back - ramps[d])[_central(shape)]
        assert np.abs(inside).max() * mm[d][-1] / 0.8 < TOL_MM, f"axis {d}: positions off inside the grid"
        mask = predictor.labels(stored, shape, 0.5, read_affine).numpy()
        coord = np.moveaxis(np.broadcast_to(mm[d].reshape([-1 if i == d else 1 for i in range(3)]), shape), d, 0)
        far = np.abs(coord - edges[d]) > TOL_MM
        assert np.array_equal(np.moveaxis(mask, d, 0)[far], (coord > edges[d])[far]), f"axis {d}: mask edge"


def test_a_spacing_model_refuses_to_map_back_without_the_affine():
    from medseg.inference.predictor import VolumePredictor
    from medseg.precision import Precision

    cfg = ramp_data_cfg((1.0, 1.0, 1.0), 1.0)
    predictor = VolumePredictor(ramp_model(0), cfg, torch.device("cpu"), Precision("32", None, False))
    with pytest.raises(ValueError, match="affine"):
        predictor.labels(torch.rand(1, 6, 6, 4), (8, 8, 5))


@pytest.mark.parametrize("name", list(CASES))
def test_the_deployed_way_back_puts_the_edge_where_it_was(name):
    """The numpy twin (no torch, no MONAI): its Spacingd twin forward, its streaming way back fed a few slices
    at a time, the same edge test; and the torch stages give the very same values (tests/test_deploy.py
    compares whole masks)."""
    from medseg.deploy.preprocess import geometry
    from medseg.deploy.resample import way_back
    from medseg.deploy.spacing import resample_to_spacing
    from medseg.inference.resample import way_back as torch_way_back

    affine, shape, spacing, scale = CASES[name]
    ramps, edges, mm = _ramps(affine, shape)
    manifest = {"dims": 3, "slice_axis": 2, "scale": scale}
    model_grid = geometry(resample_to_spacing(ramps, affine, spacing), manifest)  # (3, *model shape)
    transform = back_transform(affine, shape, spacing, model_grid.shape[1:])
    along, in_plane = way_back(model_grid.shape[1:], shape, 2, transform)
    torch_along, torch_in_plane = torch_way_back(model_grid.shape[1:], shape, 2, transform)
    back = np.zeros((3, *shape), np.float32)
    vol = np.moveaxis(model_grid, 3, 1)  # (3, S, a, b): slices along z
    for start in range(0, vol.shape[1], 4):
        chunk = np.ascontiguousarray(vol[:, start : start + 4])
        plane, torch_plane = in_plane(chunk), torch_in_plane(torch.from_numpy(chunk))
        assert np.array_equal(plane, torch_plane.numpy())
        ready, torch_ready = list(along.feed(plane)), list(torch_along.feed(torch_plane))
        assert [t for t, _ in ready] == [t for t, _ in torch_ready]
        for (t, values), (_, torch_values) in zip(ready, torch_ready):
            assert np.array_equal(values, torch_values.numpy())
            back[:, :, :, t] = values
    assert along.done() and torch_along.done()
    for d in range(3):
        assert _crossing(_profile(back[d], d), mm[d]) == pytest.approx(edges[d], abs=TOL_MM), f"axis {d}"
        assert np.abs((back[d] - ramps[d])[_central(shape)]).max() * mm[d][-1] / 0.8 < TOL_MM, f"axis {d}"


def test_no_spacing_change_keeps_the_resize_by_shape():
    """An input already at data.spacing (within MONAI's 1e-3 mm) is not resampled, so nothing is mapped back."""
    assert back_transform(np.diag([1.0005, 0.8, 1.5, 1.0]), (10, 12, 8), (1.0, 0.8, 1.5), (10, 12, 8)) is None
