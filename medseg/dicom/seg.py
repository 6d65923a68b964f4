"""A label map on a DICOM series' grid <-> one DICOM SEG file, written and read with highdicom.

One segment per foreground class of the model, segment number = class index, labelled with the class
name. Frame k of the label-map array is slice k of the volume (medseg/dicom/series.py sorts the source
datasets along the normal and indexes the volume (column, row, slice)), so `labels[:, :, k].T` is the
frame of `datasets[k]` and highdicom copies that image's position into the frame: the frames keep
their true positions whatever the file order or the series' direction (the front-to-back mirror of
TotalSegmentator PR 598 is what the round-trip test guards against).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medseg.errors import DataError
from medseg.io_utils import atomic_write


def write_seg(path: Path, labels: np.ndarray, datasets: list[Any], class_names: list[str], version: str) -> Path:
    import highdicom as hd
    from pydicom.sr.codedict import codes

    frames = np.ascontiguousarray(labels.transpose(2, 1, 0))  # (slices, rows, columns)
    count = len(class_names) - 1
    dtype = np.uint8 if count < 256 else np.uint16
    algorithm = hd.AlgorithmIdentificationSequence(
        name="medseg", family=codes.cid7162.ArtificialIntelligence, version=version
    )
    segments = [
        hd.seg.SegmentDescription(
            segment_number=i,
            segment_label=str(class_names[i])[:64],
            segmented_property_category=codes.SCT.Tissue,
            segmented_property_type=hd.sr.CodedConcept(str(i), "99MEDSEG", str(class_names[i])[:64]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
        )
        for i in range(1, count + 1)
    ]
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames.astype(dtype),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segments,
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medseg",
        manufacturer_model_name="medseg",
        software_versions=version,
        device_serial_number="0",
        series_description="medseg segmentation",
        omit_empty_frames=bool(frames.any()),
    )
    return atomic_write(path, lambda tmp: seg.save_as(tmp))


def read_seg(source: Any, volume: Any, where: str, shown: str) -> np.ndarray:
    """A SEG of `volume`'s series -> a label map (columns, rows, slices) of segment numbers on its grid.

    Each frame is placed by its ImagePositionPatient on the slice at that position (never by frame
    order or by the referenced instance), and must lie on it; segment number = class index, as
    write_seg numbers them. BINARY, FRACTIONAL (inside above half the maximum) and LABELMAP are read;
    overlapping segments are refused (a label map holds one class per voxel).
    """
    import highdicom as hd
    import pydicom

    try:
        seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(source))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{where}: {shown} is not a readable DICOM SEG ({type(exc).__name__}); replace it") from None
    uid = str(volume.datasets[0].SeriesInstanceUID)
    refs = sorted({str(r.SeriesInstanceUID) for r in getattr(seg, "ReferencedSeriesSequence", [])})
    if uid not in refs:
        raise DataError(
            f"{where}: {shown} references series {', '.join(refs) or '(none)'}, not the case's series {uid};"
            " give the SEG made on this series"
        )
    first = volume.datasets[0]
    iop = np.asarray([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in volume.datasets])
    step = float(np.linalg.norm(volume.affine[:3, 2]))
    tol = 0.01 + 0.01 * step
    pixels = np.asarray(seg.pixel_array)
    pixels = pixels[None] if pixels.ndim == 2 else pixels
    if pixels.shape[1:] != (int(first.Rows), int(first.Columns)):
        raise DataError(
            f"{where}: {shown} has frames of {pixels.shape[1]}x{pixels.shape[2]} pixels but the series has"
            f" {first.Rows}x{first.Columns}; give a SEG on the series' grid"
        )
    kind = str(seg.SegmentationType)
    cut = float(getattr(seg, "MaximumFractionalValue", 1) or 1) / 2 if kind == "FRACTIONAL" else 0
    shared = seg.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in seg else None
    out = np.zeros((int(first.Columns), int(first.Rows), len(volume.datasets)), dtype=np.int16)
    for f, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        plane = frame if "PlaneOrientationSequence" in frame else shared
        frame_iop = [float(v) for v in plane.PlaneOrientationSequence[0].ImageOrientationPatient]
        pos = np.asarray([float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient])
        k = int(np.argmin(np.abs(positions @ normal - pos @ normal)))
        if not np.allclose(frame_iop, iop, atol=1e-4) or np.linalg.norm(positions[k] - pos) > tol:
            raise DataError(
                f"{where}: frame {f + 1} of {shown} lies on no slice of the series (position {pos.round(2).tolist()});"
                " give a SEG on the series' grid"
            )
        values = pixels[f].T.astype(np.int16)
        if kind != "LABELMAP":
            number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
            values = np.where(pixels[f].T > cut, number, 0).astype(np.int16)
        plane_k = out[:, :, k]
        clash = (plane_k > 0) & (values > 0) & (plane_k != values)
        if clash.any():
            raise DataError(
                f"{where}: segments {int(plane_k[clash][0])} and {int(values[clash][0])} of {shown} overlap;"
                " evaluation needs one class per voxel"
            )
        plane_k[values > 0] = values[values > 0]
    return out
