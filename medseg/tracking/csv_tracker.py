"""CSV tracker: one row per epoch with every scalar metric, columns added as they appear."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from medseg.io_utils import write_text
from medseg.tracking.base import Tracker, scalars


class CSVTracker(Tracker):
    def __init__(self, run_dir: str, filename: str = "metrics.csv", resume_id: str | None = None) -> None:
        self.path = Path(run_dir) / filename
        self.rows: list[dict[str, Any]] = []

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        self.rows.append(scalars(record))
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())
