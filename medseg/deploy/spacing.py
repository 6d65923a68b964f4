"""Resampling a volume to the training run's data.spacing in numpy: a twin of MONAI's Spacingd as
medseg/data/transforms.py configures it (bilinear, border padding, align_corners=False, float64, the
defaults otherwise), because the deployed predictor may not import torch or MONAI.

MONAI's steps, each here in numpy:
- the input spacing is the norm of each column of the affine (`affine_to_spacing`); an axis whose spacing
  is already within 1e-3 mm of the target keeps it;
- the output affine keeps the input's rotation with the target spacing (`zoom_affine`, diagonal=False:
  a Cholesky split of the affine's 3x3 part), its shape and origin come from where the input's corner
  voxels land (`compute_shape_offset`, scale_extent=False);
- output voxel i samples the input at xform @ i, xform = inv(input affine) @ output affine, with
  trilinear weights and coordinates clipped to the volume (grid_sample's border padding), in float64,
  then rounded to float32. When the affine and shape are unchanged (to 1e-3) the image is returned as is.
For an affine with orthogonal columns (any NIfTI without shear, every DICOM series medseg reads) xform
is a diagonal scale and shift, so the trilinear interpolation is done one axis at a time; a sheared
affine is sampled point by point. MONAI forms its coordinates through normalised grid coordinates, this
twin directly, so the float64 values differ in their last bits and, after the cast, a few values in a
million differ by 1 float32 ulp (tests/test_deploy_preprocess.py bounds it; the masks are compared in
tests/test_deploy.py).

The way back (medseg/deploy/spacing_inverse.py) is the geometric inverse of this resampling, as MONAI's
Spacingd inverse (SpatialResample) does it: each voxel of the input's own grid samples the model-grid
prediction at the position where that voxel's centre lies on the model grid (both affines), linearly,
coordinates clipped to the grid. A resize by shape (align_corners=False centring) would assume the two
grids share their outer edges, which Spacingd's grid (anchored at the corner voxel centres, its length
rounded) does not: predictions would come back shifted by up to about a voxel at the far end.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

AFFINE_TOL = 1e-3  # monai.data.utils.AFFINE_TOL
CHUNK_VOXELS = 1 << 22  # output voxels sampled at once for a sheared affine (bounds the gather's memory)


def affine_spacing(affine: np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) of a 4x4 affine: the norm of each of its first three columns (zeros -> 1)."""
    spacing = np.sqrt(np.sum(affine[:3, :3] ** 2, axis=0))
    spacing[spacing == 0] = 1.0
    return spacing


