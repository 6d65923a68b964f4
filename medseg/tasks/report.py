"""mode=report: report.html for a run, evaluate or multirun folder (report.path), or for the run of ckpt."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from medseg.errors import ConfigError

log = logging.getLogger(__name__)


def run_report(cfg: DictConfig) -> Path:
    from medseg.report import write_report
    from medseg.report.sources import training_folder

    if cfg.report.path:
        folder, ckpt = Path(str(cfg.report.path)).expanduser(), cfg.ckpt or None
    elif cfg.ckpt:
        if not Path(str(cfg.ckpt)).expanduser().is_file():
            raise ConfigError(f"ckpt={cfg.ckpt} is not a file; pass ckpt=<run>/checkpoints/best.pt")
        folder, ckpt = training_folder(cfg.ckpt), cfg.ckpt
    else:
        raise ConfigError("mode=report needs report.path=<run, evaluate or multirun folder> or ckpt=<checkpoint>")
    path = write_report(folder, ckpt=ckpt, output=cfg.report.output)
    log.info("report written: %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
