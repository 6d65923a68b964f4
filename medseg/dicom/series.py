"""DICOM series -> a volume with a NIfTI-style affine, read with pydicom.

pydicom is the reader because it is the reference Python DICOM parser (kept by the pydicom project,
used by highdicom, which writes our SEG files) and gives the raw attributes we must check ourselves:
SimpleITK's series reader silently accepts gantry tilt, uneven spacing and missing slices. The rules:
- slices of one SeriesInstanceUID are sorted along the slice normal (cross product of the two
  ImageOrientationPatient directions) by the projection of their ImagePositionPatient;
- the spacing between slices comes from those positions, never from SliceThickness;
- RescaleSlope / RescaleIntercept are applied per slice;
- refused, one line each: slices that differ in size, orientation, spacing or modality (mixed series),
  a step between positions that is not along the normal (gantry tilt), a gap that is a multiple of the
  spacing (missing slice), any other uneven spacing, two slices at the same position.
The volume is indexed (column, row, slice), as NIfTI converters write it, and its affine maps those
indices to RAS millimetres (DICOM's LPS with x and y negated).
"""

from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from medseg.errors import DataError

POSITION_TOL = 0.01  # mm: slice positions agree to this (and 1% of the spacing)


@dataclass
class Series:
    uid: str
    source: str  # the folder or zip it came from (for messages)
    datasets: list[Any] = field(default_factory=list)  # headers only (read without pixel data)
    name: str = ""
    openers: list[Callable[[], Any]] = field(default_factory=list)  # datasets[i]'s file, for its pixels


@dataclass
class Volume:
    array: np.ndarray  # float32 (columns, rows, slices)
    affine: np.ndarray  # 4x4, RAS
    modality: str
    datasets: list[Any]  # sorted along the normal: datasets[k] is slice k
    name: str


