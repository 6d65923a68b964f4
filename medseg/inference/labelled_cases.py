"""Labelled cases for evaluation: which cases, and each one loaded and checked before it is scored.

`evaluation_cases` decides where the images and labels come from (the checkpoint's validation split,
a labelled folder given by evaluate.input, or DICOM: a folder or zip of case folders, each one series
and its label, see medseg/dicom/labelled.py); `load_case` reads one case through the training
run's own volume chain and refuses what cannot be scored honestly, naming the file or the case.
The validation split is read from the training data's case store (built where missing), so its images
are not decoded again; `load_stored_case` reads a case from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from medseg.data.checks import check_files
from medseg.data.datasets import describe_failure, plain
from medseg.data.layouts import read_cases
from medseg.data.split import split_cases
from medseg.dicom.series import holds_dicom
from medseg.errors import DataError
from medseg.inference.image_io import NIFTI, read_geometry


@dataclass
class LabelledCase:
    id: str
    image: torch.Tensor  # (C, *spatial) in the model's input space
    truth: torch.Tensor  # (*spatial) int16 class indices on the label's own grid
    spacing: list[float] | None  # mm per voxel of the label grid; None for 2D images (pixels)
    affine: np.ndarray | None = (
        None  # the image's 4x4 affine as the volume chain reads it (data.spacing maps back with it)
    )


def evaluation_cases(
    evaluate_input: str | None,
    data_cfg: Any,
    cache_dir: str,
    seed: int,
    class_names: list[str],
    val_ids: list[str] | None = None,
    modalities: list[str] | None = None,
) -> tuple[str, Any, list[dict[str, Any]], Any]:
    """(source description, data config to read them with, cases, case store or None) for mode=evaluate.

    Without evaluate.input: the training run's validation cases `val_ids` (None: split again by seed),
    read from this run's data.root. DICOM cases accept the `modalities` given (None: as the intensity
    preset says, medseg.dicom.cases.trained_modalities).
    """
    if not evaluate_input:
        from medseg.data.store import open_store

        if data_cfg.layout != "synthetic" and not data_cfg.root:
            raise DataError(
                f"mode=evaluate reads the checkpoint's validation cases (data.layout={data_cfg.layout}) from data.root,"
                " which this run does not set (a checkpoint never chooses folders); give data.root=<the dataset"
                " folder>, or evaluate.input=<a labelled folder>"
            )
        caseset = read_cases(data_cfg, cache_dir)
        if val_ids is None:
            _, val = split_cases(caseset.cases, data_cfg, seed)
        else:
            val = _cases_with_ids(caseset.cases, val_ids, data_cfg)
        check_files(val, "validation")
        # the training run's store (same settings, source and classes: the same key): built once
        store = open_store(data_cfg, cache_dir, val, caseset.root, classes=caseset.class_names)
        return "validation split", data_cfg, val, store
    root = Path(str(evaluate_input)).expanduser()
    override: dict[str, Any] = {"root": str(root)}
    if data_cfg.layout == "synthetic":  # the demo data is an MSD folder; never generate data into the input
        override["layout"] = "msd"
    if root.exists() and holds_dicom(root):
        from medseg.dicom.cases import trained_modalities
        from medseg.dicom.labelled import find_labelled_series

        accepted = trained_modalities(str(data_cfg.intensity.preset), modalities)
        found = find_labelled_series(root, accepted)
        dicom = [{"id": c.name, "image": c.folder, "label": c.label_name, "dicom": c} for c in found]
        return str(root), OmegaConf.merge(data_cfg, override), dicom, None
    if not root.is_dir():
        raise DataError(
            f"evaluate.input={root} is not a folder; give a labelled dataset in the {data_cfg.layout} layout,"
            " or DICOM (a folder or zip of case folders, each a series and its label)"
        )
    if data_cfg.layout == "totalseg" and not data_cfg.structures:  # the model's classes, in its order
        override["structures"] = list(class_names[1:])
    data_cfg = OmegaConf.merge(data_cfg, override)
    try:
        cases = read_cases(data_cfg, cache_dir).cases
    except DataError as exc:  # the layout readers speak of data.root; the user typed evaluate.input
        raise DataError(str(exc).replace(f"data.root={root}", f"evaluate.input={root}")) from None
    check_files(cases, "evaluation")
    return str(root), data_cfg, cases, None


def _cases_with_ids(cases: list[dict[str, Any]], ids: list[str], data_cfg: Any) -> list[dict[str, Any]]:
    wanted = set(ids)
    found = [c for c in cases if c["id"] in wanted]
    missing = sorted(wanted - {c["id"] for c in found})
    if missing or not found:
        where = f"data.root={data_cfg.root}" if data_cfg.root else "the demo data of this run's data.synthetic"
        raise DataError(
            f"{where} lacks {len(missing)} of the checkpoint's {len(wanted)} validation cases"
            f" ({', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}); point data.root (for data=folder also"
            " data.images_dir / masks_dir / mask_suffix) at the data the model was trained on, or give evaluate.input"
        )
    return found


def load_stored_case(
    store: Any, case: dict[str, Any], data_cfg: Any, label_chain: Any, channels: int, num_classes: int
) -> LabelledCase:
    """One validation case from the case store: the image as training saw it, the label on its own grid.

    The stored label is the truth when the chain keeps the original grid (no spacing, size or scale
    change); otherwise the label file is read again, since metrics are taken on the original grid.
    """
    meta = store.meta(case["id"])
    if "error" in meta:
        raise DataError(f"case {case['id']}: {meta['error']}; fix or remove the file")
    image = torch.from_numpy(np.asarray(store.image(case["id"])[...])).float()
    same_grid = not data_cfg.spacing and not data_cfg.image_size and float(data_cfg.scale) == 1.0
    if not same_grid:
        return load_case(case, lambda item: {"image": image}, label_chain, channels, num_classes)
    truth = torch.from_numpy(np.asarray(store.label(case["id"])[0]).astype(np.int16))
    if int(image.shape[0]) != channels:
        raise DataError(f"case {case['id']}: {image.shape[0]} channel(s) but the model expects {channels}")
    high = int(meta.get("check", {}).get("label_max", 0))
    if high >= num_classes:
        raise DataError(
            f"case {case['id']}: label values up to {high} are outside the model's classes 0..{num_classes - 1} "
            f"({_first(case['label'])}); evaluate with labels of the same classes"
        )
    return LabelledCase(case["id"], image, truth, voxel_spacing(case, truth.ndim))  # header only: cheap


def load_case(
    case: dict[str, Any], image_chain: Any, label_chain: Any, channels: int, num_classes: int
) -> LabelledCase:
    """Read and check one case; a DataError names the unreadable file or what is wrong with the case."""
    if "dicom" in case:
        return _load_dicom_case(case, image_chain, channels, num_classes)
    try:
        image = plain(image_chain({"image": case["image"]})["image"]).float()
        truth = plain(label_chain({"label": case["label"]})["label"])[0]
    except Exception as exc:  # noqa: BLE001 - any reader failure becomes one line naming the file
        raise DataError(f"case {case['id']}: {describe_failure(case, exc)}; fix or remove the file") from None
    first_image = _first(case["image"])
    geometry = read_geometry(Path(first_image))
    original = geometry.shape
    if tuple(truth.shape) != tuple(original):
        raise DataError(
            f"case {case['id']}: label shape {tuple(truth.shape)} differs from image shape {tuple(original)} "
            f"({_first(case['label'])}); labels must be on their image's grid"
        )
    if int(image.shape[0]) != channels:
        raise DataError(
            f"case {case['id']}: {first_image} has {image.shape[0]} channel(s) but the model expects {channels}"
        )
    if not bool(torch.isfinite(truth).all()):
        raise DataError(f"case {case['id']}: label {_first(case['label'])} has NaN/Inf values; fix the mask")
    truth = truth.round()
    low, high = int(truth.min()), int(truth.max())
    if low < 0 or high >= num_classes:
        raise DataError(
            f"case {case['id']}: label values {low}..{high} are outside the model's classes 0..{num_classes - 1} "
            f"({_first(case['label'])}); evaluate with labels of the same classes"
        )
    affine = None if geometry.affine is None else np.asarray(geometry.affine, dtype=np.float64)
    return LabelledCase(case["id"], image, truth.to(torch.int16), voxel_spacing(case, truth.ndim), affine)


def _load_dicom_case(case: dict[str, Any], image_chain: Any, channels: int, num_classes: int) -> LabelledCase:
    """A DICOM case as the NIfTI files a conversion of it would give (the series' affine), then read and
    checked exactly as a NIfTI case: the same chains, the same checks, the spacing from the same header.
    Its label is a map of class indices whatever the training layout stored (mask values, structure files)."""
    from medseg.data.transforms import label_transforms
    from medseg.dicom.labelled import as_nifti

    dicom = case["dicom"]
    label_chain = label_transforms(OmegaConf.create({"layout": "msd"}))
    with as_nifti(dicom) as (image, label):
        try:
            return load_case(
                {"id": case["id"], "image": str(image), "label": str(label)},
                image_chain,
                label_chain,
                channels,
                num_classes,
            )
        except DataError as exc:  # name the case's own files, not the temporary ones
            text = str(exc).replace(str(image), f"the series in {dicom.folder}").replace(str(label), dicom.label_name)
            raise DataError(text) from None


def voxel_spacing(case: dict[str, Any], ndim: int) -> list[float] | None:
    """Voxel size in mm from the NIfTI header of the image (or else the first label file), for every
    layout (TotalSegmentator's label is a list of structure files); None for 2D images (pixels)."""
    import nibabel as nib

    for path in (_first(case["image"]), _first(case["label"])):
        if str(path).lower().endswith(NIFTI):
            zooms = nib.load(str(path)).header.get_zooms()[:ndim]
            if len(zooms) == ndim:
                return [float(z) for z in zooms]
    return None


def _first(paths: Any) -> str:
    return str(paths[0]) if isinstance(paths, (list, tuple)) else str(paths)
