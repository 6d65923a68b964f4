"""The data check before training: one DataError per run naming the first bad cases, the file and the fix."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medseg.data.examples import write_folder, write_msd, write_totalseg
from medseg.errors import ConfigError, DataError


def _build(compose, *overrides):
    from medseg.data.datamodule import build_data

    return build_data(compose(*overrides))


def _msd(tmp_path: Path, **kw) -> Path:
    return write_msd(tmp_path / "msd", num_cases=6, num_classes=3, **kw)


def _label(root: Path, i: int) -> Path:
    return root / "labelsTr" / f"case_{i:03d}.nii.gz"


def _rewrite(path: Path, array: np.ndarray) -> None:
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, old.affine), str(path))


def test_missing_files_are_listed_with_paths(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    for i in (1, 4):
        _label(root, i).unlink()
    with pytest.raises(DataError) as err:
        _build(compose, "data=msd", f"data.root={root}")
    msg = str(err.value)
    assert "missing file" in msg and "Fix:" in msg
    assert str(_label(root, 1)) in msg or str(_label(root, 4)) in msg


def test_corrupt_nifti_is_named(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    bad = root / "imagesTr" / "case_002.nii.gz"
    data = gzip.decompress(bad.read_bytes())
    bad.write_bytes(gzip.compress(data[: len(data) // 2])[:-8])  # truncated gzip stream
    with pytest.raises(DataError, match=rf"case_002: cannot read {bad}"):
        _build(compose, "data=msd", f"data.root={root}")


def test_unreadable_png_is_named(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", mask_suffix="")
    bad = root / "masks" / "img_003.png"
    bad.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=rf"img_003: cannot read {bad}"):
        _build(compose, "data=folder", f"data.root={root}")


def test_shape_mismatch(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    _rewrite(_label(root, 0), np.zeros((30, 32, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"case_000: image shape \(32, 32, 8\) != label shape \(30, 32, 8\)"):
        _build(compose, "data=msd", f"data.root={root}")


def test_negative_label_values(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    label = np.asarray(nib.load(str(_label(root, 3))).dataobj).astype(np.int16)
    label[0, 0, 0] = -1
    _rewrite(_label(root, 3), label)
    with pytest.raises(DataError, match=r"case_003: negative label value -1"):
        _build(compose, "data=msd", f"data.root={root}")


def test_label_values_beyond_the_declared_classes(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)  # dataset.json names 3 classes
    label = np.asarray(nib.load(str(_label(root, 5))).dataobj).copy()
    label[:2, :2, :] = 7
    _rewrite(_label(root, 5), label)
    with pytest.raises(DataError, match=r"case_005: label value 7 outside \[0, 3\) of the 3 classes of the `labels`"):
        _build(compose, "data=msd", f"data.root={root}")


def test_num_classes_below_the_labels(compose) -> None:
    # synthetic data has classes 0..3
    with pytest.raises(DataError, match=r"data.num_classes=2 disagrees with .*set data.num_classes=4 or null"):
        _build(compose, "data.num_classes=2", "data.synthetic.num_classes=4", "data.class_names=null")


def test_num_classes_against_dataset_json(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    with pytest.raises(DataError, match=r"data.num_classes=5 disagrees with the `labels` of .*set data.num_classes=3"):
        _build(compose, "data=msd", f"data.root={root}", "data.num_classes=5")


def test_num_classes_inferred_when_null(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", mode="index", mask_suffix="")  # masks hold 0, 1, 2; no class names
    bundle = _build(compose, "data=folder", f"data.root={root}", "data.num_classes=null")
    assert bundle.info.num_classes == 3
    assert bundle.info.class_names == ["class_0", "class_1", "class_2"]


def test_nan_and_inf_voxels(compose, tmp_path: Path) -> None:
    root = _msd(tmp_path)
    path = root / "imagesTr" / "case_004.nii.gz"
    image = np.asarray(nib.load(str(path)).dataobj).astype(np.float32)
    image[1, 1, 1], image[2, 2, 2] = np.nan, np.inf
    _rewrite(path, image)
    with pytest.raises(DataError, match=r"case_004: image has 2 NaN/Inf voxel\(s\)"):
        _build(compose, "data=msd", f"data.root={root}", "data.intensity.preset=none")


def test_empty_dataset(compose, tmp_path: Path) -> None:
    root = tmp_path / "empty"
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    with pytest.raises(DataError, match=r"no cases found for data.layout=folder"):
        _build(compose, "data=folder", f"data.root={root}")


def test_images_without_masks(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", mask_suffix="_mask")
    (root / "masks" / "img_001_mask.png").unlink()
    with pytest.raises(DataError, match=r"1 image\(s\) in .* have no mask .*\['img_001.png'\].*data.mask_suffix"):
        _build(compose, "data=folder", f"data.root={root}", "data.mask_suffix=_mask")


def test_empty_split(compose, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"data.val_percent=99.0 leaves no training case"):
        _build(compose, "data.val_percent=99")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"train": ["synth_000", "synth_001"], "val": []}))
    with pytest.raises(DataError, match=r"empty train or val split"):
        _build(compose, f"data.split_file={split}")


def test_layout_mismatch(compose, tmp_path: Path) -> None:
    root = write_totalseg(tmp_path / "ts", num_subjects=2)
    with pytest.raises(DataError, match=r"does not match data=msd .*looks like the totalseg layout; use data=totalseg"):
        _build(compose, "data=msd", f"data.root={root}")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(DataError, match=r"does not match data=folder .*check data.root"):
        _build(compose, "data=folder", f"data.root={plain}")


def test_many_bad_cases_in_one_error(compose, tmp_path: Path) -> None:
    root = write_msd(tmp_path / "msd", num_cases=9, num_classes=3)
    for i in range(9):
        _rewrite(_label(root, i), np.zeros((30, 32, 8), dtype=np.uint8))
    with pytest.raises(DataError, match=r"^\d bad (training|validation) case\(s\): .*\(and \d more\)\. Fix:"):
        _build(compose, "data=msd", f"data.root={root}", "data.val_percent=20")


def test_patch_size_not_divisible(compose) -> None:
    with pytest.raises(ConfigError, match=r"data.patch_size=\[24, 24, 12\] is not divisible by data.pad_divisible=16"):
        _build(compose, "data.dims=3", "data.patch_size=[24,24,12]")


def test_3d_training_on_2d_images(compose, tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f", mask_suffix="")
    with pytest.raises(ConfigError, match=r"data.dims=3 needs 3D volumes but these images are 2D; use data.dims=2"):
        _build(compose, "data=folder", f"data.root={root}", "data.dims=3")
