"""MONAI transform chains, built once per run from the data config.

Two stages:
- volume transforms (deterministic, cached): load, intensity preset, spacing, scale;
- item transforms on a 2D slice or a 3D patch: padding to a divisible size and, for training only,
  random augmentation.
Predict and evaluate reuse the volume stage, so inference sees what training saw.
"""

from __future__ import annotations

from typing import Any

from medseg.data.image_loading import load_image, load_imaged

KEYS = ("image", "label")


def intensity_transforms(intensity: Any, key: str = "image") -> list:
    from monai import transforms as T

    preset = intensity.preset
    builders = {
        "none": lambda: [],
        "minmax": lambda: [T.ScaleIntensityd(keys=key, minv=0.0, maxv=1.0, channel_wise=True)],
        "zscore": lambda: [T.NormalizeIntensityd(keys=key, nonzero=False, channel_wise=True)],
        "percentile": lambda: [
            T.ScaleIntensityRangePercentilesd(
                keys=key,
                lower=intensity.percentiles[0],
                upper=intensity.percentiles[1],
                b_min=0.0,
                b_max=1.0,
                clip=True,
                channel_wise=True,
            )
        ],
        "ct": lambda: [
            T.ScaleIntensityRanged(
                keys=key, a_min=intensity.ct_window[0], a_max=intensity.ct_window[1], b_min=0.0, b_max=1.0, clip=True
            )
        ],
        # the plan's CT normalisation (nnU-Net): clip to the foreground percentiles (ct_window), then z-score
        # with the foreground mean and std: one linear map with clipping, as MONAI's ScaleIntensityRange does
        "ct_zscore": lambda: [
            T.ScaleIntensityRanged(
                keys=key,
                a_min=intensity.ct_window[0],
                a_max=intensity.ct_window[1],
                b_min=(intensity.ct_window[0] - intensity.mean[0]) / intensity.std[0],
                b_max=(intensity.ct_window[1] - intensity.mean[0]) / intensity.std[0],
                clip=True,
            )
        ],
        # per-case z-score inside the non-zero region (nnU-Net, when cropping to it removes over a quarter)
        "zscore_nonzero": lambda: [T.NormalizeIntensityd(keys=key, nonzero=True, channel_wise=True)],
        "imagenet": lambda: [
            T.ScaleIntensityd(keys=key, minv=0.0, maxv=1.0),
            ImageNetNormalized(key, list(intensity.mean), list(intensity.std)),
        ],
    }
    if preset not in builders:
        from medseg.errors import ConfigError

        raise ConfigError(f"data.intensity.preset={preset!r} is not known; choose one of {sorted(builders)}")
    return builders[preset]()


class ImageNetNormalized:
    """(x - mean) / std per channel; a grey image (one channel) takes the mean of the RGB statistics."""

    def __init__(self, key: str, mean: list[float], std: list[float]) -> None:
        self.key, self.mean, self.std = key, mean, std

    def __call__(self, item: dict) -> dict:
        import torch

        image = item[self.key]
        channels = image.shape[0]
        mean, std = self.mean, self.std
        if channels != len(mean):
            if channels != 1:
                from medseg.errors import ConfigError

                raise ConfigError(
                    f"data.intensity.mean has {len(mean)} values but images have {channels} channels;"
                    " give one value per channel"
                )
            mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
        shape = (channels,) + (1,) * (image.ndim - 1)
        m = torch.as_tensor(mean, dtype=image.dtype).reshape(shape)
        s = torch.as_tensor(std, dtype=image.dtype).reshape(shape)
        item[self.key] = (image - m) / s
        return item


def volume_transforms(data_cfg: Any, with_label: bool = True) -> Any:
    """Deterministic chain from file paths to float image (C, *spatial) and label (1, *spatial)."""
    from monai import transforms as T

    keys = list(KEYS) if with_label else ["image"]
    modes = ["bilinear", "nearest"][: len(keys)]
    chain: list = [load_imaged(keys="image", image_only=True, ensure_channel_first=True)]
    if with_label:
        chain += load_label_transforms(data_cfg)
    if data_cfg.spacing:  # needs the affine, so before the metadata is dropped
        chain.append(T.Spacingd(keys=keys, pixdim=list(data_cfg.spacing), mode=modes))
    chain.append(T.EnsureTyped(keys=keys, dtype=_float32(), track_meta=False))
    chain += intensity_transforms(data_cfg.intensity)
    chain += geometry_transforms(data_cfg, keys, modes)
    return T.Compose(chain)


