"""Reports written at the end of training, evaluate and a multirun (report.enabled). A report that cannot
be written is a warning: it never turns a finished run into a failure."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger(__name__)


def enabled(cfg: Any) -> bool:
    return bool(OmegaConf.select(cfg, "report.enabled", default=True))


def report_after_training(
    cfg: DictConfig, out: Path, trainer: Any, model: Any, data: Any, facts: dict[str, Any]
) -> Path | None:
    """run_facts.json, best/median/worst validation overlays (best weights), then report.html."""
    if not enabled(cfg):
        return None
    from medseg.engine.checkpoint import library_versions
    from medseg.io_utils import write_json
    from medseg.report import write_report

    try:
        from medseg.config.redact import redact_text, secret_values

        command = redact_text(_command() or "", secret_values(cfg)) or None  # an API key given on the command line
        write_json(
            out / "run_facts.json",
            {**facts, "precision": trainer.precision.name, "versions": library_versions(), "command": command},
        )
        _overlays(cfg, out, trainer, model, data)
        path = write_report(out)
    except Exception as exc:  # noqa: BLE001 - the run itself has finished and is saved
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None
    log.info("report: %s", path)
    return path


def _overlays(cfg: DictConfig, out: Path, trainer: Any, model: Any, data: Any) -> None:
    from medseg.report.overlays import write_validation_overlays

    cases = int(OmegaConf.select(cfg, "report.overlay_cases", default=16))
    if cases <= 0 or data.val_loader is None or len(data.val_loader.dataset) == 0:
        return
    best = out / "checkpoints" / "best.pt"
    if best.is_file():  # the weights the run reports as best, not those of the last epoch
        from medseg.engine.checkpoint import load_checkpoint

        model.load_state_dict(load_checkpoint(best)["model"])
    dataset = data.val_loader.dataset
    write_validation_overlays(
        model,
        dataset,
        list(getattr(dataset, "case_ids", None) or data.info.val_cases),
        trainer.inferer,
        trainer.device,
        trainer.precision,
        list(data.info.class_names),
        out,
        max_cases=cases,
        slices=int(OmegaConf.select(cfg, "report.overlay_slices", default=3)),
        slice_axis=int(cfg.data.slice_axis),
    )


def report_after_evaluate(cfg: DictConfig) -> Path | None:
    """report.html in the evaluate folder: evaluate's tables, the training run's curves and facts."""
    if not enabled(cfg):
        return None
    from medseg.report import write_report
    from medseg.runtime import run_dir

    try:
        path = write_report(run_dir(cfg), ckpt=cfg.ckpt)
    except Exception as exc:  # noqa: BLE001 - metrics.csv and summary.json are written already
        log.warning("report not written: %s: %s", type(exc).__name__, exc)
        return None
    log.info("report: %s", path)
    return path


def report_after_multirun(cfg: DictConfig, sweep_dir: Path) -> Path | None:
    if not enabled(cfg):
        return None
    from medseg.report.sweep_report import write_sweep_report

    try:
        path = write_sweep_report(sweep_dir, top_trials=int(OmegaConf.select(cfg, "report.top_trials", default=5)))
    except Exception as exc:  # noqa: BLE001 - the trials are finished and recorded
        log.warning("sweep report not written: %s: %s", type(exc).__name__, exc)
        return None
    log.info("sweep report: %s", path)
    return path


def _command() -> str | None:
    """`python run.py <overrides>` when running under Hydra."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return None
    return " ".join(["python run.py", *HydraConfig.get().overrides.task])
