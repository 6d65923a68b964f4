"""predict.input / evaluate.input: files, a folder of files, or DICOM (a folder of one or several series,
or a zip) -> cases, each with a name that is safe as a file name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from medseg.dicom.series import Series, find_series, holds_dicom
from medseg.errors import DataError
from medseg.inference.image_io import collect_inputs, stem_of

OUTPUT_FORMATS = ("nifti", "dicom_seg", "both")


@dataclass
class Case:
    name: str
    path: Path | None = None  # a NIfTI or 2D image file
    series: Series | None = None  # a DICOM series


def collect_cases(spec: str | None) -> list[Case]:
    if spec:
        path = Path(str(spec)).expanduser()
        if path.exists() and holds_dicom(path):
            return [Case(s.name, series=s) for s in find_series(path)]
    return [Case(stem_of(p), path=p) for p in collect_inputs(spec)]


def trained_modalities(preset: str, configured: list[str] | None = None) -> list[str]:
    """DICOM modalities a model accepts: export.modalities, else CT for the ct intensity preset, else CT or MR."""
    if configured:
        return [str(m) for m in configured]
    return ["CT"] if preset == "ct" else ["CT", "MR"]


def check_output_format(fmt: str, cases: list[Case]) -> None:
    if fmt not in OUTPUT_FORMATS:
        raise DataError(f"predict.output_format={fmt!r} is not known; choose one of {', '.join(OUTPUT_FORMATS)}")
    if fmt != "nifti":
        plain = [c for c in cases if c.series is None]
        if plain:
            raise DataError(
                f"predict.output_format={fmt} needs DICOM input, but {plain[0].path} is not DICOM;"
                " use predict.output_format=nifti"
            )
