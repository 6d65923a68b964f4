"""mode=export ckpt=<crossval folder or crossval.json>: the chosen ensemble as one export folder.

Every checkpoint crossval.json chose becomes one ONNX file, exported and checked against PyTorch like a
single model (medseg/tasks/onnx_model.py), each with its SHA-256 in the manifest. The folds of one
configuration share its preprocessing and are listed together; an ensemble of configurations with their
own preprocessing (say 2D and 3D) gets one `configurations` entry each (docs/deploy.md), and the deployed
predictor averages their probabilities slice by slice on the output grid, as `mode=predict ckpt=<crossval
folder>` does (medseg/crossval/apply.py). The post-processing crossval chose per class goes into the
manifest's `postprocessing`. The checkpoints are restored with every check that predict applies
(medseg/crossval/apply.py `restore_choice`); crossval.json never chooses where anything is written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

import medseg
from medseg.crossval.apply import restore_choice
from medseg.deploy.manifest import FORMAT, FORMAT_VERSION, sha256, write_manifest
from medseg.tasks.onnx_model import configuration_keys, export_model, output_folder, shared_keys, window_weights

log = logging.getLogger(__name__)


def export_crossval(cfg: DictConfig, source: Path) -> Path:
    choice = restore_choice(source, torch.device("cpu"))
    out = output_folder(cfg)
    opset = int(cfg.export.opset)
    several = len(choice.configurations) > 1
    groups: list[dict[str, Any]] = []
    checkpoints = []
    for i, config in enumerate(choice.configurations):
        models, dynamic = [], True
        for j, (path, fold) in enumerate(zip(config.checkpoints, config.restored)):
            file = f"model_{i}_{j}.onnx" if several else f"model_{j}.onnx"
            entry, fold_dynamic = export_model(fold, out, file, opset, path)
            models.append(entry)
            dynamic = dynamic and fold_dynamic
            checkpoints.append({"configuration": config.name, "file": file, **_source(path, fold)})
        first = config.restored[0]
        files = window_weights(first, out, f"window_weights_{i}.npy" if several else "window_weights.npy")
        groups.append({"name": config.name, **configuration_keys(cfg, first, opset, dynamic, models, files)})
    first = choice.configurations[0].restored[0]
    shared = shared_keys(cfg, first)
    ops = sorted(choice.ops.items())
    shared["postprocessing"] = [{"class": choice.class_names[c], "operation": op} for c, op in ops]
    manifest: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION if several or shared["postprocessing"] else 1,
        "medseg_version": medseg.__version__,
        **{k: v for k, v in groups[0].items() if k != "name"},
        **shared,
        "source": {"crossval": choice.name, "crossval_sha256": sha256(source), "checkpoints": checkpoints},
    }
    if several:
        manifest["models"] = [m for g in groups for m in g["models"]]
        manifest["files"] = [f for g in groups for f in g["files"]]
        manifest["configurations"] = groups
    write_manifest(out, manifest)  # last: a folder without it is no export
    log.info(
        "exported the crossval result %s (%s) to %s; post-processing: %s",
        choice.name,
        ", ".join(f"{g['name']}: {len(g['models'])} model(s)" for g in groups),
        out,
        ", ".join(f"{e['class']} {e['operation']}" for e in shared["postprocessing"]) or "none",
    )
    return out


def _source(path: str, restored: Any) -> dict[str, Any]:
    return {"checkpoint_sha256": sha256(Path(path).expanduser()), "epoch": restored.ckpt.get("epoch")}