def load_label_transforms(data_cfg: Any) -> list:
    """Label file(s) -> class indices (1, *spatial): per-structure masks merged, stored values mapped."""

    if data_cfg.layout == "totalseg":
        return [MergeStructuresd("label")]
    from medseg.config.schema import layout_value

    reader = None
    colour_map, mask_values = layout_value(data_cfg, "colour_map"), layout_value(data_cfg, "mask_values")
    if colour_map:
        from monai.data import PILReader

        reader = PILReader(converter=_palette_to_rgb)
    chain: list = [load_imaged(keys="label", image_only=True, ensure_channel_first=True, reader=reader)]
    return [*chain, MapMaskValuesd("label", mask_values, colour_map)]


def _palette_to_rgb(image: Any) -> Any:
    return image.convert("RGB") if image.mode in ("P", "PA", "RGBA", "LA", "L") else image


class MapMaskValuesd:
    """Stored mask values -> class indices.

    - colour_map [[r, g, b], ...]: RGB (or palette) masks through the colour table, colour i -> class i;
    - values [v0, v1, ...]: stored value v_i becomes class i (e.g. [0, 255] for 0/255 binary PNGs);
    - a greyscale mask saved as RGB(A) keeps its first channel.
    """

    def __init__(self, key: str, values: Any = None, colour_map: Any = None) -> None:
        self.key = key
        self.values = [int(v) for v in values] if values else None
        self.colours = None
        if colour_map:
            self.colours = {_colour_code(rgb): i for i, rgb in enumerate(colour_map)}

    def __call__(self, item: dict) -> dict:
        import torch

        lab = item[self.key]
        if self.colours is not None:
            if lab.shape[0] < 3:
                raise ValueError("mask is single-channel but data.colour_map expects RGB or palette masks")
            rgb = lab[:3].round().long()
            code = rgb[0] * 65536 + rgb[1] * 256 + rgb[2]
            index = torch.full_like(code, -1)
            for c, idx in self.colours.items():
                index[code == c] = idx
            if (index < 0).any():
                bad = int(code[index < 0][0])
                colour = f"{bad >> 16},{(bad >> 8) & 255},{bad & 255}"
                raise ValueError(f"mask colour {colour} is not in data.colour_map; add it to the table")
            out = lab[:1].clone()
            out[0] = index.to(out.dtype)
            item[self.key] = out
            return item
        if lab.shape[0] > 1:
            grey = lab[:3] if lab.shape[0] >= 3 else lab[:1]
            if not bool((grey == grey[:1]).all()):
                raise ValueError(f"mask has {lab.shape[0]} colour channels; set data.colour_map for colour masks")
            lab = lab[:1]
        if self.values:
            out = lab.clone()
            for i, v in enumerate(self.values):
                out[lab == v] = i
            lab = out
        item[self.key] = lab
        return item


def _colour_code(rgb: Any) -> int:
    parts = [int(x) for x in rgb] if isinstance(rgb, (list, tuple)) or hasattr(rgb, "__iter__") else []
    if len(parts) != 3 or not all(0 <= x < 256 for x in parts):
        from medseg.errors import ConfigError

        raise ConfigError(f"data.colour_map entry {rgb!r} must be [r, g, b] with values 0..255")
    return parts[0] * 65536 + parts[1] * 256 + parts[2]


