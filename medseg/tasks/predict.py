"""mode=predict: segment files or a folder with a checkpoint; masks keep the input's geometry.

Each input is predicted slice by slice (slab by slab for 3D models) straight into an integer mask on
the input's own grid (see medseg/inference/predictor.py); no float volume per class is held.
predict.threshold applies to two-class models, exactly as in mode=evaluate.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

import medseg
from medseg.data.transforms import volume_transforms
from medseg.deploy.outputs import write_case
from medseg.dicom.cases import check_output_format, collect_cases, trained_modalities
from medseg.inference.predict_io import ensure_writable, image_file, load_input, progress, raw_image, write_overlay
from medseg.inference.predictor import context_slices
from medseg.runtime import run_dir, select_device
from medseg.tasks.restore import checkpoint_predictor, restore_model

log = logging.getLogger(__name__)


def run_predict(cfg: DictConfig) -> None:
    from medseg.crossval.apply import crossval_file

    source = crossval_file(cfg.ckpt)
    if source is not None:  # ckpt= names the outcome of mode=crossval: its ensemble and post-processing
        from medseg.crossval.apply import run_predict_crossval

        return run_predict_crossval(cfg, source)
    pcfg = cfg.predict
    files = collect_cases(pcfg.input)  # files, or DICOM series (a folder of series, a zip)
    check_output_format(str(pcfg.output_format), files)
    device = select_device(cfg.hardware.device)
    restored = restore_model(cfg.ckpt, device)
    out_dir = Path(str(pcfg.output_dir)).expanduser() if pcfg.output_dir else run_dir(cfg) / "predictions"
    ensure_writable(out_dir)
    data_cfg = restored.cfg.data
    predictor = checkpoint_predictor(restored, pcfg, device, data_cfg)
    chain = volume_transforms(data_cfg, with_label=False)
    channels = restored.in_channels // (2 * context_slices(data_cfg) + 1)
    values = restored.ckpt.get("mask_values")
    written = 0
    modalities = trained_modalities(str(data_cfg.intensity.preset), cfg.export.modalities)
    for case in progress(files):
        with image_file(case, modalities) as (path, volume):
            image, geom = load_input(path, chain, channels)
            labels = predictor.labels(image, geom.shape, float(pcfg.threshold), geom.affine).numpy()
            name = case.name
            if pcfg.save:
                fmt, names = str(pcfg.output_format), restored.class_names
                write_case(out_dir, case, labels, geom, fmt, names, values, volume, medseg.__version__)
                written += 1
            if pcfg.viz:
                raw = raw_image(path)
                write_overlay(out_dir / f"{name}_overlay.png", raw, labels, None, int(data_cfg.slice_axis))
    log.info("predicted %d file(s); %d mask(s) written to %s", len(files), written, out_dir)
