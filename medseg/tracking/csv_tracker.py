"""CSV tracker: one row per epoch with every scalar metric, columns added as they appear.

A resumed training (trainer.resume=true) starts its table with the epochs of the checkpoint's own
history (the same records history.json holds), so no file named by the checkpoint is ever read.
"""

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

    def resume(self, history: list[dict[str, Any]]) -> None:
        self.rows = [scalars(record) for record in history]

    def log_epoch(self, record: dict[str, Any], step: int) -> None:
        epoch = record.get("epoch")
        if epoch is not None:  # rows of the resumed run past the resume point are superseded
            self.rows = [r for r in self.rows if _epoch(r) is None or _epoch(r) < epoch]
        self.rows.append(scalars(record))
        columns: list[str] = []
        for row in self.rows:
            columns += [k for k in row if k not in columns]
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns)
        writer.writeheader()
        writer.writerows(self.rows)
        write_text(self.path, buf.getvalue())


def _epoch(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row["epoch"]))
    except (KeyError, TypeError, ValueError):
        return None
