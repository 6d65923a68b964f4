"""The tracker interface and the factory that builds every tracker named under `logger:`."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from medseg.errors import CheckpointError, ConfigError

RUN_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")  # a tracker's run id as a checkpoint may carry it (no path)


class Tracker:
    """Receives metrics; subclasses write them somewhere. Non-scalar values are skipped by default.

    A tracker that continues an earlier run by its id (`resumes_by_id`) gets the id a checkpoint carries,
    checked to be a plain id; the others start afresh and receive the earlier epochs through `resume`.
    """

    run_id: str | None = None
    resumes_by_id = False

    def resume(self, history: list[dict[str, Any]]) -> None:
        """The epoch records of the run being resumed (the checkpoint's history), before any new epoch."""

    def log_config(self, config: dict[str, Any], facts: dict[str, Any]) -> None: ...

    def log_step(self, metrics: dict[str, float], step: int) -> None: ...

    def log_epoch(self, record: dict[str, Any], step: int) -> None: ...

    def log_summary(self, summary: dict[str, Any]) -> None: ...

    def log_images(self, name: str, images: list[Any], step: int, captions: list[str] | None = None) -> None:
        """RGB uint8 arrays (height, width, 3), e.g. input | truth | prediction panels."""

    def log_histograms(self, histograms: dict[str, tuple[Any, Any]], step: int) -> None:
        """{name: (counts, bin_edges)} numpy arrays, as np.histogram returns them."""

    def finish(self, exit_code: int = 0) -> None:
        """End the run; exit_code 1 marks a run that stopped with an error."""


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a record (lists such as val/top5 and nulls left out)."""
    out = {}
    for key, value in record.items():
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) and not (isinstance(value, float) and math.isnan(value)):
            out[key] = value
    return out


def build_trackers(
    logger_cfg: Any, run_dir: Path, resume: dict[str, Any] | None = None, source: str = "checkpoint"
) -> list[Tracker]:
    """Every tracker under `logger:`; with `resume` (the checkpoint of trainer.resume=true, named `source`)
    each continues the earlier run: by its checked id, or from the checkpoint's history. Nothing of the
    checkpoint names a file or a folder here."""
    from hydra.errors import InstantiationException
    from hydra.utils import get_class, instantiate

    ids, history = _resume_state(resume, source) if resume is not None else ({}, [])
    trackers = []
    for name, node in (logger_cfg or {}).items():
        if not node:
            continue
        try:
            by_id = bool(getattr(get_class(str(node.get("_target_"))), "resumes_by_id", False))
            resume_id = _checked_id(ids.get(name), name, source) if by_id else None
            tracker = instantiate(node, run_dir=str(run_dir), resume_id=resume_id)
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            raise ConfigError(f"cannot start logger.{name}: {' '.join(str(cause).split())[:300]}") from exc
        except ImportError as exc:
            raise ConfigError(f"cannot start logger.{name}: {exc}") from exc
        tracker.name = name
        if history:
            tracker.resume(history)
        trackers.append(tracker)
    return trackers


def _resume_state(ckpt: dict[str, Any], source: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    ids = ckpt.get("tracker_ids") or {}
    history = ckpt.get("history") or []
    if not isinstance(ids, dict) or not isinstance(history, list) or not all(isinstance(r, dict) for r in history):
        raise CheckpointError(f"checkpoint {source}: its tracker ids or history are not plain data; it may be damaged")
    return ids, history


def _checked_id(value: Any, name: str, source: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not RUN_ID.fullmatch(value):
        shown = repr(value)[:80]
        raise CheckpointError(
            f"checkpoint {source}: its logger.{name} run id {shown} is not a run id (letters, digits, - and _);"
            " the file may be crafted or damaged"
        )
    return value
