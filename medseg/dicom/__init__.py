"""DICOM in (a series, a folder of series or a zip, read with pydicom) and DICOM SEG out (highdicom)."""
