"""2D patches (data.patch_size with data.dims=2): data.fg_oversample of them centred on foreground."""

from __future__ import annotations

import pytest
import torch

from medseg.data.datamodule import build_data
from medseg.data.slice_patches import crop_around, forced_foreground
from medseg.errors import ConfigError

# small structures in large slices: a patch at a random centre seldom holds foreground
DATA = [
    "data.synthetic.num_cases=8",
    "data.synthetic.shape=[96,96,6]",
    "data.patch_size=[16,16]",
    "data.batch_size=8",
    "data.augment.enabled=false",
]


def _foreground_share(compose, share: float, workers: int = 0) -> tuple[float, int]:
    cfg = compose(*DATA, f"data.fg_oversample={share}", f"hardware.num_workers={workers}")
    loader = build_data(cfg).train_loader
    loader.sampler.set_epoch(0)
    hits, n = 0, 0
    for batch in loader:
        assert batch["image"].shape[2:] == (16, 16)
        hits += int((batch["label"].flatten(1) > 0).any(1).sum())
        n += batch["label"].shape[0]
    return hits / n, n


def test_share_of_foreground_patches_is_as_configured_with_two_workers(compose):
    base, n = _foreground_share(compose, 0.0)
    assert n >= 30 and base < 0.9
    every, _ = _foreground_share(compose, 1.0, workers=2)
    assert every == 1.0  # every patch centred on a foreground voxel
    third, _ = _foreground_share(compose, 0.33, workers=2)
    forced = sum(forced_foreground(i, 0.33) for i in range(n)) / n
    expected = forced + (1 - forced) * base  # forced ones hold foreground; the rest as at random
    assert third == pytest.approx(expected, abs=0.12)
    assert third > base


def test_forced_items_are_exactly_the_share_of_an_epoch():
    for share in (0.33, 0.5, 0.1):
        for n in (7, 100, 333):
            assert sum(forced_foreground(i, share) for i in range(n)) == int(n * share + 1e-9)


def test_crop_moves_inside_and_pads_a_smaller_slice():
    a = torch.arange(1 * 6 * 8).reshape(1, 6, 8).numpy()
    assert (crop_around(a, [0, 0], [4, 4]) == a[:, :4, :4]).all()  # moved inside at the corner
    out = crop_around(a, [3, 4], [8, 8])  # 6 rows padded to 8, one each side
    assert (out[:, 1:7, :] == a).all() and (out[:, 0] == 0).all() and (out[:, 7] == 0).all()


def test_a_2d_patch_needs_two_divisible_sizes(compose):
    from medseg.data.datamodule import check_geometry_settings

    with pytest.raises(ConfigError, match=r"data.patch_size=\[16, 16, 16\] must have 2 sizes"):
        check_geometry_settings(compose("data.patch_size=[16,16,16]").data)
    with pytest.raises(ConfigError, match="pad_divisible"):
        check_geometry_settings(compose("data.patch_size=[20,20]").data)
