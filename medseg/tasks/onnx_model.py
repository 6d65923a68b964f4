"""One network to an ONNX file, and the manifest keys it brings: the pieces of mode=export
(medseg/tasks/export.py) that a single checkpoint and a crossval ensemble (medseg/tasks/export_ensemble.py)
share.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medseg.deploy.manifest import sha256
from medseg.dicom.cases import trained_modalities
from medseg.errors import MedsegError
from medseg.inference.predictor import context_slices
from medseg.runtime import run_dir
from medseg.tasks.restore import mirroring_at_test_time

log = logging.getLogger(__name__)

TOLERANCE = 1e-3  # max |onnxruntime - PyTorch| logit difference accepted at export (float32 kernels differ ~1e-5)


def output_folder(cfg: DictConfig) -> Path:
    """export.output_dir, else <run folder>/export; created, and refused when it already holds an export."""
    out = Path(str(cfg.export.output_dir)).expanduser() if cfg.export.output_dir else run_dir(cfg) / "export"
    if (out / "manifest.json").exists():
        raise MedsegError(f"export.output_dir={out} already holds an export; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def export_model(restored: Any, out: Path, name: str, opset: int, source: str) -> tuple[dict[str, str], bool]:
    """The restored network as out/<name>, checked against PyTorch; ({file, sha256}, dynamic spatial axes)."""
    data = restored.cfg.data
    dims, k = int(data.dims), int(data.pad_divisible)
    patch = [int(p) for p in data.patch_size] if data.patch_size else None
    example, other = _example_shapes(dims, patch, k, restored.in_channels)
    dynamic = dims == 2 or not patch
    # the graph ends at the logits: onnxruntime's Softmax over the class axis (not the last one) transposes
    # the whole output twice and was 62% of a 118-class 2D forward; the deployed predictor applies its own
    # softmax on its threads (3D windows blend logits first anyway)
    network = restored.model
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        onnx_path = Path(tmp) / name
        _export_onnx(network, example, onnx_path, opset, dims, dynamic)
        if dynamic and not _agrees(network, onnx_path, other):
            log.info("the network does not run on other sizes with dynamic axes; exporting fixed sizes")
            dynamic = False
            _export_onnx(network, example, onnx_path, opset, dims, dynamic)
        if not _agrees(network, onnx_path, example):
            raise MedsegError(f"ckpt={source}: onnxruntime's output differs from PyTorch's by more than {TOLERANCE}")
        shutil.move(str(onnx_path), out / name)
    return {"file": name, "sha256": sha256(out / name)}, dynamic


def window_weights(restored: Any, out: Path, name: str) -> list[dict[str, str]]:
    """MONAI's Gaussian importance map of a 3D patch model as out/<name> (its files entry), else nothing."""
    data = restored.cfg.data
    if int(data.dims) != 3 or not data.patch_size:
        return []
    from monai.data.utils import compute_importance_map

    patch = [int(p) for p in data.patch_size]
    weights = compute_importance_map(patch, mode="gaussian", sigma_scale=0.125, dtype=torch.float32)
    np.save(out / name, weights.cpu().numpy().astype(np.float32))
    return [{"file": name, "role": "window_weights", "sha256": sha256(out / name)}]


def _example_shapes(dims: int, patch: list[int] | None, k: int, channels: int) -> tuple[tuple, tuple]:
    if dims == 3:
        if patch:
            return (1, channels, *patch), (2, channels, *patch)
        return (1, channels, 2 * k, 2 * k, 2 * k), (1, channels, 3 * k, 2 * k, k)
    return (1, channels, 4 * k, 4 * k), (2, channels, 3 * k, 5 * k)


def _export_onnx(model: torch.nn.Module, shape: tuple, path: Path, opset: int, dims: int, dynamic: bool) -> None:
    import warnings

    axes: dict[int, str] = {0: "batch"}
    if dynamic:
        axes.update({2 + d: f"spatial{d}" for d in range(dims)})
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["image"],
            output_names=["output"],
            dynamic_axes={"image": axes, "output": axes},
        )
    import onnx

    onnx.checker.check_model(str(path), full_check=True)


def _agrees(model: torch.nn.Module, path: Path, shape: tuple) -> bool:
    import onnxruntime as ort

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(x).numpy()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        got = session.run(None, {"image": x.numpy()})[0]
    except Exception as exc:  # noqa: BLE001 - a network whose graph fixes a size fails here
        log.debug("onnxruntime on %s: %s", shape, exc)
        return False
    return got.shape == expected.shape and float(np.abs(got - expected).max()) <= TOLERANCE


def shared_keys(cfg: DictConfig, restored: Any) -> dict[str, Any]:
    """The manifest keys every configuration of an export shares: classes, threshold, DICOM modalities."""
    return {
        "classes": {
            "count": restored.num_classes,
            "names": list(restored.class_names),
            "mask_values": restored.ckpt.get("mask_values"),
        },
        "threshold": float(cfg.predict.threshold),
        "postprocessing": [],
        "modalities": trained_modalities(str(restored.cfg.data.intensity.preset), cfg.export.modalities),
    }


def configuration_keys(
    cfg: DictConfig, restored: Any, opset: int, dynamic: bool, models: list[dict], files: list[dict]
) -> dict[str, Any]:
    """The manifest keys of one configuration (medseg/deploy/manifest.py GROUP_KEYS): its files and how it
    reads an image."""
    data = restored.cfg.data
    intensity = OmegaConf.to_container(data.intensity, resolve=True)
    assert isinstance(intensity, dict)
    return {
        "opset": opset,
        "dynamic_spatial": dynamic,
        "models": models,
        "files": files,
        "input": {"name": "image", "channels": restored.in_channels},
        "output": "logits",
        "dims": int(data.dims),
        "slice_axis": int(data.slice_axis),
        "context_slices": context_slices(data),
        "pad_divisible": int(data.pad_divisible),
        "patch_size": [int(p) for p in data.patch_size] if data.patch_size else None,
        "sliding_window": {
            "overlap": float(cfg.predict.overlap),
            "batch_size": int(cfg.predict.batch_size),
            "mode": "gaussian",
            "sigma_scale": 0.125,
        },
        # data.spacing: the deployed predictor resamples each volume to it as training's Spacingd did
        "spacing": [float(s) for s in data.spacing] if OmegaConf.select(data, "spacing", default=None) else None,
        "scale": float(data.scale),
        "image_size": [int(s) for s in data.image_size] if data.image_size else None,
        "intensity": {k: intensity[k] for k in ("preset", "percentiles", "ct_window", "mean", "std") if k in intensity},
        "tta": mirroring_at_test_time(cfg.predict.tta, restored),  # as predict would
    }
