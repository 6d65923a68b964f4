"""augment=nnunet: batched augmentation after collation, its operations against MONAI and by hand, and
the per-item MONAI chain of the same keys."""

from __future__ import annotations

import math

import pytest
import torch

from medseg.data.batch_augment import (
    BatchAugment,
    gamma,
    gaussian_blur,
    read_size,
    resample,
    settings_from,
)
from medseg.data.datamodule import build_data
from medseg.data.label_resampling import resample_labels

PATCH_2D = ["data.patch_size=[32,32]", "data.synthetic.shape=[48,48,8]", "data.batch_size=6"]


def _epoch(loader, epoch: int = 0) -> list[dict]:
    loader.sampler.set_epoch(epoch)
    return [{k: v.clone() for k, v in b.items() if k in ("image", "label", "index")} for b in loader]


def test_batched_nnunet_augmentation_is_the_same_with_zero_or_two_workers(compose):
    cfg0 = compose("recipe=nnunet", *PATCH_2D, "hardware.num_workers=0")
    cfg2 = compose("recipe=nnunet", *PATCH_2D, "hardware.num_workers=2")
    plain = compose("recipe=nnunet", *PATCH_2D, "data.augment.enabled=false")
    d0, d2, dp = build_data(cfg0), build_data(cfg2), build_data(plain)
    assert d0.train_set.batch_augment is not None and dp.train_set.batch_augment is None
    a, b, ref = _epoch(d0.train_loader), _epoch(d2.train_loader), _epoch(dp.train_loader)
    assert len(a) == len(b) == len(ref) > 1
    changed = 0
    for x, y, r in zip(a, b, ref):
        assert x["image"].shape[2:] == (32, 32) and x["label"].shape[2:] == (32, 32)
        assert torch.equal(x["index"], y["index"]) and torch.equal(x["index"], r["index"])
        assert torch.allclose(x["image"], y["image"]) and torch.equal(x["label"], y["label"])
        assert set(x["label"].unique().tolist()) <= set(range(4))  # labels stay class indices
        assert x["label"].dtype == torch.long and x["image"].dtype == torch.float32
        changed += int(not torch.allclose(x["image"], r["image"]))
    assert changed > 0
    again = _epoch(d2.train_loader, 1)
    assert not all(torch.allclose(x["image"], y["image"]) for x, y in zip(a, again))  # a new draw each epoch


def test_batched_augmentation_leaves_cases_held_in_ram_untouched(compose):
    cfg = compose(
        "recipe=nnunet", *PATCH_2D, "data.cache_rate=1", "data.augment.noise_prob=1", "hardware.num_workers=0"
    )
    data = build_data(cfg)
    held = data.train_set.volumes._ram
    before = {v: {k: a.copy() for k, a in parts.items()} for v, parts in held.items()}
    assert before and len(_epoch(data.train_loader)) > 1  # items are views of these arrays where nothing is padded
    for v, parts in held.items():
        for k, a in parts.items():
            assert (a == before[v][k]).all(), (v, k)


def test_batch_size_probe_sees_items_as_the_model_does(compose):
    from medseg.hardware import probe_sample

    data = build_data(compose("recipe=nnunet", *PATCH_2D, "hardware.num_workers=0"))
    data.train_set.set_read_large(True)  # the raw item is then the larger read region
    assert tuple(data.train_set[0]["image"].shape[1:]) != (32, 32)
    sample = probe_sample(data.train_set)
    assert tuple(sample["image"].shape[1:]) == (32, 32) and sample["image"].dtype == torch.float32
    assert tuple(sample["label"].shape[1:]) == (32, 32) and sample["label"].dtype == torch.long
    from medseg.models.input_size import shared_item_size

    assert shared_item_size([data.train_set])[0] == (32, 32)  # a fixed-size network is built for the patch


