"""The tracker interface and the factory that builds every tracker named under `logger:`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medseg.errors import ConfigError


class Tracker:
    """Receives metrics; subclasses write them somewhere. Non-scalar values are skipped by default."""

    run_id: str | None = None

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


def build_trackers(logger_cfg: Any, run_dir: Path, resume_ids: dict[str, str] | None = None) -> list[Tracker]:
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    trackers = []
    for name, node in (logger_cfg or {}).items():
        if not node:
            continue
        try:
            tracker = instantiate(node, run_dir=str(run_dir), resume_id=(resume_ids or {}).get(name))
        except InstantiationException as exc:
            cause = exc.__cause__ or exc
            raise ConfigError(f"cannot start logger.{name}: {' '.join(str(cause).split())[:300]}") from exc
        tracker.name = name
        trackers.append(tracker)
    return trackers
