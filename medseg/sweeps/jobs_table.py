"""The table of a multirun's jobs, read from their folders: one row per job with its status, final epoch,
best and last metrics, and the overrides that differ between jobs.

Each job folder holds .hydra/overrides.yaml (Hydra writes it) and, once an epoch has finished,
history.json. Used by the multirun summary (multirun_summary.py) and the sweep report
(medseg/report/sweep_report.py). Light imports only: the summary callback loads it at every start.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
