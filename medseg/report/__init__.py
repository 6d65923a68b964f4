"""Self-contained HTML reports (one report.html: scripts, styles and images inline, no network).

`write_report(folder)` picks the kind: a multirun / sweep folder gets the sweep report
(sweep_report.py), a training or evaluate run folder the run report (run_report.py). Data comes from
the files the run wrote (sources.py), charts from plotly (figures.py), the page from jinja2 templates
shipped in medseg/report/templates/ (render.py).
"""

from __future__ import annotations

from pathlib import Path

from medseg.errors import MedsegError


class ReportError(MedsegError):
    """The folder given for a report holds nothing to report."""


def write_report(folder: str | Path, ckpt: str | Path | None = None, output: str | Path | None = None) -> Path:
    """Write report.html for a run, evaluate or multirun folder; returns its path."""
    from medseg.report.run_report import write_run_report
    from medseg.report.sweep_report import is_sweep_folder, write_sweep_report

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ReportError(f"report.path={folder} is not a folder; pass a run, evaluate or multirun folder")
    if is_sweep_folder(folder):
        return write_sweep_report(folder, output)
    if not any((folder / name).is_file() for name in ("history.json", "metrics.csv")) and ckpt is None:
        raise ReportError(
            f"{folder} holds no history.json, metrics.csv or job folders; pass a training, evaluate or multirun folder"
        )
    return write_run_report(folder, ckpt, output)
