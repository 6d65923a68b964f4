"""A Hydra callback: at the end of a multirun, one table of every job's final metrics.

Registered in conf/hydra/default.yaml (hydra.callbacks.multirun_summary). Reads each job's
.hydra/overrides.yaml and history.json under the sweep folder and writes multirun_summary.csv there;
the same table is printed. Jobs without a history (failed before the first epoch) get status
"no history". Imported at every start, so it stays free of heavy imports.
"""

from __future__ import annotations

import csv
import io
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medseg.io_utils import write_text
from medseg.sweeps.jobs_table import job_rows

log = logging.getLogger(__name__)


def write_summary(sweep_dir: str | Path) -> tuple[Path, str]:
    """multirun_summary.csv in the sweep folder; returns its path and a printable table."""
    rows = job_rows(sweep_dir)
    fields = list(dict.fromkeys(["job", "status", "epochs"] + [k for r in rows for k in r if k != "overrides"]))
    fields.append("overrides")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path = write_text(Path(sweep_dir) / "multirun_summary.csv", buffer.getvalue())
    return path, format_table(rows, fields)


def format_table(rows: list[dict[str, Any]], fields: list[str]) -> str:
    cells = [fields] + [[_cell(r.get(f)) for f in fields] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(fields))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells)


class MultirunSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            path, table = write_summary(sweep_dir)
        except OSError as exc:  # a summary must never turn a finished sweep into an error
            log.warning("multirun summary not written: %s", exc)
            return
        log.info("multirun summary (%s):\n%s", path, table)
        from medseg.report.hooks import report_after_multirun

        report_after_multirun(config, sweep_dir)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
