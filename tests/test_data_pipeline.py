"""Split by case, slicing, geometry/intensity settings, augmentation only for training, and caching."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medseg.data.examples import write_totalseg


def _build(compose, *overrides):
    from medseg.data.datamodule import build_data

    return build_data(compose(*overrides))


def _cases(compose, *overrides) -> tuple[list[str], list[str]]:
    from medseg.data.layouts import read_cases
    from medseg.data.split import split_cases

    cfg = compose(*overrides)
    train, val = split_cases(read_cases(cfg.data, str(cfg.paths.cache_dir)).cases, cfg.data, int(cfg.seed))
    return [c["id"] for c in train], [c["id"] for c in val]


# ---------------------------------------------------------------- split
def test_split_by_case_with_fixed_seed(compose) -> None:
    many = ["data.synthetic.num_cases=10", "data.val_percent=30"]
    train, val = _cases(compose, *many)
    assert len(val) == 3 and len(train) == 7 and not set(train) & set(val)
    assert (train, val) == _cases(compose, *many)  # same seed, same split
    assert _cases(compose, *many, "seed=7") != (train, val)


def test_slices_of_a_case_never_cross_the_split(compose) -> None:
    bundle = _build(compose)
    train_ids = {bundle.train_set.volumes[v]["id"] for v, _ in bundle.train_set.index}
    val_ids = {bundle.val_set.volumes[v]["id"] for v, _ in bundle.val_set.index}
    assert train_ids == set(bundle.info.train_cases) and val_ids == set(bundle.info.val_cases)
    assert not train_ids & val_ids


def test_k_fold_folds_partition_the_cases(compose) -> None:
    vals = [_cases(compose, "data.synthetic.num_cases=10", f"data.fold={k}", "data.num_folds=5")[1] for k in range(5)]
    flat = [c for v in vals for c in v]
    assert len(flat) == 10 and len(set(flat)) == 10
    assert all(len(v) == 2 for v in vals)


def test_split_file(compose, tmp_path: Path) -> None:
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["synth_000", "synth_002", "synth_003"], "val": ["synth_005"]}))
    train, val = _cases(compose, f"data.split_file={split}")
    assert train == ["synth_000", "synth_002", "synth_003"] and val == ["synth_005"]


# ---------------------------------------------------------------- slicing
def test_slice_axis_sets_item_shape(compose) -> None:
    bundle = _build(compose, "data.slice_axis=0", "data.pad_divisible=8")
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape[-2:] == (32, 8)  # (W, D) of a 32x32x8 volume, cut along H
    assert bundle.info.n_train_items == 4 * 32


def test_drop_empty_slices_and_foreground_ratio(compose) -> None:
    full = _build(compose)
    dropped = _build(compose, "data.drop_empty_slices=true")
    fg_of = lambda ds: [bool(ds[i]["label"].any()) for i in range(len(ds))]  # noqa: E731
    assert all(fg_of(dropped.train_set)) and len(dropped.train_set) < len(full.train_set)
    assert len(dropped.val_set) == len(full.val_set)  # validation keeps every slice
    ratio = _build(compose, "data.foreground_slice_ratio=0.9")
    flags = fg_of(ratio.train_set)
    assert sum(flags) == sum(fg_of(full.train_set))  # every foreground slice kept
    assert sum(flags) / len(flags) >= 0.85


# ---------------------------------------------------------------- geometry and intensity
def test_scale_keeps_the_slice_axis(compose) -> None:
    vol = _build(compose, "data.scale=0.5").train_set.volumes[0]
    assert tuple(vol["image"].shape[1:]) == (16, 16, 8) and tuple(vol["label"].shape[1:]) == (16, 16, 8)


def test_image_size(compose) -> None:
    vol = _build(compose, "data.image_size=[24,20]").train_set.volumes[0]
    assert tuple(vol["image"].shape[1:]) == (24, 20, 8)


def test_spacing_resamples_3d(compose) -> None:
    # synthetic voxels are 1 x 1 x 2.5 mm: 8 slices at 2.5 mm -> about 18-20 at 1 mm
    vol = _build(compose, "data.spacing=[1.0,1.0,1.0]").train_set.volumes[0]
    assert vol["image"].shape[1:3] == (32, 32) and 17 <= vol["image"].shape[3] <= 21
    assert vol["label"].shape == vol["image"].shape


def test_intensity_presets(compose, tmp_path: Path) -> None:
    ts = write_totalseg(tmp_path / "ts", num_subjects=3)
    ct = _build(compose, "data=totalseg", f"data.root={ts}", "data.intensity.ct_window=[-500,500]")
    image = ct.train_set.volumes[0]["image"]
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    assert float((image == 0).float().mean()) > 0.5  # air at -800 HU clipped to the window's floor
    z = _build(compose, "data.intensity.preset=zscore").train_set.volumes[0]["image"]
    assert abs(float(z.mean())) < 1e-3 and abs(float(z.std()) - 1) < 1e-2
    net = _build(compose, "data.intensity.preset=imagenet", "data.intensity.mean=[0.5]", "data.intensity.std=[0.25]")
    img = net.train_set.volumes[0]["image"]
    assert float(img.min()) == pytest.approx(-2.0, abs=1e-4) and float(img.max()) == pytest.approx(2.0, abs=1e-4)


def test_augmentation_only_for_training(compose) -> None:
    from monai.transforms import Randomizable

    bundle = _build(compose, "data.augment.flip_prob=0.5", "data.augment.intensity_prob=0.5")
    train_random = [t for t in bundle.train_set.transform.transforms if isinstance(t, Randomizable)]
    val_random = [t for t in bundle.val_set.transform.transforms if isinstance(t, Randomizable)]
    assert len(train_random) >= 3 and val_random == []
    # the chain is built once: every item goes through the same objects
    assert bundle.train_set.transform is bundle.train_set.transform and len(bundle.train_set.transform.transforms) > 1


def test_3d_patch_batches(compose) -> None:
    bundle = _build(compose, "data.dims=3", "data.patch_size=[16,16,8]", "data.pad_divisible=8", "data.batch_size=2")
    assert bundle.train_set.items_per_index == 2  # samples_per_volume
    batch = next(iter(bundle.train_loader))
    assert batch["image"].shape == (4, 1, 16, 16, 8) and batch["label"].shape == (4, 1, 16, 16, 8)
    val = next(iter(bundle.val_loader))
    assert val["image"].shape == (1, 1, 32, 32, 8)  # whole volume for sliding-window validation


# ---------------------------------------------------------------- caching
@pytest.fixture
def decode_counter(monkeypatch):
    """Counts image files decoded by MONAI's NIfTI and PIL readers."""
    from monai.data import NibabelReader, PILReader

    calls = {"n": 0}
    for reader in (NibabelReader, PILReader):
        real = reader.read

        def counted(self, *args, _real=real, **kwargs):
            calls["n"] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(reader, "read", counted)
    return calls