class MergeStructuresd:
    """TotalSegmentator: binary masks, one file per structure, -> one label map (structure i -> i + 1).

    Masks are read with nibabel one at a time into an int16 map, so 117 structures of a full CT do
    not sit in memory as float channels. Where structures overlap, the later one in the list wins.
    """

    def __init__(self, key: str) -> None:
        self.key = key

    def __call__(self, item: dict) -> dict:
        import nibabel as nib
        import numpy as np
        import torch
        from monai.data import MetaTensor

        paths = item[self.key]
        if isinstance(paths, str):
            paths = [paths]
        first = load_image(image_only=True, ensure_channel_first=True)(paths[0])
        merged = np.zeros(tuple(first.shape[1:]), dtype=np.int16)
        merged[np.asarray(first[0]) > 0] = 1
        for i, path in enumerate(paths[1:], start=2):
            try:
                mask = np.asanyarray(nib.load(path).dataobj)
            except Exception as exc:  # noqa: BLE001 - names the file for the data check
                raise ValueError(f"{path}: {type(exc).__name__}: {exc}") from exc
            if mask.shape != merged.shape:
                raise ValueError(f"{path}: shape {mask.shape} differs from {paths[0]} {merged.shape}")
            merged[mask > 0] = i
        item[self.key] = MetaTensor(torch.from_numpy(merged[None].astype(np.float32)), meta=first.meta)
        return item


def geometry_transforms(data_cfg: Any, keys: list[str], modes: list[str]) -> list:
    """In-plane scale or fixed size; for 2D-on-3D the slice axis keeps its length."""

    if data_cfg.image_size:
        size = list(data_cfg.image_size)
        return [_SizeForDims(keys, size, data_cfg, modes)]
    scale = float(data_cfg.scale)
    if not 0 < scale <= 1:
        from medseg.errors import ConfigError

        raise ConfigError(f"data.scale={scale} must be in (0, 1]")
    if scale == 1.0:
        return []
    return [_ScaleForDims(keys, scale, data_cfg, modes)]


class _ScaleForDims:
    """Zoom the in-plane axes by `scale` (all axes for 3D training), whatever the item's rank."""

    def __init__(self, keys: list[str], scale: float, data_cfg: Any, modes: list[str]) -> None:
        self.keys, self.scale, self.modes = keys, scale, modes
        self.dims, self.axis = int(data_cfg.dims), int(data_cfg.slice_axis)

    def __call__(self, item: dict) -> dict:
        from monai.transforms import Zoom

        spatial = item["image"].ndim - 1
        factors = [self.scale] * spatial
        if spatial == 3 and self.dims == 2:
            factors[self.axis] = 1.0
        for key, mode in zip(self.keys, self.modes):
            item[key] = Zoom(zoom=factors, mode=mode, keep_size=False)(item[key])
        return item


class _SizeForDims:
    """Resize the in-plane axes to data.image_size (the slice axis of a 3D volume is kept)."""

    def __init__(self, keys: list[str], size: list[int], data_cfg: Any, modes: list[str]) -> None:
        self.keys, self.size, self.modes = keys, size, modes
        self.dims, self.axis = int(data_cfg.dims), int(data_cfg.slice_axis)

    def __call__(self, item: dict) -> dict:
        from monai.transforms import Resize

        spatial = item["image"].ndim - 1
        if spatial == 3 and self.dims == 2:
            target = list(self.size)
            target.insert(self.axis, -1)
        else:
            target = list(self.size)
        for key, mode in zip(self.keys, self.modes):
            item[key] = Resize(spatial_size=target, mode=mode)(item[key])
        return item


def item_transforms(data_cfg: Any, train: bool) -> Any:
    """Per-slice / per-patch chain: pad to a divisible size; augment when training."""
    from monai import transforms as T

    keys = list(KEYS)
    chain: list = [T.DivisiblePadd(keys=keys, k=int(data_cfg.pad_divisible))]
    aug = data_cfg.augment
    if train and aug.enabled and not uses_batch_augment(data_cfg):
        spatial_axes = [0, 1] if data_cfg.dims == 2 else [0, 1, 2]
        chain += nnunet_item_transforms(aug, int(data_cfg.dims), data_cfg.patch_size)
        if aug.flip_prob > 0:
            chain += [T.RandFlipd(keys=keys, prob=aug.flip_prob, spatial_axis=a) for a in spatial_axes]
        if aug.rotate90_prob > 0:
            chain.append(T.RandRotate90d(keys=keys, prob=aug.rotate90_prob, spatial_axes=(0, 1)))
        if aug.affine_prob > 0:
            chain.append(
                T.RandAffined(
                    keys=keys,
                    prob=aug.affine_prob,
                    rotate_range=aug.rotate_range,
                    scale_range=aug.scale_range,
                    mode=["bilinear", "nearest"],
                    padding_mode="zeros",
                )
            )
        if aug.intensity_prob > 0:
            chain += [
                T.RandScaleIntensityd(keys="image", factors=aug.intensity_scale, prob=aug.intensity_prob),
                T.RandShiftIntensityd(keys="image", offsets=aug.intensity_shift, prob=aug.intensity_prob),
            ]
        if aug.noise_prob > 0:
            chain.append(T.RandGaussianNoised(keys="image", prob=aug.noise_prob, std=aug.noise_std))
    return T.Compose(chain)


