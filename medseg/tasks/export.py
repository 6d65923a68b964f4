"""mode=export: a checkpoint -> one folder with model.onnx and manifest.json (see docs/deploy.md).

The folder is what `mode=predict ckpt=<folder>` and `python -m medseg.deploy` run with onnxruntime:
- model.onnx: the network in eval mode, ending at its logits, exported with torch.onnx
  (TorchScript exporter, opset export.opset), checked with onnx.checker, batch and spatial axes
  dynamic (3D patch models take windows of the fixed patch size); onnxruntime's output is compared
  with PyTorch's before the folder is written, on the export size and, for dynamic axes, on a second size;
- window_weights.npy: MONAI's Gaussian importance map for 3D sliding windows (data, not code);
- manifest.json: classes and names, 2D/2.5D/3D, context slices, padding, patch and sliding-window
  settings, the target voxel spacing (data.spacing in mm, or null), scale or size, the intensity preset
  and its values, TTA, threshold and post-processing, accepted DICOM modalities, the medseg version and
  the SHA-256 of each file.
A model trained with data.spacing is exported like any other: the deployed predictor resamples each
volume to the manifest's spacing (medseg/deploy/spacing.py, MONAI's Spacingd in numpy, from the NIfTI
affine or the DICOM series' positions) and brings the probabilities back onto the input's grid as
mode=predict does.
Where it is written comes from this run's config (export.output_dir, else <run folder>/export), never
from the checkpoint. ckpt=<crossval folder or crossval.json> exports the chosen ensemble and its
post-processing (medseg/tasks/export_ensemble.py).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

import medseg
from medseg.deploy.manifest import FORMAT, sha256, write_manifest
from medseg.errors import ConfigError
from medseg.tasks.onnx_model import configuration_keys, export_model, output_folder, shared_keys, window_weights
from medseg.tasks.restore import restore_model

log = logging.getLogger(__name__)


def run_export(cfg: DictConfig) -> Path:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f'mode=export needs onnx and onnxruntime ({exc}); pip install -e ".[deploy]"') from exc
    from medseg.crossval.apply import crossval_file

    source = crossval_file(cfg.ckpt)
    if source is not None:  # ckpt= names the outcome of mode=crossval: one ONNX file per model
        from medseg.tasks.export_ensemble import export_crossval

        return export_crossval(cfg, source)
    restored = restore_model(cfg.ckpt, torch.device("cpu"))
    out = output_folder(cfg)
    opset = int(cfg.export.opset)
    model, dynamic = export_model(restored, out, "model.onnx", opset, str(cfg.ckpt))
    files = window_weights(restored, out, "window_weights.npy")
    manifest = build_manifest(cfg, restored, opset, dynamic, files, model["sha256"])
    write_manifest(out, manifest)
    log.info("exported %s to %s (opset %d, dynamic spatial axes: %s)", cfg.ckpt, out, opset, dynamic)
    return out


def build_manifest(
    cfg: DictConfig, restored: Any, opset: int, dynamic: bool, files: list[dict], model_sha: str
) -> dict[str, Any]:
    models = [{"file": "model.onnx", "sha256": model_sha}]
    return {
        "format": FORMAT,
        "format_version": 1,
        "medseg_version": medseg.__version__,
        **configuration_keys(cfg, restored, opset, dynamic, models, files),
        **shared_keys(cfg, restored),
        "source": {"checkpoint_sha256": sha256(Path(str(cfg.ckpt)).expanduser()), "epoch": restored.ckpt.get("epoch")},
    }
