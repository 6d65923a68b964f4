"""Writing one case's mask: NIfTI (or PNG for a 2D image) in the input's geometry, and/or DICOM SEG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medseg.dicom.cases import Case
from medseg.dicom.series import Volume
from medseg.inference.image_io import Geometry, save_mask, suffix_of


def volume_geometry(volume: Volume) -> Geometry:
    import nibabel as nib

    header = nib.Nifti1Header()
    header.set_qform(volume.affine, code=1)
    header.set_sform(volume.affine, code=1)
    return Geometry("nifti", tuple(int(s) for s in volume.array.shape), volume.affine, header)


def write_case(
    out_dir: Path,
    case: Case,
    labels: np.ndarray,
    geom: Geometry,
    fmt: str,
    class_names: list[str],
    values: list[int] | None,
    volume: Volume | None = None,
    version: str = "",
) -> list[Path]:
    written = []
    if fmt in ("nifti", "both"):
        if case.series is not None:
            ext = ".nii.gz"
        else:
            assert case.path is not None
            ext = suffix_of(case.path) if geom.kind == "nifti" else ".png"
        written.append(save_mask(out_dir / f"{case.name}{ext}", labels, geom, values))
    if fmt in ("dicom_seg", "both"):
        from medseg.dicom.seg import write_seg

        assert volume is not None
        written.append(write_seg(out_dir / f"{case.name}.seg.dcm", labels, volume.datasets, class_names, version))
    return written
