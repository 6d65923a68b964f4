"""Predict and evaluate with the outcome of mode=crossval: ckpt=<crossval folder or its crossval.json>.

The chosen configurations each become one VolumePredictor holding all their fold models (which share
one preprocessing): for each batch of slices or 3D slab, every fold model runs in turn and their
softmax probabilities are summed into one buffer. Configurations of an ensemble (say 2D and 3D) each
read the image through their own preprocessing and stream probability slices on the same target grid;
each target slice is averaged over them as it arrives, turned into class indices and dropped. Memory
grows with the models' weights, and with one slab buffer per configuration, never with the number of
fold models. The chosen post-processing is applied to the integer mask, which is then written on the
input's grid.

crossval.json is data: it is read with the JSON parser, its checkpoints are restored with every check
of restore_model, and it never chooses where anything is written.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medseg.crossval.postprocess import OPERATIONS, apply_postprocessing
from medseg.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)

RESULT = "crossval.json"


def crossval_file(ckpt: Any) -> Path | None:
    """The crossval.json that ckpt names (the file, or a folder holding it), else None."""
    if not ckpt:
        return None
    path = Path(str(ckpt)).expanduser()
    if path.is_dir() and (path / RESULT).is_file():
        return path / RESULT
    if path.is_file() and path.name == RESULT:
        return path
    return None


@dataclass
class Member:
    name: str
    data_cfg: Any
    predictor: Any
    channels: int
    precision: str


class EnsemblePredictor:
    def __init__(self, members: list[Member], class_names: list[str], ops: dict[int, str], mask_values: Any) -> None:
        self.members, self.class_names, self.ops, self.mask_values = members, class_names, ops, mask_values
        self.num_classes = len(class_names)
        self.axis = int(members[0].data_cfg.slice_axis)

    @torch.no_grad()
    def labels(
        self, images: list[torch.Tensor], shape: tuple[int, ...], threshold: float | None, affine: Any = None
    ) -> np.ndarray:
        """One image per member (in its input space) -> post-processed class indices on `shape` (whose
        affine a member trained with data.spacing needs)."""
        from medseg.inference.predictor import from_slices, slice_count, to_labels

        streams = [m.predictor.probability_slices(img, shape, affine) for m, img in zip(self.members, images)]
        out = None
        n = slice_count(images[0], shape, self.axis)
        for parts in zip(*streams):
            t = parts[0][0]
            assert all(p[0] == t for p in parts), "members emit the same target slices in order"
            probs = parts[0][1] if len(parts) == 1 else sum(p[1] for p in parts) / len(parts)
            if out is None:
                out = torch.zeros((n, *probs.shape[1:]), dtype=torch.int16)
            out[t] = to_labels(probs, threshold).to(torch.int16)
        assert out is not None
        labels = from_slices(out, images[0].ndim == 3, self.axis).numpy()
        return apply_postprocessing(labels, self.ops)


@dataclass
class Configuration:
    name: str
    checkpoints: list[str]  # as crossval.json names them, one per fold
    restored: list[Any]  # medseg.tasks.restore.Restored, in the same order


@dataclass
class Choice:
    """crossval.json's chosen result, restored and checked: its configurations with their restored folds,
    the class names and mask values they share, and the post-processing {class index: operation}."""

    name: str
    configurations: list[Configuration]
    class_names: list[str]
    mask_values: Any
    ops: dict[int, str]


def restore_choice(path: Path, device: torch.device) -> Choice:
    """Restore every checkpoint crossval.json chose, with the checks predict and export both need."""
    from medseg.tasks.restore import restore_model

    choice = read_choice(path)
    configurations: list[Configuration] = []
    names: list[str] | None = None
    mask_values = None
    for config in choice["configurations"]:
        restored = [restore_model(str(p), device) for p in config["checkpoints"]]
        first = restored[0]
        for other, p in zip(restored[1:], config["checkpoints"][1:]):
            if _preprocessing(other.cfg) != _preprocessing(first.cfg) or other.class_names != first.class_names:
                raise CheckpointError(
                    f"{path}: checkpoint {p} of configuration {config['name']} differs from"
                    f" {config['checkpoints'][0]} in preprocessing or classes; a configuration's folds must share them"
                )
        if names is None:
            names, mask_values = first.class_names, first.ckpt.get("mask_values")
        elif first.class_names != names:
            raise CheckpointError(f"{path}: configuration {config['name']} predicts other classes than the first")
        configurations.append(Configuration(str(config["name"]), [str(p) for p in config["checkpoints"]], restored))
    assert names is not None
    if len({int(c.restored[0].cfg.data.slice_axis) for c in configurations}) > 1:
        raise CheckpointError(f"{path}: the chosen configurations predict along different slice axes")
    ops = {}
    for name, decision in choice["postprocessing"].items():
        op = decision.get("operation") if isinstance(decision, dict) else None
        if op is None:
            continue
        if op not in OPERATIONS or name not in names[1:]:
            raise CheckpointError(f"{path}: post-processing {name}={op!r} names no class or operation; rerun crossval")
        ops[names.index(name)] = op
    return Choice(choice["name"], configurations, list(names), mask_values, ops)


def load_ensemble(path: Path, device: torch.device, pcfg: Any) -> EnsemblePredictor:
    from medseg.inference.predictor import context_slices
    from medseg.tasks.restore import checkpoint_predictor

    choice = restore_choice(path, device)
    members: list[Member] = []
    for config in choice.configurations:
        first = config.restored[0]
        data_cfg = first.cfg.data
        predictor = checkpoint_predictor(first, pcfg, device, models=[r.model for r in config.restored])
        channels = first.in_channels // (2 * context_slices(data_cfg) + 1)
        members.append(Member(config.name, data_cfg, predictor, channels, str(first.cfg.trainer.precision)))
    names, ops = choice.class_names, choice.ops
    log.info(
        "ensemble %s: %s; post-processing: %s",
        choice.name,
        ", ".join(f"{m.name} ({len(m.predictor.models)} model(s))" for m in members),
        ", ".join(f"{names[c]} {op}" for c, op in ops.items()) or "none",
    )
    return EnsemblePredictor(members, names, ops, choice.mask_values)


def read_choice(path: Path) -> dict[str, Any]:
    try:
        result = json.loads(path.read_text())
        chosen = result["chosen"]
        configs = chosen["configurations"]
        assert isinstance(configs, list) and configs
        for c in configs:
            assert isinstance(c["name"], str) and isinstance(c["checkpoints"], list) and c["checkpoints"]
            assert all(isinstance(p, str) for p in c["checkpoints"])
        assert isinstance(result["postprocessing"], dict)
    except (OSError, ValueError, KeyError, TypeError, AssertionError):
        raise CheckpointError(f"{path} cannot be read as the result of mode=crossval; rerun crossval") from None
    return {"name": str(chosen["name"]), "configurations": configs, "postprocessing": result["postprocessing"]}


def _preprocessing(cfg: Any) -> Any:
    """The stored data settings a configuration's folds share (all but the fold itself)."""
    from medseg.config.stored import stored_preprocessing

    return {k: v for k, v in stored_preprocessing(cfg).items() if k != "fold"}


