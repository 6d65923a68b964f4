"""A Hydra callback: at the end of a multirun, one table of every job's final metrics.

Registered in conf/hydra/default.yaml (hydra.callbacks.multirun_summary). Reads each job's
.hydra/overrides.yaml and history.json under the sweep folder and writes multirun_summary.csv there;
the same table is printed. Jobs without a history (failed before the first epoch) get status
"no history". Imported at every start, so it stays free of heavy imports.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medseg.io_utils import write_text

log = logging.getLogger(__name__)

METRICS = ["train/loss", "val/loss", "val/dice", "val/iou"]


def job_rows(sweep_dir: str | Path) -> list[dict[str, Any]]:
    """One row per job folder under the sweep folder (those holding .hydra/overrides.yaml), by job number."""
    sweep_dir = Path(sweep_dir)
    rows = []
    for overrides_file in sorted(sweep_dir.glob("**/.hydra/overrides.yaml"), key=_job_order(sweep_dir)):
        job_dir = overrides_file.parent.parent
        job = job_dir.relative_to(sweep_dir).as_posix()
        row: dict[str, Any] = {"job": job, "overrides": _overrides(overrides_file)}
        history = _history(job_dir / "history.json")
        if not history:
            row["status"] = "no history"
            rows.append(row)
            continue
        last = history[-1]
        row["status"] = "ok"
        row["epochs"] = last.get("epoch")
        row.update({key: last[key] for key in last if key.startswith("best/") and key != "best/epoch"})
        row.update({key: last.get(key) for key in METRICS})
        rows.append(row)
    _keep_varying_overrides(rows)
    return rows


def _keep_varying_overrides(rows: list[dict[str, Any]]) -> None:
    """Show only the overrides that differ between jobs (the sweep's parameters), when some do."""
    if len(rows) < 2:
        return
    split = [r["overrides"].split(" ") for r in rows]
    common = set.intersection(*(set(s) for s in split))
    if all(set(s) - common for s in split):
        for row, parts in zip(rows, split):
            row["overrides"] = " ".join(p for p in parts if p not in common)


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


def _overrides(path: Path) -> str:
    """The job's command-line overrides, space separated (values with spaces are rare in sweeps)."""
    from omegaconf import OmegaConf

    try:
        return " ".join(str(o) for o in OmegaConf.load(path))
    except Exception:  # noqa: BLE001 - an unreadable file leaves the column empty
        return ""


def _history(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _job_order(sweep_dir: Path) -> Any:
    def key(path: Path) -> tuple[int, str]:
        name = path.parent.parent.relative_to(sweep_dir).as_posix()
        return (int(name), name) if name.isdigit() else (1 << 30, name)

    return key


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)
