"""A label map on a DICOM series' grid -> one DICOM SEG file, written with highdicom.

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
