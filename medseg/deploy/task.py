"""`python run.py mode=predict ckpt=<export folder>`: predict with onnxruntime, importing no torch.

predict.tta, predict.overlap, predict.batch_size and predict.threshold come from the manifest (the values
the model was exported with) unless given on the command line.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from medseg.deploy.runner import open_export, predict_cases
from medseg.dicom.cases import check_output_format, collect_cases
from medseg.errors import MedsegError
from medseg.hardware import busy_cpus, command_line_keys, cpu_limits, usable_cpus

log = logging.getLogger(__name__)


def run_predict_export(cfg: DictConfig) -> list[Path]:
    from medseg.runtime import run_dir

    pcfg = cfg.predict
    cases = collect_cases(pcfg.input)
    check_output_format(str(pcfg.output_format), cases)
    cpus = usable_cpus()
    _, threads = cpu_limits(0, cfg.hardware.num_threads, cpus, busy_cpus(cpus))
    export = open_export(cfg.ckpt, threads)
    out_dir = Path(str(pcfg.output_dir)).expanduser() if pcfg.output_dir else run_dir(cfg) / "predictions"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        problem = f"predict.output_dir={out_dir} cannot be created ({exc.strerror}); choose another folder"
        raise MedsegError(problem) from exc
    given = command_line_keys()
    settings: dict[str, Any] = {key: pcfg[key] for key in ("tta", "overlap", "batch_size") if f"predict.{key}" in given}
    threshold = float(pcfg.threshold) if "predict.threshold" in given else None
    if pcfg.viz:
        log.warning("predict.viz: overlays are not drawn with an export folder; predict with the checkpoint for them")
    if not pcfg.save:
        log.info("predict.save=false: nothing to write")
        return []
    return predict_cases(export, cases, out_dir, str(pcfg.output_format), threshold, **settings)