def uses_batch_augment(data_cfg: Any) -> bool:
    """data.augment.batched: the training augmentation runs on whole batches (medseg/data/batch_augment.py)."""
    aug = data_cfg.augment
    return bool(aug.enabled) and bool(aug.get("batched", False))


def nnunet_item_transforms(aug: Any, dims: int, patch: Any = None) -> list:
    """nnU-Net's augmentation (data.augment's rotation_prob ... gamma keys) as per-item MONAI transforms,
    in nnU-Net's order; mirroring is the flips of item_transforms. Rotation and scaling are one
    RandAffined (one resampling) drawn with the chance that either applies; MONAI draws both then."""
    import math

    from monai import transforms as T

    from medseg.data.batch_augment import rotation_degrees

    chain: list = []
    p_rot, p_scale = float(aug.get("rotation_prob", 0.0)), float(aug.get("scaling_prob", 0.0))
    if p_rot > 0 or p_scale > 0:
        angle = math.radians(rotation_degrees(aug, dims, patch)) if p_rot > 0 else 0.0
        lo, hi = (float(v) for v in aug.scaling) if p_scale > 0 else (1.0, 1.0)
        chain.append(
            T.RandAffined(
                keys=list(KEYS),
                prob=1 - (1 - p_rot) * (1 - p_scale),
                rotate_range=[(-angle, angle)] * (1 if dims == 2 else 3),
                scale_range=[(lo - 1, hi - 1)] * dims,
                mode=["bilinear", "nearest"],
                padding_mode="zeros",
            )
        )
    if aug.get("noise_prob", 0) > 0:
        chain.append(T.RandGaussianNoised(keys="image", prob=float(aug.noise_prob), std=float(aug.noise_std)))
    if aug.get("blur_prob", 0) > 0:
        sigma = tuple(float(v) for v in aug.blur_sigma)
        smooth = T.RandGaussianSmoothd(keys="image", sigma_x=sigma, sigma_y=sigma, sigma_z=sigma, prob=aug.blur_prob)
        chain.append(smooth)
    if aug.get("brightness_prob", 0) > 0:
        lo, hi = (float(v) for v in aug.brightness)
        chain.append(T.RandScaleIntensityd(keys="image", factors=(lo - 1, hi - 1), prob=float(aug.brightness_prob)))
    if aug.get("contrast_prob", 0) > 0:
        lo, hi = (float(v) for v in aug.contrast)
        chain.append(
            T.RandScaleIntensityFixedMeand(
                keys="image", factors=(lo - 1, hi - 1), preserve_range=True, prob=float(aug.contrast_prob)
            )
        )
    if aug.get("lowres_prob", 0) > 0:
        zoom = tuple(float(v) for v in aug.lowres_zoom)
        up = "bilinear" if dims == 2 else "trilinear"
        chain.append(
            T.RandSimulateLowResolutiond(keys="image", prob=float(aug.lowres_prob), zoom_range=zoom, upsample_mode=up)
        )
    gamma = tuple(float(v) for v in aug.get("gamma", (0.7, 1.5)))
    for key, invert in (("gamma_invert_prob", True), ("gamma_prob", False)):
        if aug.get(key, 0) > 0:
            chain.append(
                T.RandAdjustContrastd(
                    keys="image", prob=float(aug[key]), gamma=gamma, invert_image=invert, retain_stats=True
                )
            )
    return chain


def _float32() -> Any:
    import torch

    return torch.float32


def label_transforms(data_cfg: Any) -> Any:
    """Labels at their original resolution (for evaluation against predictions resized back)."""
    from monai import transforms as T

    return T.Compose(
        [*load_label_transforms(data_cfg), T.EnsureTyped(keys="label", dtype=_float32(), track_meta=False)]
    )
