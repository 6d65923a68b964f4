"""Weights & Biases tracker. Offline by default: the run lives in <run folder>/wandb/offline-run-*
and can be uploaded later with `wandb sync`. The run starts in log_config, when the full config is
known (the run name is filled from it); its id goes into checkpoints so a resumed training continues it.
wandb's own console banner and closing summary are silenced unless logger.wandb.verbose=true; medseg logs
one line with the run's folder instead.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medseg.config.redact import redact, secret_values
from medseg.errors import ConfigError
from medseg.tracking.base import Tracker, scalars
from medseg.tracking.run_name import format_run_name

log = logging.getLogger(__name__)

MODES = ("offline", "online", "disabled")
# Epoch-level keys are charted against the epoch; batch/* keys against the optimizer step.
EPOCH_KEYS = ("train/*", "val/*", "gap/*", "overfit/*", "best/*", "time/*", "gpu/*", "lr")


class WandbTracker(Tracker):
    resumes_by_id = True

    def __init__(
        self,
        run_dir: str,
        resume_id: str | None = None,
        mode: str | None = "offline",
        project: str = "medseg",
        entity: str | None = None,
        name: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        job_type: str | None = None,
        verbose: bool = False,
    ) -> None:
        mode = str(mode or "offline").lower()
        if mode not in MODES:
            raise ConfigError(f"logger.wandb.mode={mode!r}: choose offline, online or disabled")
        self.run_dir, self.resume_id, self.mode = Path(run_dir), resume_id, mode
        self.project, self.entity, self.name_template = project, entity, name
        self.group, self.tags, self.notes, self.job_type = group, list(tags or []), notes, job_type
        self.verbose = bool(verbose)
        self.run: Any = None
        self.run_id = resume_id

    # ------------------------------------------------------------------ start
    def log_config(self, config: dict[str, Any], facts: dict[str, Any]) -> None:
        import wandb

        secrets = secret_values(config)
        config = redact(config, secrets)
        name = format_run_name(self.name_template, config) if self.name_template else None
        tags = [str(t) for t in list(config.get("tags") or []) + self.tags]
        init: dict[str, Any] = {
            "dir": str(self.run_dir),
            "mode": self.mode,
            "project": self.project,
            "entity": self.entity,
            "name": redact(name, secrets),
            "group": redact(sweep_group(self.group), secrets),
            "tags": redact(list(dict.fromkeys(tags)), secrets) or None,
            "notes": redact(self.notes, secrets),
            "job_type": self.job_type,
            "config": {**config, "facts": facts},
            "reinit": "finish_previous",  # a multirun's jobs share one process: one run per job
            "settings": wandb.Settings(silent=not self.verbose),  # no banner, no closing summary
        }
        if self.resume_id:
            init.update(id=self.resume_id, resume="allow")
        try:
            with _redacted_argv(secrets):
                self.run = wandb.init(**init)
        except Exception as exc:  # noqa: BLE001 - no login, no network, bad entity: one line for the user
            reason = redact(" ".join(str(exc).split())[:300], secrets)
            raise ConfigError(
                f"logger.wandb: cannot start the {self.mode} run ({type(exc).__name__}: {reason}); for online runs"
                " run `wandb login` first, or use logger.wandb.mode=offline or logger=csv"
            ) from exc
        self.run_id = self.run.id
        self.run.define_metric("epoch")
        for key in EPOCH_KEYS:
            self.run.define_metric(key, step_metric="epoch")
        where = Path(self.run.dir).parent if self.mode != "disabled" else self.run_dir / "wandb"
        if self.mode == "offline":
            where = f"; upload later: wandb sync {where}"
        elif self.mode == "online":
            where = f" at {getattr(self.run, 'url', None) or where}"
        else:
            where = ""
        log.info("wandb: %s run %s (%s)%s", self.mode, self.run.name, self.run_id, where)

    # ------------------------------------------------------------------ logging
    def log_step(self, metrics: dict[str, float], step: int) -> None:
        if self.run is not None:
            self.run.log(scalars(metrics), step=step)

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        if self.run is not None:
            self.run.log(scalars(record), step=step)

    def log_images(self, name: str, images: list[Any], step: int, captions: list[str] | None = None) -> None:
        if self.run is None:
            return
        import wandb

        captions = captions or [None] * len(images)
        self.run.log({name: [wandb.Image(img, caption=c) for img, c in zip(images, captions)]}, step=step)

    def log_histograms(self, histograms: dict[str, tuple[Any, Any]], step: int) -> None:
        if self.run is None:
            return
        import wandb

        self.run.log({k: wandb.Histogram(np_histogram=(c, e)) for k, (c, e) in histograms.items()}, step=step)

    def log_summary(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if v is not None})

    def finish(self, exit_code: int = 0) -> None:
        if self.run is None:
            return
        run, self.run = self.run, None
        try:
            run.finish(exit_code=exit_code)
        except Exception as exc:  # noqa: BLE001 - never hide the error that ended training
            log.warning("wandb: could not finish run %s cleanly: %s", self.run_id, exc)


def sweep_group(explicit: str | None = None) -> str | None:
    """In a Hydra multirun, the sweep folder's name, so every job of one sweep lands in one group."""
    if explicit:
        return explicit
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return Path(str(HydraConfig.get().sweep.dir)).name
    except Exception:  # noqa: BLE001 - no Hydra context (tests, notebooks): no group
        pass
    return None


@contextlib.contextmanager
def _redacted_argv(secrets: list[str]) -> Iterator[None]:
    """wandb records sys.argv in the run's metadata; a secret passed on the command line must not go there."""
    from medseg.config.redact import redact_text

    saved = list(sys.argv)
    sys.argv[:] = [redact_text(a, secrets) for a in saved]
    try:
        yield
    finally:
        sys.argv[:] = saved
