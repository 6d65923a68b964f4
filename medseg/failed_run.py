"""A run that fails before it has produced anything leaves no run folder behind.

Hydra creates the run folder (outputs/<task>/<date>_<time>/ with .hydra/ and run.log) before medseg
sees the config, so a misspelt data.root used to leave an empty-looking run that the README's "newest
run" snippet then picked. After a user error in a single run, the folder is removed only when every
file in it was written by this run (none older than the run's start) and none of them is a result
(no checkpoint, no history.json, no metrics, no predictions): a folder holding anything else, such as
an earlier run's files or a user's own, is left exactly as it is. The one-line error on the console
says what went wrong.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path

log = logging.getLogger(__name__)

STARTED = time.time()  # set again by cli.one_line_errors at the start of each run
RESULTS = ("*.pt", "history.json", "metrics.csv", "summary.json", "predictions", "report.html")
SLACK_S = 2.0  # file systems with coarse timestamps


def mark_start() -> None:
    global STARTED
    STARTED = time.time()


def discard_if_empty(folder: str | Path, started: float | None = None) -> bool:
    """Remove `folder` when it holds only what this run wrote since `started` and no result; True if removed."""
    folder = Path(folder)
    started = STARTED if started is None else started
    if not folder.is_dir() or folder.is_symlink():
        return False
    entries = list(folder.rglob("*"))
    if any(next(folder.glob(pattern), None) is not None for pattern in RESULTS) or any(
        p.name.endswith(".pt") for p in entries
    ):
        return False
    for p in entries:
        if p.is_symlink() or (p.is_file() and p.stat().st_mtime < started - SLACK_S):
            return False  # something this run did not write: the folder is not ours to remove
    _close_file_handlers(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return not folder.exists()


def _close_file_handlers(folder: Path) -> None:
    """Detach the log file handlers writing into `folder` (run.log), so nothing re-creates it."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        name = getattr(handler, "baseFilename", None)
        if name and Path(name).resolve().is_relative_to(folder.resolve()):
            root.removeHandler(handler)
            handler.close()