def test_read_region_is_larger_by_nnunets_rule_and_centre_crops_when_nothing_moves():
    s = settings_from({"rotation_prob": 0.2, "scaling_prob": 0.2}, 2, [224, 224])
    # nnU-Net v2.8.1's initial patch sizes for these patches (get_patch_size, printed by its venv)
    assert s.rotation_deg == 180 and read_size([224, 224], s) == [263, 263]
    s3 = settings_from({"rotation_prob": 0.2, "scaling_prob": 0.2}, 3, [96, 128, 128])
    assert s3.rotation_deg == 30 and read_size([96, 128, 128], s3) == [173, 205, 186]
    image = torch.arange(2 * 10 * 10, dtype=torch.float32).reshape(2, 1, 10, 10)
    out = BatchAugment(settings_from({}, 2), 2, [6, 6])({"image": image, "label": image.long(), "seed": [1, 2]})
    assert torch.equal(out["image"], image[:, :, 2:8, 2:8]) and torch.equal(out["label"], image[:, :, 2:8, 2:8].long())
    # mirrored on every axis, items handed over unstacked with int16 labels as the store reads them
    mirror = BatchAugment(settings_from({"flip_prob": 1.0}, 2), 2, [6, 6])
    items = {"image": list(image), "label": [t.to(torch.int16) for t in image], "seed": [1, 2]}
    out = mirror(items)
    crop = image[:, :, 2:8, 2:8].flip(-1, -2)
    assert torch.equal(out["image"], crop) and torch.equal(out["label"], crop.long())


@pytest.mark.parametrize("dims", [2, 3])
def test_resampling_equals_affine_grid_and_grid_sample(dims):
    import torch.nn.functional as F

    torch.manual_seed(4)
    size_in, size_out = [9, 11, 13][:dims], [6, 7, 8][:dims]
    image, label = torch.rand(2, 1, *size_in), torch.randint(0, 4, (2, 1, *size_in))
    matrix = torch.randn(2, dims, dims)
    out_i, out_l = resample(image, label, matrix, size_out)
    # the same map written for affine_grid: normalised output coordinates to normalised input ones
    half_out = torch.tensor([s / 2 for s in reversed(size_out)])
    half_in = torch.tensor([s / 2 for s in reversed(size_in)])
    theta = torch.cat([matrix * half_out[None, None, :] / half_in[None, :, None], torch.zeros(2, dims, 1)], 2)
    grid = F.affine_grid(theta, [2, 1, *size_out], align_corners=False)
    assert torch.allclose(out_i, F.grid_sample(image, grid, align_corners=False), atol=1e-5)
    assert torch.equal(out_l, _nnunet_labels(label, grid))