def run_predict_crossval(cfg: DictConfig, source: Path) -> None:
    from medseg.data.transforms import volume_transforms
    from medseg.inference.image_io import collect_inputs, read_geometry, save_mask, stem_of, suffix_of
    from medseg.inference.predict_io import ensure_writable, load_input, progress, raw_image, write_overlay
    from medseg.runtime import run_dir, select_device

    pcfg = cfg.predict
    files = collect_inputs(pcfg.input)
    ensemble = load_ensemble(source, select_device(cfg.hardware.device), pcfg)
    out_dir = Path(str(pcfg.output_dir)).expanduser() if pcfg.output_dir else run_dir(cfg) / "predictions"
    ensure_writable(out_dir)
    chains = [volume_transforms(m.data_cfg, with_label=False) for m in ensemble.members]
    written = 0
    for path in progress(files):
        geom = read_geometry(path)
        images = [load_input(path, chain, m.channels)[0] for m, chain in zip(ensemble.members, chains)]
        labels = ensemble.labels(images, geom.shape, float(pcfg.threshold), geom.affine)
        name = stem_of(path)
        if pcfg.save:
            ext = suffix_of(path) if geom.kind == "nifti" else ".png"
            save_mask(out_dir / f"{name}{ext}", labels, geom, ensemble.mask_values)
            written += 1
        if pcfg.viz:
            write_overlay(out_dir / f"{name}_overlay.png", raw_image(path), labels, None, ensemble.axis)
    log.info("predicted %d file(s) with the crossval ensemble; %d mask(s) written to %s", len(files), written, out_dir)


def run_evaluate_crossval(cfg: DictConfig, source: Path) -> float | None:
    """Score the ensemble on a labelled folder (evaluate.input): every training case was seen by some fold."""
    from medseg.config.stored import data_for_run
    from medseg.data.transforms import label_transforms, volume_transforms
    from medseg.inference.case_metrics import class_scores
    from medseg.inference.labelled_cases import evaluation_cases, load_case
    from medseg.inference.scores_summary import log_summary, summarise, write_results
    from medseg.runtime import run_dir, select_device

    if not cfg.evaluate.input:
        raise ConfigError(
            f"mode=evaluate ckpt={cfg.ckpt} scores a crossval ensemble, whose folds together saw every training case;"
            " give evaluate.input=<a labelled folder> of held-out cases (out-of-fold figures are in crossval.json)"
        )
    ensemble = load_ensemble(source, select_device(cfg.hardware.device), cfg.predict)
    names, k = ensemble.class_names, ensemble.num_classes
    per_member = []
    for member in ensemble.members:
        stored = OmegaConf.create({"data": member.data_cfg})
        data_source, data_cfg, cases, _ = evaluation_cases(
            cfg.evaluate.input,
            data_for_run(cfg.data, stored),
            str(cfg.paths.cache_dir),
            int(cfg.seed),
            names,
            modalities=cfg.export.modalities,
        )
        per_member.append((data_cfg, cases, volume_transforms(data_cfg, with_label=False), label_transforms(data_cfg)))
    rows: list[dict[str, Any]] = []
    cases = per_member[0][1]
    for i in range(len(cases)):
        images, item = [], None
        for member, (_, member_cases, image_chain, label_chain) in zip(ensemble.members, per_member):
            loaded = load_case(member_cases[i], image_chain, label_chain, member.channels, k)
            images.append(loaded.image)
            item = item or loaded
        assert item is not None
        pred = ensemble.labels(images, tuple(item.truth.shape), float(cfg.predict.threshold), item.affine)
        scores = class_scores(pred, item.truth, k, bool(cfg.evaluate.hd95), item.spacing)
        rows += [{"case": item.id, "class": names[c], **s} for c, s in enumerate(scores, start=1)]
    summary = summarise(rows, names, str(cfg.evaluate.input), len(cases))
    write_results(run_dir(cfg), rows, summary)
    log_summary(summary)
    return summary["mean_dice"]
