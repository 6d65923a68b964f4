"""nnU-Net's training augmentation on whole batches of torch tensors, after collation.

MONAI's transforms (the per-item chain in medseg/data/transforms.py) resample and filter one item at
a time in the loader workers. This module does the same operations for a whole batch at once: one
combined affine grid per sample (rotation, scaling and the crop from the larger read region) through a
single F.affine_grid / F.grid_sample call on the batch, and the intensity operations as batched tensor
arithmetic on the samples drawn for them. It runs in the loader workers after collation on the CPU, or
on the GPU in the training process when training there (`data.augment.device`). The reason for this
hand-written twin of MONAI's RandAffine / RandGaussianNoise / RandGaussianSmooth / RandScaleIntensity /
RandScaleIntensityFixedMean / RandSimulateLowResolution / RandAdjustContrast / RandFlip: batching, one
resampling for all spatial transforms and running on the device (figures in docs/recipe.md).

Order, probabilities and ranges follow nnU-Net v2.8.1 (nnUNetTrainer.get_training_transforms): spatial
(rotation p 0.2, scaling p 0.2, one factor for all axes), Gaussian noise, Gaussian blur, brightness
(multiplicative), contrast (around the mean, range preserved), low-resolution simulation, gamma on the
inverted image, gamma, mirroring (p 0.5 per axis). Where nnU-Net draws per channel (blur, low-res) a
sample is drawn with the product of its two probabilities, for all channels together.
Random numbers come from one generator per batch, seeded from the items' own seeds (make_loader gives
each item one from (seed, epoch, rank, index)), so the stream does not depend on the number of workers.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from medseg.data.label_resampling import resample_labels


@dataclass
class AugmentSettings:
    """The data.augment keys the batched augmentation reads (conf/augment/*.yaml documents them)."""

    flip_prob: float = 0.0
    rotation_prob: float = 0.0
    rotation_deg: float = 0.0
    scaling_prob: float = 0.0
    scaling: tuple[float, float] = (0.7, 1.4)
    noise_prob: float = 0.0
    noise_std: float = 0.0
    blur_prob: float = 0.0
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    brightness_prob: float = 0.0
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast_prob: float = 0.0
    contrast: tuple[float, float] = (0.75, 1.25)
    lowres_prob: float = 0.0
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    gamma_invert_prob: float = 0.0
    gamma_prob: float = 0.0
    gamma: tuple[float, float] = (0.7, 1.5)

    @property
    def spatial(self) -> bool:
        return self.rotation_prob > 0 or self.scaling_prob > 0


def rotation_degrees(aug: Any, dims: int, patch: Sequence[int] | None) -> float:
    """data.augment.rotation_deg, or nnU-Net's rule when null: 3D 30 degrees; 2D 180, or 15 when the
    patch is more than 1.5 times longer than wide."""
    given = aug.get("rotation_deg") if hasattr(aug, "get") else None
    if given is not None:
        return float(given)
    if dims == 3:
        return 30.0
    if patch and max(patch) / max(1, min(patch)) > 1.5:
        return 15.0
    return 180.0


def settings_from(aug: Any, dims: int, patch: Sequence[int] | None = None) -> AugmentSettings:
    def get(key: str, default: Any) -> Any:
        value = aug.get(key, default) if hasattr(aug, "get") else default
        return default if value is None else value

    pair = lambda key, d: (float(get(key, d)[0]), float(get(key, d)[1]))  # noqa: E731
    return AugmentSettings(
        flip_prob=float(get("flip_prob", 0.0)),
        rotation_prob=float(get("rotation_prob", 0.0)),
        rotation_deg=rotation_degrees(aug, dims, patch),
        scaling_prob=float(get("scaling_prob", 0.0)),
        scaling=pair("scaling", (0.7, 1.4)),
        noise_prob=float(get("noise_prob", 0.0)),
        noise_std=float(get("noise_std", 0.0)),
        blur_prob=float(get("blur_prob", 0.0)),
        blur_sigma=pair("blur_sigma", (0.5, 1.0)),
        brightness_prob=float(get("brightness_prob", 0.0)),
        brightness=pair("brightness", (0.75, 1.25)),
        contrast_prob=float(get("contrast_prob", 0.0)),
        contrast=pair("contrast", (0.75, 1.25)),
        lowres_prob=float(get("lowres_prob", 0.0)),
        lowres_zoom=pair("lowres_zoom", (0.5, 1.0)),
        gamma_invert_prob=float(get("gamma_invert_prob", 0.0)),
        gamma_prob=float(get("gamma_prob", 0.0)),
        gamma=pair("gamma", (0.7, 1.5)),
    )


def read_size(patch: Sequence[int], settings: AugmentSettings) -> list[int]:
    """The region to read around a patch so that rotation and scaling mostly find image content:
    nnU-Net v2.8.1's initial patch size (get_patch_size: the patch's corner rotated by up to the angle,
    capped at 90 degrees, about each axis, then divided by 0.85, the scale nnU-Net uses there), so both
    loaders read and resample the same amount."""
    patch = [int(p) for p in patch]
    if not settings.spatial:
        return patch
    angle = math.radians(min(90.0, settings.rotation_deg)) if settings.rotation_prob > 0 else 0.0
    lo = 0.85
    coords = np.asarray(patch, dtype=np.float64)
    final = coords.copy()
    # batchgenerators' rotate_coords_3d about x, y, z in turn (its sign convention), 2D about the one axis
    for a, b, sign in [(0, 1, 1.0)] if len(patch) == 2 else [(1, 2, 1.0), (0, 2, -1.0), (0, 1, 1.0)]:
        c, s = math.cos(angle), sign * math.sin(angle)
        rotated = coords.copy()
        rotated[a], rotated[b] = c * coords[a] + s * coords[b], -s * coords[a] + c * coords[b]
        final = np.maximum(final, np.abs(rotated))
    return [int(v) for v in final / lo]


class BatchAugment:
    """Augment a collated batch {"image": (B, C, *in), "label": (B, 1, *in), "seed": (B,)} to `out_size`.

    `out_size` null keeps the input's size; a larger input is the read region around the patch, of which
    the centre (transformed) is kept.
    """

    def __init__(
        self, settings: AugmentSettings, dims: int, out_size: Sequence[int] | None = None, device: str = "cpu"
    ) -> None:
        self.s, self.dims = settings, int(dims)
        self.out_size = [int(v) for v in out_size] if out_size else None
        self.device = torch.device(device)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        """`batch` as collated, or with "image" and "label" still lists of per-sample tensors (the
        collate step hands them over unstacked: the crop or resampling is their only copy; read
        regions are larger only for the samples to be resampled, "spatial" (B, 2) says which)."""
        image, label = batch["image"], batch["label"]
        if isinstance(image, torch.Tensor):
            image = image.to(self.device, non_blocking=True).float()
            label = label.to(self.device, non_blocking=True)
        g = torch.Generator(device=self.device)
        g.manual_seed(_batch_seed(batch.get("seed")))
        image, label = self.spatial(image, label, g, batch.get("spatial"))
        image = self.intensity(image, g)
        return {**batch, "image": image, "label": label}

    def draw_spatial(self, seed: int) -> list[bool]:
        """[rotate, scale] for the item with this seed: drawn when the item is read, so that it reads the
        larger region (data/read_size) only when it will be resampled."""
        u = np.random.default_rng(seed).random(2)
        return [bool(u[0] < self.s.rotation_prob), bool(u[1] < self.s.scaling_prob)]

    # ------------------------------------------------------------------ spatial and mirroring
    def spatial(
        self, image: Any, label: Any, g: torch.Generator, drawn: Any = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Rotation, scaling, mirroring and the crop to the patch, in one copy per sample.

        Mirroring is done here rather than last, as nnU-Net orders it: the intensity operations in
        between act the same on a mirrored image (flip-symmetric kernels and statistics), and here it
        costs nothing: a mirrored output axis is a sign in the sampling matrix, or part of the crop copy.
        """
        b, n, dev = len(image), self.dims, self.device
        size_out = self.out_size or list(image[0].shape[1:])
        if drawn is not None:  # [rotate, scale] per sample, drawn when the items were read
            flags = torch.as_tensor(drawn, dtype=torch.bool, device=dev).reshape(b, 2)
            rotate, scale = flags[:, 0], flags[:, 1]
        else:
            rotate = _chance(b, self.s.rotation_prob, g)
            scale = _chance(b, self.s.scaling_prob, g)
        flips = torch.rand(b, n, generator=g, device=dev) < self.s.flip_prob  # per tensor axis
        moved = rotate | scale
        # labels leave as int64 (what the losses take): the one copy per sample converts them
        out_i = torch.empty((b, image[0].shape[0], *size_out), device=dev)
        out_l = torch.empty((b, label[0].shape[0], *size_out), dtype=torch.long, device=dev)
        for i, (is_moved, flip) in enumerate(zip(moved.tolist(), flips.tolist())):
            if is_moved:
                continue
            axes = [1 + a for a in range(n) if flip[a]]
            crop = _centre_index(image[i].shape[1:], size_out)
            _copy_mirrored(out_i[i], image[i][crop], axes)
            _copy_mirrored(out_l[i], label[i][crop], axes)
        index = moved.nonzero().flatten()
        if index.numel() == 0:
            return out_i, out_l
        m = index.numel()
        limit = math.radians(self.s.rotation_deg)
        angles = (torch.rand(m, 1 if n == 2 else 3, generator=g, device=dev) * 2 - 1) * limit
        angles = angles * rotate[index, None].float()
        lo, hi = self.s.scaling
        factor = lo + (hi - lo) * torch.rand(m, generator=g, device=dev)
        factor = torch.where(scale[index], factor, torch.ones_like(factor))
        # a mirrored tensor axis a is affine_grid coordinate n - 1 - a: a sign on that column
        signs = 1.0 - 2.0 * flips[index].flip(1).float()
        matrix = _rotation(angles, n) * factor[:, None, None] * signs[:, None, :]
        for j, i in enumerate(index.tolist()):  # read regions differ in size, and stacking them would copy
            src_i, src_l = image[i][None].to(dev).float(), label[i][None].to(dev)
            out_i[i], out_l[i] = (t[0] for t in resample(src_i, src_l, matrix[j : j + 1], size_out))
        return out_i, out_l

    # ------------------------------------------------------------------ intensity
    def intensity(self, x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        s, b, dev = self.s, x.shape[0], x.device
        axes = tuple(range(2, x.ndim))
        pick = _chance(b, s.noise_prob, g).nonzero().flatten()
        if pick.numel():
            std = torch.rand(pick.numel(), generator=g, device=dev) * s.noise_std
            noise = torch.randn((pick.numel(), *x.shape[1:]), generator=g, device=dev)
            x.index_add_(0, pick, noise * _bcast(std, x.ndim))  # adds in place: no gather of x[pick]
        pick = _chance(b, s.blur_prob, g).nonzero().flatten()
        if pick.numel():
            lo, hi = s.blur_sigma
            sigma = lo + (hi - lo) * torch.rand(pick.numel(), self.dims, generator=g, device=dev)
            x.index_copy_(0, pick, gaussian_blur(x.index_select(0, pick), sigma))
        pick = _chance(b, s.brightness_prob, g).nonzero().flatten()
        if pick.numel():
            f = _bcast(_bg_contrast(pick.numel(), x.shape[1], s.brightness, g, dev), x.ndim, 2)
            x.index_copy_(0, pick, x.index_select(0, pick) * f)
        pick = _chance(b, s.contrast_prob, g).nonzero().flatten()
        if pick.numel():
            sub = x.index_select(0, pick)
            f = _bcast(_bg_contrast(pick.numel(), x.shape[1], s.contrast, g, dev), x.ndim, 2)
            mean = sub.mean(axes, keepdim=True)
            lo, hi = sub.amin(axes, keepdim=True), sub.amax(axes, keepdim=True)
            x.index_copy_(0, pick, torch.minimum(torch.maximum((sub - mean) * f + mean, lo), hi))
        pick = _chance(b, s.lowres_prob, g).nonzero().flatten()
        if pick.numel():
            lo, hi = s.lowres_zoom
            zoom = (lo + (hi - lo) * torch.rand(pick.numel(), generator=g, device=dev)).tolist()
            for i, z in zip(pick.tolist(), zoom):
                x[i : i + 1] = low_resolution(x[i : i + 1], z)
        for prob, invert in ((s.gamma_invert_prob, True), (s.gamma_prob, False)):
            pick = _chance(b, prob, g).nonzero().flatten()
            if pick.numel():
                y = gamma(x.index_select(0, pick), _bg_contrast(pick.numel(), x.shape[1], s.gamma, g, dev), invert)
                x.index_copy_(0, pick, y)
        return x

    # ------------------------------------------------------------------ mirroring
    def mirror(self, image: torch.Tensor, label: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        for axis in range(2, 2 + self.dims):
            pick = _chance(image.shape[0], self.s.flip_prob, g).nonzero().flatten()
            if pick.numel():
                image[pick] = image[pick].flip(axis)
                label[pick] = label[pick].flip(axis)
        return image, label


def resample(
    image: torch.Tensor, label: torch.Tensor, matrix: torch.Tensor, size_out: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """One resampling of image (m, C, *in) (linear) and label (m, 1, *in) (`resample_labels`) to `size_out`:
    output voxel u (centred, in voxels, axes last-first as affine_grid orders them: x, y[, z]) reads the
    input at matrix[i] @ u, about the input's centre; outside the input is 0."""
    dev = image.device
    half_out = torch.tensor([s / 2 for s in reversed(size_out)], device=dev, dtype=torch.float32)
    half_in = torch.tensor([s / 2 for s in reversed(image.shape[2:])], device=dev, dtype=torch.float32)
    theta = matrix.float() * half_out[None, None, :] / half_in[None, :, None]  # normalised out -> normalised in
    grid = _affine_grid(theta, size_out)
    out_i = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out_i, resample_labels(label, grid)


def _affine_grid(linear: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """F.affine_grid of theta = [linear | 0] (m, n, n + 1) for [m, 1, *size], align_corners=False, as a
    broadcast sum of one term per axis (the map is linear): a third of affine_grid's time on the CPU,
    which multiplies a (m, voxels, n + 1) base grid by theta."""
    m, n = linear.shape[0], linear.shape[1]
    grid = torch.zeros((), device=linear.device, dtype=linear.dtype)
    for k, s in enumerate(reversed(list(size))):  # coordinate k (x, y, z) runs along tensor axis n - k
        centres = (torch.arange(s, device=linear.device, dtype=linear.dtype) * 2 + 1) / s - 1
        shape = [m] + [1] * n + [n]
        shape[n - k] = s
        grid = grid + (linear[:, None, :, k] * centres[None, :, None]).reshape(shape)
    return grid


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur of x (n, C, *spatial), sample i with sigma[i, axis] along each axis,
    borders reflected: per axis a sum of shifted views weighted per sample (on the CPU several times
    faster than a grouped convolution with such short kernels)."""
    n, dims = x.shape[0], x.ndim - 2
    radius = max(1, int(math.ceil(3 * float(sigma.max()))))
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    weight_shape = [n] + [1] * (x.ndim - 1)
    for axis in range(dims):
        k = torch.exp(-0.5 * (taps[None] / sigma[:, axis, None].to(x.dtype)) ** 2)
        k = k / k.sum(1, keepdim=True)  # (n, taps)
        pad = [0, 0] * dims
        pad[2 * (dims - 1 - axis)] = pad[2 * (dims - 1 - axis) + 1] = radius
        mode = "reflect" if x.shape[2 + axis] > radius else "replicate"
        padded, length = F.pad(x, pad, mode=mode), x.shape[2 + axis]
        out = padded.narrow(2 + axis, 0, length) * k[:, 0].reshape(weight_shape)
        for t in range(1, taps.numel()):
            out.addcmul_(padded.narrow(2 + axis, t, length), k[:, t].reshape(weight_shape))
        x = out
    return x


def low_resolution(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """Down-sample by `zoom` (nearest) and back up (linear): nnU-Net's SimulateLowResolutionTransform."""
    size = list(x.shape[2:])
    small = [max(1, round(s * zoom)) for s in size]
    down = F.interpolate(x, size=small, mode="nearest-exact")
    return F.interpolate(down, size=size, mode="bilinear" if len(size) == 2 else "trilinear", align_corners=False)


def gamma(x: torch.Tensor, g: torch.Tensor, invert: bool) -> torch.Tensor:
    """nnU-Net's GammaTransform with retained statistics: per (sample, channel) x -> x^gamma on the
    [min, max] range, then back to the channel's mean and std; `invert` applies it to -x."""
    axes = tuple(range(2, x.ndim))
    x = -x if invert else x
    std, mean = _std_mean(x)
    lo, hi = x.amin(axes, keepdim=True), x.amax(axes, keepdim=True)
    span = hi - lo + 1e-7
    # t ** g as exp(g log t) (log 0 = -inf gives 0, as 0 ** g does for g > 0): pow is three times slower
    y = torch.exp(torch.log((x - lo) / span) * _bcast(g, x.ndim, 2)) * span + lo
    y_std, y_mean = _std_mean(y)
    y = (y - y_mean) / (y_std + 1e-7) * std + mean
    return -y if invert else y


def _std_mean(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.std_mean over the spatial axes (unbiased), computed in two passes (mean, then the centred
    sum of squares): torch.std_mean's single-pass kernel is several times slower on the CPU."""
    flat = x.reshape(x.shape[0], x.shape[1], -1)
    mean = flat.mean(2, keepdim=True)
    centred = flat - mean
    var = torch.linalg.vecdot(centred, centred) / max(1, flat.shape[2] - 1)
    shape = (*x.shape[:2], *([1] * (x.ndim - 2)))
    return var.sqrt().reshape(shape), mean.reshape(shape)


def _bg_contrast(n: int, c: int, rng: tuple[float, float], g: torch.Generator, dev: Any) -> torch.Tensor:
    """nnU-Net's BGContrast draw (brightness, contrast, gamma): half the time below 1 (from [lo, 1)),
    else from [max(lo, 1), hi)."""
    lo, hi = rng
    below = torch.rand(n, c, generator=g, device=dev) < 0.5
    u = torch.rand(n, c, generator=g, device=dev)
    low = lo + (1 - lo) * u if lo < 1 else torch.full_like(u, lo)
    high = max(lo, 1.0) + (hi - max(lo, 1.0)) * u
    return torch.where(below & (lo < 1), low, high)


def _rotation(angles: torch.Tensor, dims: int) -> torch.Tensor:
    """(m, dims, dims) rotation matrices: 2D by one angle, 3D by three (about each axis in turn)."""
    c, s = torch.cos(angles), torch.sin(angles)
    if dims == 2:
        return torch.stack([torch.stack([c[:, 0], -s[:, 0]], 1), torch.stack([s[:, 0], c[:, 0]], 1)], 1)
    one, zero = torch.ones_like(c[:, 0]), torch.zeros_like(c[:, 0])

    def mat(rows: list[list[torch.Tensor]]) -> torch.Tensor:
        return torch.stack([torch.stack(r, 1) for r in rows], 1)

    rx = mat([[one, zero, zero], [zero, c[:, 0], -s[:, 0]], [zero, s[:, 0], c[:, 0]]])
    ry = mat([[c[:, 1], zero, s[:, 1]], [zero, one, zero], [-s[:, 1], zero, c[:, 1]]])
    rz = mat([[c[:, 2], -s[:, 2], zero], [s[:, 2], c[:, 2], zero], [zero, zero, one]])
    return rz @ ry @ rx


def _copy_mirrored(dst: torch.Tensor, src: Any, axes: list[int]) -> None:
    """dst <- src mirrored along tensor `axes`, in one copy (dtype converted in it): on the CPU through
    numpy, whose mirrored views cost nothing (torch's flip copies)."""
    if dst.device.type == "cpu" and isinstance(src, torch.Tensor) and src.device.type == "cpu":
        view = src.numpy()
        np.copyto(
            dst.numpy(), view[tuple(slice(None, None, -1) if a in axes else slice(None) for a in range(view.ndim))]
        )
    else:
        dst.copy_(src.flip(axes) if axes else src)


def _centre_index(shape: Sequence[int], size: Sequence[int]) -> tuple[slice, ...]:
    """Index of a (C, *shape) item's centre region of `size` (the read region's patch)."""
    return (slice(None), *(slice((s - o) // 2, (s - o) // 2 + o) for s, o in zip(shape, size)))


def _chance(n: int, prob: float, g: torch.Generator) -> torch.Tensor:
    draw = torch.rand(n, generator=g, device=g.device)
    return draw < prob


def _bcast(v: torch.Tensor, ndim: int, keep: int = 1) -> torch.Tensor:
    return v.reshape(*v.shape[:keep], *([1] * (ndim - keep)))


def _batch_seed(seeds: Any) -> int:
    if seeds is None:
        return int(torch.randint(2**62, ()).item())
    values = [int(v) for v in torch.as_tensor(seeds).flatten().tolist()]
    return int(np.random.SeedSequence(values).generate_state(2, dtype=np.uint64)[0] >> 1)


class AugmentingCollate:
    """collate_fn for the loader workers: MONAI's list_data_collate, then the batch augmentation."""

    def __init__(self, augment: Callable[[dict], dict] | None) -> None:
        self.augment = augment  # None: collate only, image and label left as lists (augmented on the GPU)

    def __call__(self, items: list) -> dict:
        from monai.data import list_data_collate

        flat = [x for it in items for x in (it if isinstance(it, list) else [it])]  # several patches per index
        images = [x.pop("image") for x in flat]  # read regions of two sizes: stacked only where resampled
        labels = [x.pop("label") for x in flat]
        batch = {**list_data_collate(flat), "image": images, "label": labels}
        return self.augment(batch) if self.augment is not None else batch