def _nnunet_labels(label: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """batchgeneratorsv2's SpatialTransform with mode_seg='bilinear' (nnU-Net v2.8.1's default), written out
    per sample and per label value: each value's indicator resampled linearly, >= 0.5 takes the value."""
    import torch.nn.functional as F

    out = torch.zeros((label.shape[0], 1, *grid.shape[1:-1]), dtype=label.dtype)
    for i in range(label.shape[0]):
        values = sorted(set(label[i].flatten().tolist()))
        for k, u in enumerate(values):
            moved = F.grid_sample((label[i : i + 1] == u).float(), grid[i : i + 1], align_corners=False)[0, 0] >= 0.5
            if len(values) == 2:
                out[i, 0][moved if k else ~moved] = u
            else:
                out[i, 0][moved] = u
    return out


def test_labels_resample_as_nnunet_does_not_as_nearest_neighbours():
    """A half-voxel shift of a two-class stripe: nearest neighbours keep the stripe's width at the sampling
    offset, nnU-Net's linear indicator >= 0.5 rule widens it to both voxels the stripe's border touches."""
    import torch.nn.functional as F

    label = torch.zeros(1, 1, 1, 8, dtype=torch.long)
    label[..., 3:5] = 2
    grid = torch.zeros(1, 1, 8, 2)
    grid[..., 0] = (torch.arange(8) + 0.5 + 0.5) * 2 / 8 - 1  # each output voxel reads half a voxel right
    moved = resample_labels(label, grid)
    nearest = F.grid_sample(label.float(), grid, mode="nearest", align_corners=False).long()
    assert moved[0, 0, 0].tolist() == [0, 0, 2, 2, 2, 0, 0, 0]  # 0.5 reaches 0.5 on both borders
    assert nearest[0, 0, 0].tolist() != moved[0, 0, 0].tolist()
    # no background among the values, and a single value: the rule as written out
    torch.manual_seed(5)
    grid = torch.rand(3, 5, 6, 2) * 2.4 - 1.2  # partly outside the input
    labels = [torch.randint(1, 4, (3, 1, 7, 9)), torch.full((3, 1, 7, 9), 2), torch.randint(0, 2, (3, 1, 7, 9))]
    labels += [
        torch.randint(0, 6, (3, 1, 7, 9), dtype=torch.int16),
        torch.randint(0, 3, (3, 1, 7, 9), dtype=torch.uint8),
    ]
    for label in labels:  # the CPU's numpy path and the torch path a GPU takes give nnU-Net's labels
        for numpy_on_cpu in (True, False):
            assert torch.equal(resample_labels(label, grid, numpy_on_cpu), _nnunet_labels(label, grid))


@pytest.mark.parametrize("dims", [2, 3])
def test_one_resampling_rotates_by_90_degrees_like_rot90(dims):
    torch.manual_seed(0)
    shape = (8,) * dims
    image, label = torch.rand(1, 1, *shape), torch.randint(0, 4, (1, 1, *shape))
    c, s = 0.0, 1.0
    rot = torch.tensor([[c, -s], [s, c]]) if dims == 2 else torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    out_i, out_l = resample(image, label, rot[None], shape)
    # theta's x, y are the last two tensor axes: a quarter turn of (x, y) is rot90 over those axes
    expected = [torch.rot90(t, k, dims=(-1, -2)) for t in (image, label) for k in (1,)]
    if not torch.equal(out_l, expected[1]):
        expected = [torch.rot90(t, 1, dims=(-2, -1)) for t in (image, label)]
    assert torch.equal(out_l, expected[1])
    assert torch.allclose(out_i, expected[0], atol=1e-5)


def test_gamma_matches_monai_adjust_contrast_with_kept_statistics():
    from monai.transforms import AdjustContrast

    torch.manual_seed(1)
    x = torch.rand(1, 1, 12, 12) * 3 - 1
    for g, invert in ((0.7, False), (1.4, False), (1.2, True)):
        ours = gamma(x.clone(), torch.tensor([[g]]), invert)
        theirs = AdjustContrast(g, invert_image=invert, retain_stats=True)(x[0].clone())
        assert torch.allclose(ours[0], torch.as_tensor(theirs), atol=1e-4), (g, invert)


def test_blur_matches_a_gaussian_kernel_written_out():
    torch.manual_seed(2)
    x = torch.rand(2, 1, 16, 16)
    sigma = torch.tensor([[0.6, 0.9], [1.0, 0.5]])
    out = gaussian_blur(x, sigma)
    for i in range(2):  # interior voxel (8, 8), kernel radius 3
        r = torch.arange(-3, 4, dtype=torch.float32)
        ky = torch.exp(-0.5 * (r / sigma[i, 0]) ** 2)
        kx = torch.exp(-0.5 * (r / sigma[i, 1]) ** 2)
        k = torch.outer(ky / ky.sum(), kx / kx.sum())
        assert float(out[i, 0, 8, 8]) == pytest.approx(float((x[i, 0, 5:12, 5:12] * k).sum()), abs=1e-5)
        # the corner voxel (0, 0): the borders are reflected (x[-j] = x[j])
        edge = x[i, 0, [3, 2, 1, 0, 1, 2, 3]][:, [3, 2, 1, 0, 1, 2, 3]]
        assert float(out[i, 0, 0, 0]) == pytest.approx(float((edge * k).sum()), abs=1e-5)


def test_per_item_monai_chain_of_the_same_keys(compose):
    from monai import transforms as T

    from medseg.data.transforms import item_transforms

    cfg = compose("recipe=nnunet", "data.augment.batched=false", *PATCH_2D)
    chain = item_transforms(cfg.data, train=True)
    kinds = [type(t) for t in chain.transforms]
    for kind in (
        T.RandAffined,
        T.RandGaussianNoised,
        T.RandGaussianSmoothd,
        T.RandScaleIntensityd,
        T.RandScaleIntensityFixedMeand,
        T.RandSimulateLowResolutiond,
        T.RandAdjustContrastd,
        T.RandFlipd,
    ):
        assert kind in kinds, kind
    affine = next(t for t in chain.transforms if isinstance(t, T.RandAffined))
    assert affine.prob == pytest.approx(1 - 0.8 * 0.8)  # rotation or scaling: one resampling
    data = build_data(cfg)
    batch = next(iter(data.train_loader))
    assert batch["image"].shape[2:] == (32, 32)
    assert math.isfinite(float(batch["image"].sum()))
    assert data.train_set.batch_augment is None


def test_a_mirrored_axis_is_a_sign_in_the_sampling_matrix():
    torch.manual_seed(3)
    image, label = torch.rand(1, 1, 6, 8, 10), torch.randint(0, 4, (1, 1, 6, 8, 10))
    # affine_grid's coordinates run x, y, z = tensor axes -1, -2, -3: -1 on the first flips the last axis
    out_i, out_l = resample(image, label, torch.diag(torch.tensor([-1.0, 1.0, 1.0]))[None], (6, 8, 10))
    assert torch.equal(out_l, label.flip(-1)) and torch.allclose(out_i, image.flip(-1), atol=1e-6)
