"""evaluate.input as DICOM: labelled cases, each one image series with its label.

The label makes the case: a case folder is a folder that directly holds one label, either a NIfTI
label map on the series' grid (any name ending .nii or .nii.gz; label.nii.gz by convention) or a DICOM
SEG file (any name) that references the series. The case's image series is the one DICOM image series
in that folder or beneath it, and the case is named after the folder (after the zip for a zip's top
level). So evaluate.input is a folder or a zip of one subfolder per case, or one case folder (series
and label side by side); a zip may wrap them in a folder. Hidden files and folders are skipped.

Refused with one line naming the folder: DICOM images in no case folder (no label), a case folder
without a series or with two, two labels in one folder, a case folder inside another. While a case is
read (medseg/dicom/seg.py, `as_nifti`): a SEG of another series or off the series' grid, a NIfTI label
of another shape or affine than the series, and every refusal of medseg/dicom/series.py.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medseg.dicom.series import Series, group_series, input_files, is_dicom_bytes, is_image, read_header
from medseg.errors import DataError

AFFINE_TOL = 1e-3  # mm: a NIfTI label's affine agrees with the series' to this (float32 headers)
NIFTI_ENDINGS = (".nii", ".nii.gz")


@dataclass
class LabelledSeries:
    name: str  # the case id (safe as a file name)
    folder: str  # the case folder, for messages
    series: Series
    label: Callable[[], Any]  # opens the label: a path, or the bytes of a zip member
    label_name: str  # the label file, for messages
    kind: str  # "nifti" | "seg"
    modalities: list[str] | None = None  # the modalities the model accepts


@dataclass
class _File:
    folder: tuple[str, ...]  # its folder inside the input
    name: str
    shown: str  # for messages
    open: Callable[[], Any]
    kind: str  # "nifti" | "dicom"


def find_labelled_series(path: Path, modalities: list[str] | None = None) -> list[LabelledSeries]:
    """The labelled cases in a folder or a zip (module docstring), checked for the layout's rules."""
    labels: dict[tuple[str, ...], list[tuple[str, _File]]] = {}
    images: list[tuple[_File, Any]] = []
    for f in _files(path):
        if f.kind == "nifti":
            labels.setdefault(f.folder, []).append(("nifti", f))
            continue
        ds = read_header(f.open, f.shown)
        if str(getattr(ds, "Modality", "")) == "SEG":
            labels.setdefault(f.folder, []).append(("seg", f))
        elif is_image(ds):
            images.append((f, ds))
    if not images:  # e.g. a zip of NIfTI files: not DICOM with labels
        raise DataError(
            f"evaluate.input={path} holds no DICOM image series; give a labelled folder in the checkpoint's layout,"
            " or DICOM case folders (each one series and its label)"
        )
    for folder, found in labels.items():
        if len(found) > 1:
            names = ", ".join(f.name for _, f in found)
            raise DataError(
                f"{_where(path, folder)} holds {len(found)} labels ({names}); keep one label per case folder"
            )
    for a in labels:
        for b in labels:
            if a != b and b[: len(a)] == a:
                raise DataError(
                    f"case folder {_where(path, b)} lies inside case folder {_where(path, a)}; give one folder per"
                    " case (its series and one label), not one case inside another"
                )
    members: dict[tuple[str, ...], list[tuple[Any, Callable[[], Any]]]] = {folder: [] for folder in labels}
    for f, ds in images:
        owner = next((c for c in labels if f.folder[: len(c)] == c), None)
        if owner is None:
            raise DataError(
                f"{_where(path, f.folder)} holds DICOM images but no label; put label.nii.gz (on the series' grid)"
                " or a DICOM SEG of the series in the case folder"
            )
        members[owner].append((ds, f.open))
    stem = path.stem if path.is_file() else path.name
    names = {folder: _safe(folder[-1] if folder else stem) for folder in labels}
    cases = []
    for folder in sorted(labels):
        (kind, label), where = labels[folder][0], _where(path, folder)
        series = group_series(members[folder], where)
        if len(series) != 1:
            problem = "no DICOM image series" if not series else f"{len(series)} DICOM image series"
            raise DataError(
                f"case folder {where} holds {problem} beside its label {label.name};"
                " put exactly one image series in each case folder"
            )
        name = names[folder]
        if list(names.values()).count(name) > 1:  # the same folder name in two places: the whole path
            name = _safe("_".join(folder))
        series[0].name = name
        cases.append(LabelledSeries(name, where, series[0], label.open, label.shown, kind, modalities))
    return cases


@contextlib.contextmanager
def as_nifti(case: LabelledSeries) -> Iterator[tuple[Path, Path]]:
    """The case as two temporary NIfTI files with the series' affine: its image and its label map
    (a SEG placed frame by frame; a NIfTI label checked against the series' grid)."""
    import nibabel as nib

    from medseg.dicom.seg import read_seg
    from medseg.dicom.series import read_volume

    volume = read_volume(case.series, case.modalities)
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "image.nii.gz"
        nib.save(nib.Nifti1Image(volume.array, volume.affine), str(image))
        if case.kind == "seg":
            label = Path(tmp) / "label.nii.gz"
            labels = read_seg(case.label(), volume, f"case folder {case.folder}", case.label_name)
            nib.save(nib.Nifti1Image(labels, volume.affine), str(label))
        else:
            source = case.label()
            if isinstance(source, str):
                label = Path(source)
            else:  # a zip member: its bytes under its own name (the ending tells nibabel the format)
                label = Path(tmp) / PurePosixPath(case.label_name).name
                with open(label, "wb") as out:
                    shutil.copyfileobj(source, out)
            _check_grid(case, label, volume)
        yield image, label


def _check_grid(case: LabelledSeries, label: Path, volume: Any) -> None:
    import nibabel as nib

    try:
        header = nib.load(str(label))
    except Exception as exc:  # noqa: BLE001
        raise DataError(
            f"case folder {case.folder}: label {case.label_name} cannot be read ({type(exc).__name__});"
            " give a NIfTI label map"
        ) from None
    where = f"case folder {case.folder}: label {case.label_name}"
    if tuple(header.shape) != tuple(volume.array.shape):
        raise DataError(
            f"{where} has shape {tuple(header.shape)} but the series {tuple(volume.array.shape)} (columns, rows,"
            " slices); give the label on the series' grid"
        )
    if not np.allclose(header.affine, volume.affine, atol=AFFINE_TOL):
        raise DataError(
            f"{where} has another affine (origin, direction or spacing) than the series; give the label on the"
            " series' grid (as a NIfTI conversion of the series writes it)"
        )


def _files(path: Path) -> list[_File]:
    """The NIfTI and DICOM files of a folder (any depth) or a zip; hidden ones are skipped."""
    found: list[_File] = []

    def add(parts: tuple[str, ...], shown: str, opener: Callable[[], Any], head: Callable[[], bytes]) -> None:
        if any(p.startswith(".") or p == "__MACOSX" for p in parts):
            return
        if parts[-1].lower().endswith(NIFTI_ENDINGS):
            found.append(_File(parts[:-1], parts[-1], shown, opener, "nifti"))
        elif is_dicom_bytes(head()):
            found.append(_File(parts[:-1], parts[-1], shown, opener, "dicom"))

    for parts, shown, opener, head in input_files(path, f"evaluate.input={path} is not a zip of DICOM files"):
        add(parts, shown, opener, head)
    return found


def _where(path: Path, parts: tuple[str, ...]) -> str:
    if path.is_file():
        return f"{path}:{'/'.join(parts)}" if parts else str(path)
    return str(path.joinpath(*parts))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:64].strip("_") or "case"
