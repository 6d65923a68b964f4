"""Test helper: write a volume as a DICOM series with pydicom (one single-frame file per slice)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def expected_affine(spacing, iop=(1, 0, 0, 0, 1, 0), origin=(0, 0, 0)) -> np.ndarray:
    """The RAS affine of volume indices (column, row, slice) for a series written by `write_series`."""
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2] = row_dir * spacing[0], col_dir * spacing[1], normal * spacing[2]
    lps[:3, 3] = origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def write_series(
    folder: Path,
    volume: np.ndarray,
    spacing=(0.8, 0.9, 2.5),
    iop=(1, 0, 0, 0, 1, 0),
    origin=(-10.0, 20.0, 30.0),
    modality: str = "CT",
    slope: float = 1.0,
    intercept: float = 0.0,
    series_uid: str | None = None,
    series_number: int = 1,
    depths: list[float] | None = None,  # slice positions along the normal (default: k * spacing)
    tilt: float = 0.0,  # mm shift along the row direction per slice (gantry tilt)
    seed: int = 0,
) -> list[Path]:
    """volume (columns, rows, slices) in physical units -> files in shuffled order, reversed instance numbers."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid, frame_uid = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2"
    row_dir, col_dir = np.asarray(iop[:3], float), np.asarray(iop[3:], float)
    normal = np.cross(row_dir, col_dir)
    n = volume.shape[2]
    depths = [k * spacing[2] for k in range(n)] if depths is None else depths
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    order = np.random.default_rng(seed).permutation(n)
    paths = []
    for file_index, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientID, ds.PatientName, ds.PatientBirthDate, ds.PatientSex = "P1", "Test^Patient", "19700101", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber, ds.ReferringPhysicianName, ds.StudyID = (
            "20260101",
            "120000",
            "A1",
            "Ref^Doc",
            "S1",
        )
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = modality, series_number, int(n - k)
        ds.Manufacturer = "test"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Rows, ds.Columns = int(volume.shape[1]), int(volume.shape[0])
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = 99.0  # deliberately wrong: spacing must come from the positions
        ds.ImageOrientationPatient = [float(v) for v in iop]
        pos = np.asarray(origin, float) + depths[k] * normal + k * tilt * row_dir
        ds.ImagePositionPatient = [float(v) for v in pos]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        stored = np.round((volume[:, :, k] - intercept) / slope).astype(np.int16)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # (rows, columns)
        path = folder / f"IM{file_index:04d}"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
