"""Bad-input rows: damaged or missing data files."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.bad_inputs_harness import (
    Ctx,
    Row,
    _args,
    _label_array,
    _no_metrics,
    _rewrite,
    _truncate_nifti,
)


# ------------------------------------------------------------------ the rows: data files
def _msd_args(root: Path, *extra: str) -> list[str]:
    return ["data=msd", f"data.root={root}", "model.channels=[4,8]", "logger=none", "trainer.max_epochs=1", *extra]


def _truncated_image(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _truncate_nifti(root / "imagesTr" / "case_002.nii.gz")
    return _msd_args(root)


def _label_wrong_shape(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _rewrite(ctx.label(root, 0), np.zeros((30, 32, 8), dtype=np.uint8))
    return _msd_args(root)


def _label_out_of_range(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    label = _label_array(ctx.label(root, 1))
    label[:2, :2, :] = 7
    _rewrite(ctx.label(root, 1), label)
    return _msd_args(root)


def _nan_image(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    path = root / "imagesTr" / "case_003.nii.gz"
    image = _label_array(path).astype(np.float32)
    image[1, 1, 1] = np.nan
    _rewrite(path, image)
    return _msd_args(root, "data.intensity.preset=none")


def _missing_label(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    ctx.label(root, 2).unlink()
    return _msd_args(root)


def _empty_folder(ctx: Ctx) -> list[str]:
    root = ctx.tmp / "empty"
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    return ["data=folder", f"data.root={root}", "logger=none"]


def _masks_missing(ctx: Ctx) -> list[str]:
    from medseg.data.examples import write_folder

    root = write_folder(ctx.tmp / "pngs", num_cases=3, mask_suffix="_mask")
    (root / "masks" / "img_001_mask.png").unlink()
    return ["data=folder", f"data.root={root}", "data.mask_suffix=_mask", "logger=none"]


def _folder_names_unreadable(ctx: Ctx) -> list[str]:
    from medseg.data.examples import write_folder

    root = write_folder(ctx.tmp / "named", num_cases=3, mask_suffix="_mask")
    (root / "dataset.json").write_text('{"labels": {"background": 0, "car": 1')  # cut short
    return ["data=folder", f"data.root={root}", "data.mask_suffix=_mask", "logger=none"]


def _evaluate_truncated_label(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _truncate_nifti(ctx.label(root, 1))
    return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={root}", "logger=none"]


def _evaluate_shape_mismatch(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _rewrite(ctx.label(root, 0), np.zeros((30, 32, 8), dtype=np.uint8))
    return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={root}", "logger=none"]


FILE_ROWS = [
    Row("truncated-nifti", _truncated_image, r"case_002.*cannot read"),
    Row(
        "label-shape-mismatch", _label_wrong_shape, r"case_000: image shape \(32, 32, 8\) != label shape \(30, 32, 8\)"
    ),
    Row("label-out-of-range", _label_out_of_range, r"case_001: label value 7 outside"),
    Row("nan-voxels", _nan_image, r"case_003: image has 1 NaN/Inf voxel"),
    Row("missing-label-file", _missing_label, r"missing file.*case_002"),
    Row("empty-folder", _empty_folder, r"no cases found for data\.layout=folder"),
    Row("masks-missing", _masks_missing, r"have no mask .*img_001\.png"),
    Row(
        "folder-class-names-unreadable", _folder_names_unreadable, r"named/dataset\.json cannot be read as class names"
    ),
    Row(
        "root-not-a-folder",
        _args("data=msd", "data.root=/nonexistent/msd", "logger=none"),
        r"data\.root=.* not a folder",
    ),
    Row(
        "evaluate-truncated-label",
        _evaluate_truncated_label,
        r"case_001.*labelsTr/case_001\.nii\.gz",
        check=_no_metrics,
    ),
    Row(
        "evaluate-label-shape-mismatch",
        _evaluate_shape_mismatch,
        r"case_000.*shape",
        check=_no_metrics,
    ),
]
