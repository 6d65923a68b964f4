"""Deployed inference: an export folder (mode=export) run with onnxruntime.

This package imports no torch, MONAI or training code: only numpy, onnxruntime, nibabel and, for DICOM,
pydicom and highdicom (the `deploy` extra). It is used by `python run.py mode=predict ckpt=<export folder>`
and by the one-file entry point `python -m medseg.deploy <export folder> <input> <output>`.
"""