def is_dicom_bytes(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def _is_dicom_file(path: Path) -> bool:
    return is_dicom_bytes(_file_head(path))


def holds_dicom(path: Path) -> bool:
    """True for a zip, or a folder with at least one DICOM file in it (at any depth)."""
    if path.is_file():
        return zipfile.is_zipfile(path)
    return path.is_dir() and any(p.is_file() and _is_dicom_file(p) for p in path.rglob("*"))


def find_series(path: Path) -> list[Series]:
    """Every image series in a folder (any depth) or a zip; files that are not DICOM are skipped."""
    headers = [(read_header(opener, label), opener) for opener, label in dicom_files(path)]
    series = group_series([(ds, opener) for ds, opener in headers if is_image(ds)], str(path))
    if not series:
        raise DataError(f"{path} holds no DICOM image series")
    name_series(series, path.stem if path.is_file() else path.name)
    return series


def dicom_files(path: Path) -> list[tuple[Callable[[], Any], str]]:
    """(opener, name for messages) of every DICOM file in a folder (any depth) or a zip."""
    files = input_files(path, f"{path} is not a zip of DICOM files")
    return [(opener, shown) for _, shown, opener, head in files if is_dicom_bytes(head())]


def input_files(
    path: Path, not_a_zip: str
) -> Iterator[tuple[tuple[str, ...], str, Callable[[], Any], Callable[[], bytes]]]:
    """Every file of a folder (any depth, sorted) or of a zip (a DataError `not_a_zip` when it is none):
    (its path parts inside, its name for messages, an opener for pydicom / nibabel, its first 132 bytes).
    Call the last one while iterating: a zip is open only then."""
    if path.is_file():
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise DataError(not_a_zip) from exc
        with zf:
            for info in zf.infolist():
                if not info.is_dir():
                    head = lambda info=info: _zip_head(zf, info)  # noqa: E731
                    yield (
                        PurePosixPath(info.filename).parts,
                        f"{path}:{info.filename}",
                        zip_member(path, info.filename),
                        head,
                    )
        return
    for p in sorted(path.rglob("*")):
        if p.is_file():
            yield p.relative_to(path).parts, str(p), (lambda p=p: str(p)), (lambda p=p: _file_head(p))


def _zip_head(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as member:
        return member.read(132)


def _file_head(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(132)
    except OSError:
        return b""


def read_header(opener: Callable[[], Any], label: str) -> Any:
    """The file's DICOM header without pixel data (pixels are read slice by slice later)."""
    try:
        import pydicom
    except ImportError as exc:
        raise DataError(f'{label} is DICOM, which needs pydicom; pip install "medseg[deploy]"') from exc
    try:
        return pydicom.dcmread(opener(), stop_before_pixels=True)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{label} is not a readable DICOM file ({type(exc).__name__}); remove it") from exc


def is_image(ds: Any) -> bool:
    """An image slice (has pixel rows), not a SEG, a report or a DICOMDIR."""
    return "Rows" in ds and str(getattr(ds, "Modality", "")) != "SEG"


def group_series(headers: list[tuple[Any, Callable[[], Any]]], source: str) -> list[Series]:
    """Image headers -> one Series per SeriesInstanceUID, sorted by series number."""
    groups: dict[str, Series] = {}
    for ds, opener in headers:
        uid = str(getattr(ds, "SeriesInstanceUID", "") or "")
        if not uid:
            raise DataError(f"{source}: an image has no SeriesInstanceUID; is it an image of a series?")
        series = groups.setdefault(uid, Series(uid, source))
        series.datasets.append(ds)
        series.openers.append(opener)
    return sorted(groups.values(), key=lambda s: (_series_number(s), s.uid))


def name_series(series: list[Series], stem: str) -> None:
    """Names safe as file names: the folder's (or zip's) name, plus number and UID when it holds several."""
    base = _safe(stem) or "series"
    for s in series:
        s.name = base if len(series) == 1 else f"{base}_series{_series_number(s)}_{s.uid.replace('.', '')[-8:]}"


def zip_member(archive: Path, name: str) -> Callable[[], Any]:
    def read() -> Any:
        with zipfile.ZipFile(archive) as zf:
            return io.BytesIO(zf.read(name))

    return read


def _series_number(s: Series) -> int:
    try:
        return int(getattr(s.datasets[0], "SeriesNumber", 0) or 0)
    except (TypeError, ValueError):
        return 0


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text)[:64].strip("_")


def _floats(ds: Any, key: str, n: int, where: str) -> np.ndarray:
    value = getattr(ds, key, None)
    try:
        out = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape != (n,):
        raise DataError(f"{where}: a slice lacks {key}; only images with a patient position can be read")
    return out


def read_volume(series: Series, modalities: list[str] | None = None) -> Volume:
    """The series as a volume; refused with one line for the cases in the module docstring."""
    where = f"{series.source} (series {series.uid})"
    first = series.datasets[0]
    modality = str(getattr(first, "Modality", "") or "")
    if modalities is not None and modality not in modalities:
        raise DataError(
            f"{where}: modality {modality or 'unknown'}, but the model was trained on {'/'.join(modalities)} images;"
            " give a series of that modality"
        )
    if int(getattr(first, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(f"{where}: multi-frame images are not read; export the series as single-frame slices")
    iop = _floats(first, "ImageOrientationPatient", 6, where)
    spacing_rc = _floats(first, "PixelSpacing", 2, where)
    for ds in series.datasets[1:]:
        same = (
            str(getattr(ds, "Modality", "")) == modality
            and (ds.Rows, ds.Columns) == (first.Rows, first.Columns)
            and np.allclose(_floats(ds, "ImageOrientationPatient", 6, where), iop, atol=1e-4)
            and np.allclose(_floats(ds, "PixelSpacing", 2, where), spacing_rc, atol=1e-4)
        )
        if not same:
            raise DataError(
                f"{where}: mixed series: its slices differ in modality, size, orientation or pixel spacing;"
                " give one series per folder"
            )
    row_dir, col_dir = iop[:3], iop[3:]  # along a row (column index grows), down a column (row index grows)
    normal = np.cross(row_dir, col_dir)
    positions = np.stack([_floats(ds, "ImagePositionPatient", 3, where) for ds in series.datasets])
    depth = positions @ normal
    order = np.argsort(depth, kind="stable")
    datasets = [series.datasets[i] for i in order]
    openers = [series.openers[i] for i in order]
    positions, depth = positions[order], depth[order]
    n = len(datasets)
    step = np.zeros(3)
    if n > 1:
        steps = np.diff(depth)
        if (steps < POSITION_TOL).any():
            raise DataError(f"{where}: mixed series: two slices share one position; give one series per folder")
        moves = np.diff(positions, axis=0)
        off_normal = np.linalg.norm(moves - steps[:, None] * normal[None], axis=1)
        if (off_normal > POSITION_TOL + 0.01 * steps).any():
            raise DataError(
                f"{where}: gantry tilt: slices are not stacked along their normal; resample the series first"
            )
        spacing = float(np.median(steps))
        tol = POSITION_TOL + 0.01 * spacing
        if (np.abs(steps - spacing) > tol).any():
            ratio = steps / spacing
            gap = int(np.argmax(steps))
            if np.all(np.abs(ratio - np.round(ratio)) * spacing <= tol):
                raise DataError(
                    f"{where}: a slice is missing between positions {depth[gap]:.2f} and {depth[gap + 1]:.2f} mm"
                    f" (spacing {spacing:.3g} mm); give the complete series"
                )
            raise DataError(
                f"{where}: uneven spacing: slice steps from {steps.min():.3g} to {steps.max():.3g} mm;"
                " resample the series first"
            )
        step = (positions[-1] - positions[0]) / (n - 1)
    else:
        step = normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    slices = []
    import pydicom

    for ds, opener in zip(datasets, openers):
        pixels = pydicom.dcmread(opener()).pixel_array.astype(np.float32)
        if pixels.ndim != 2:
            raise DataError(f"{where}: slices with colour or several frames are not read")
        slope = float(getattr(ds, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(ds, "RescaleIntercept", 0.0) or 0.0)
        slices.append(pixels * np.float32(slope) + np.float32(intercept))
    array = np.stack(slices, axis=-1).transpose(1, 0, 2)  # (rows, cols, n) -> (cols, rows, n)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * spacing_rc[1]
    lps[:3, 1] = col_dir * spacing_rc[0]
    lps[:3, 2] = step
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    return Volume(np.ascontiguousarray(array, dtype=np.float32), affine, modality, datasets, series.name)