def _two_epochs(bundle) -> None:
    for _ in range(2):
        for loader in (bundle.train_loader, bundle.val_loader):
            for _batch in loader:
                pass


@pytest.mark.parametrize("cache_rate", [1.0, 0.0])
def test_a_second_run_decodes_no_file(compose, tmp_path: Path, decode_counter, cache_rate) -> None:
    store = [f"data.store.dir={tmp_path}/store", f"data.cache_rate={cache_rate}"]
    augment = [f"data.augment.{k}=1.0" for k in ("flip_prob", "rotate90_prob", "intensity_prob", "noise_prob")]
    _build(compose, *store, *augment)
    assert decode_counter["n"] >= 6  # the first run decodes every case into the store
    decode_counter["n"] = 0
    bundle = _build(compose, *store, *augment)  # a new run on the same data and settings
    before = bundle.train_set.volumes[0]["image"].clone()
    _two_epochs(bundle)
    assert decode_counter["n"] == 0
    # volumes held in RAM are shared, not copied per item: augmentation must not write into them
    torch.testing.assert_close(bundle.train_set.volumes[0]["image"], before)


# ---------------------------------------------------------------- benchmark
@pytest.mark.slow
def test_data_loading_benchmark_reports_both_settings(cache_dir: Path, capsys) -> None:
    from medseg.benchmarks.data_loading import main

    rows = main(
        ["--steps", "2", "--warmup", "1", "--subjects", "3", "--shape", "32", "32", "4"]
        + ["data.synthetic.num_cases=4", "data.synthetic.shape=[32,32,4]", "data.val_percent=25"]
        + ["model.channels=[8,16]", f"paths.cache_dir={cache_dir}"]
    )
    assert [r["classes"] for r in rows] == [4, 118]  # demo data; 117 structures + background
    out = capsys.readouterr().out
    assert out.count("samples/s  model step") == 2 and "lowest loader/model ratio" in out


def test_loader_settings_come_from_the_hardware_preset(compose) -> None:
    from medseg.data.datamodule import loader_settings

    cfg = compose("hardware=8gb")
    kwargs = loader_settings(cfg.hardware)
    assert kwargs["num_workers"] == 4 and kwargs["persistent_workers"] is True and kwargs["prefetch_factor"] == 2
    assert kwargs["pin_memory"] == torch.cuda.is_available()
    assert loader_settings(compose("hardware=cpu").hardware) == {"num_workers": 0, "pin_memory": False}