def target_grid(
    affine: np.ndarray, shape: Sequence[int], pixdim: Sequence[float]
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(output affine, xform, output shape); xform maps an output voxel index to the input voxel it samples."""
    affine = np.asarray(affine, dtype=np.float64)
    original = affine_spacing(affine)
    out_d = np.asarray(pixdim, dtype=np.float64)[:3].copy()
    keep = np.abs(original - out_d) <= AFFINE_TOL
    out_d[keep] = original[keep]
    rzs = affine[:3, :3]
    zs = np.linalg.cholesky(rzs.T @ rzs).T
    rotation = rzs @ np.linalg.inv(zs)
    new = np.eye(4)
    new[:3, :3] = rotation @ np.diag(np.sign(np.diag(zs)) * np.abs(out_d))
    out_shape, offset = _shape_offset(shape, affine, new)
    new[:3, 3] = offset
    return new, np.linalg.solve(affine, new), out_shape


def _shape_offset(shape: Sequence[int], in_affine: np.ndarray, out_affine: np.ndarray) -> tuple[list[int], np.ndarray]:
    """MONAI's compute_shape_offset (scale_extent=False): the shape that holds the input's corner voxel
    centres, and the world position of the corner that becomes the output origin."""
    size = np.asarray(shape, dtype=float)
    ranges = [(0.0, d - 1.0) for d in size]
    corners = np.asarray(np.meshgrid(*ranges, indexing="ij")).reshape((3, -1))
    corners = np.concatenate((corners, np.ones_like(corners[:1])))
    corners_out = np.linalg.solve(out_affine, in_affine) @ corners
    world = in_affine @ corners
    dist = corners_out[:-1].copy()
    corners_out = corners_out[:-1] / corners_out[-1]
    out_shape = np.round(np.ptp(corners_out, axis=1) + 1.0)
    offset = None
    for i in range(world.shape[1]):
        if np.allclose(np.min(dist - dist[:, i : i + 1], 1), 0.0, rtol=AFFINE_TOL):
            offset = world[:-1, i]
            break
    if offset is None:  # no corner is smallest on every axis: centre the output on the input
        offset = in_affine[:-1, :-1] @ (size / 2.0) + in_affine[:-1, -1] - out_affine[:-1, :-1] @ (out_shape / 2.0)
    return [int(s) for s in out_shape], offset


def grid_unchanged(
    new: np.ndarray, affine: np.ndarray, xform: np.ndarray, out_shape: list[int], shape: Sequence[int]
) -> bool:
    """Spacingd returns the image as it is (MONAI's SpatialResample shortcut)."""
    same = np.allclose(new, affine, atol=AFFINE_TOL) or np.allclose(xform, np.eye(4), atol=AFFINE_TOL)
    return bool(same and np.allclose(out_shape, shape))


def _separable_xform(xform: np.ndarray, out_shape: Sequence[int]) -> bool:
    """xform is a scale and shift per axis (no shear, to below float64 rounding of the coordinates)."""
    linear = xform[:3, :3]
    return bool(np.abs(linear - np.diag(np.diag(linear))).max() * max(out_shape) < 1e-10)


def resample_to_spacing(image: np.ndarray, affine: np.ndarray, pixdim: Sequence[float]) -> np.ndarray:
    """image (C, X, Y, Z) with its 4x4 affine -> (C, *new shape) float32 on the grid of spacing `pixdim`."""
    shape = image.shape[1:]
    new, xform, out_shape = target_grid(affine, shape, pixdim)
    if grid_unchanged(new, affine, xform, out_shape, shape):
        return image.astype(np.float32, copy=False)
    if _separable_xform(xform, out_shape):
        return _separable(image, xform, out_shape)
    return _pointwise(image, xform, out_shape)


def border_weights(coords: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Border-clipped linear sampling positions: (lower index, upper index, weight of the upper)."""
    c = np.clip(coords, 0.0, size - 1.0)
    i0 = np.floor(c).astype(np.int64)
    return i0, np.minimum(i0 + 1, size - 1), c - i0


def _separable(image: np.ndarray, xform: np.ndarray, out_shape: list[int]) -> np.ndarray:
    out = image.astype(np.float64)
    for axis in range(3):
        i0, i1, w = border_weights(
            xform[axis, axis] * np.arange(out_shape[axis]) + xform[axis, 3], image.shape[axis + 1]
        )
        shape = [1] * out.ndim
        shape[axis + 1] = len(w)
        w = w.reshape(shape)
        lo = np.take(out, i0, axis=axis + 1)  # in place below: three float64 volumes at most, not five
        lo *= 1.0 - w
        hi = np.take(out, i1, axis=axis + 1)
        hi *= w
        lo += hi
        out = lo
        del hi
    return out.astype(np.float32)


def _pointwise(image: np.ndarray, xform: np.ndarray, out_shape: list[int]) -> np.ndarray:
    src = image.astype(np.float64)
    size = image.shape[1:]
    out = np.empty((image.shape[0], *out_shape), dtype=np.float32)
    plane = out_shape[1] * out_shape[2]
    step = max(1, CHUNK_VOXELS // plane)
    for start in range(0, out_shape[0], step):
        grid = np.mgrid[start : min(start + step, out_shape[0]), : out_shape[1], : out_shape[2]].reshape(3, -1)
        coords = xform[:3, :3] @ grid + xform[:3, 3:]
        (x0, x1, wx), (y0, y1, wy), (z0, z1, wz) = (border_weights(coords[d], size[d]) for d in range(3))
        total = np.zeros((image.shape[0], grid.shape[1]))
        for xi, xw in ((x0, 1.0 - wx), (x1, wx)):
            for yi, yw in ((y0, 1.0 - wy), (y1, wy)):
                for zi, zw in ((z0, 1.0 - wz), (z1, wz)):
                    total += src[:, xi, yi, zi] * (xw * yw * zw)
        out[:, start : start + grid.shape[1] // plane] = total.reshape(image.shape[0], -1, *out_shape[1:])
    return out
