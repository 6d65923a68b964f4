"""The application: print and check the composed config, then run the chosen mode."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medseg.errors import ConfigError

log = logging.getLogger("medseg")


def _train(cfg: DictConfig) -> Any:
    from medseg.tasks.train import run_train

    return run_train(cfg)


def _evaluate(cfg: DictConfig) -> Any:
    from medseg.tasks.evaluate import run_evaluate

    return run_evaluate(cfg)


def _runs_onnx(cfg: DictConfig) -> bool:
    from medseg.deploy.manifest import is_export

    return cfg.mode == "predict" and is_export(cfg.ckpt)


def _predict(cfg: DictConfig) -> Any:
    if _runs_onnx(cfg):
        from medseg.deploy.task import run_predict_export

        return run_predict_export(cfg)
    from medseg.tasks.predict import run_predict

    return run_predict(cfg)


def _export(cfg: DictConfig) -> Any:
    from medseg.tasks.export import run_export

    run_export(cfg)


def _benchmark(cfg: DictConfig) -> Any:
    from medseg.tasks.benchmark import run_benchmark

    run_benchmark(cfg)


def _lr_find(cfg: DictConfig) -> Any:
    from medseg.tasks.lr_find import run_lr_find

    return run_lr_find(cfg)


def _preprocess(cfg: DictConfig) -> Any:
    from medseg.tasks.preprocess import run_preprocess

    return run_preprocess(cfg)


def _report(cfg: DictConfig) -> Any:
    from medseg.tasks.report import run_report

    run_report(cfg)


def _plan(cfg: DictConfig) -> Any:
    from medseg.tasks.plan import run_plan

    return run_plan(cfg)


def _crossval(cfg: DictConfig) -> Any:
    from medseg.tasks.crossval import run_crossval

    return run_crossval(cfg)


MODES: dict[str, Callable[[DictConfig], Any]] = {
    "train": _train,
    "evaluate": _evaluate,
    "predict": _predict,
    "benchmark": _benchmark,
    "lr_find": _lr_find,
    "preprocess": _preprocess,
    "report": _report,
    "plan": _plan,
    "crossval": _crossval,
    "export": _export,
}


def main(cfg: DictConfig) -> Any:
    """Run one job; returns the monitored metric for train (what a sweeper optimises)."""
    if cfg.mode not in MODES:
        raise ConfigError(f"mode={cfg.mode!r} is not known; choose one of {', '.join(MODES)}")
    if cfg.mode in ("evaluate", "predict", "export") and not cfg.ckpt:
        raise ConfigError(f"mode={cfg.mode} needs ckpt=path/to/checkpoints/best.pt (or a crossval folder)")
    from medseg.planning.apply import PLANNING_MODES, apply_default_plan

    if cfg.mode in PLANNING_MODES:
        apply_default_plan(cfg)  # plan=default: data=msd / totalseg are planned (command-line keys win)
    from medseg.config.validate import validate_config

    validate_config(cfg)  # every value in its range before any work or output
    _keep_secrets_out(cfg)
    _config_tree(cfg, show=bool(cfg.print_config))
    if not _runs_onnx(cfg):  # predict with an export folder loads no torch (onnxruntime picks its threads)
        from medseg.hardware import apply_cpu_limits

        apply_cpu_limits(cfg)  # loader workers and PyTorch threads fitted to the usable CPUs, before any exist
    return MODES[cfg.mode](cfg)


def _keep_secrets_out(cfg: DictConfig) -> None:
    """Mask secret values (and URL passwords) in log records and in the config files Hydra has written.

    Secrets typed on the command line never reach these files (cli.one_line_errors moves them into
    environment variables first); this catches secrets that come from YAML files or ${oc.env:...}.
    """
    from medseg.config.redact import install_log_filter, redact_files, secret_values

    secrets = secret_values(cfg)
    install_log_filter(secrets)
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    files = []
    if hc.output_subdir:
        saved = Path(hc.runtime.output_dir) / str(hc.output_subdir)
        files += [saved / "config.yaml", saved / "hydra.yaml", saved / "overrides.yaml"]
    if hc.mode == RunMode.MULTIRUN:
        files.append(Path(hc.sweep.dir) / "multirun.yaml")
    redact_files(files, secrets)


def _config_tree(cfg: DictConfig, show: bool) -> None:
    """The short run header; the resolved config (secrets masked) as a tree: logged when `show`, always saved
    as config_tree.txt."""
    from medseg.config.header import hydra_choices_and_overrides, run_header
    from medseg.config.redact import redact_config, redact_text, secret_values
    from medseg.config.tree import config_tree
    from medseg.io_utils import write_text
    from medseg.runtime import run_dir

    out = run_dir(cfg)
    tree = config_tree(redact_config(cfg))
    write_text(out / "config_tree.txt", tree)
    choices, overrides = hydra_choices_and_overrides()
    if choices.get("plan") == "default" and OmegaConf.select(cfg, "plan.name") in ("auto", "none"):
        choices["plan"] = str(cfg.plan.name)  # what plan=default became for this data (medseg.planning.apply)
        if cfg.plan.name == "auto" and str(cfg.model.get("_target_", "")).endswith(".PlannedUNet"):
            choices["model"] = "planned_unet"
    secrets = secret_values(cfg)
    overrides = [redact_text(o, secrets) for o in overrides]
    checkpoint = None
    if cfg.mode in ("evaluate", "predict") and cfg.ckpt:  # the model, data and plan come from the checkpoint
        from medseg.config.header import checkpoint_summary

        checkpoint = checkpoint_summary(cfg.ckpt)
    tree_file = None if show else out / "config_tree.txt"
    log.info("%s", run_header(str(cfg.mode), choices, overrides, out, tree_file, checkpoint=checkpoint))
    from medseg.planning.apply import plan_summary, write_plan_json

    summary = plan_summary(cfg)  # plan=auto: which plan this run trains (plan.json in the run folder)
    if summary:
        log.info("%s", summary)
        write_plan_json(cfg, out / "plan.json")
    if show:
        log.info("config:\n%s", tree)
