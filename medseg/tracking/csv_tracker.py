"""CSV tracker: one row per epoch with every scalar metric, columns added as they appear.

Its run_id is the file's path, so a resumed training (trainer.resume=true) starts its table with the
earlier run's rows up to the epoch it resumes from.
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
        self.run_id = str(self.path.resolve())
        self.rows: list[dict[str, Any]] = _read_rows(Path(resume_id)) if resume_id else []

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


def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as fh:
        return [{k: v for k, v in row.items() if v != ""} for row in csv.DictReader(fh)]


def _epoch(row: dict[str, Any]) -> int | None:
    try:
        return int(float(row["epoch"]))
    except (KeyError, TypeError, ValueError):
        return None
