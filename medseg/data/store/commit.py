"""A case is committed as one unit: its files are written into a temporary folder, the folder is renamed
into place as a new generation, and the case's record (its metadata, naming that generation) is replaced
last, atomically. A reader takes the generation from the record it read, so it gets the image, label and
foreground samples of one build, never a new image beside an old label.

    cases/<id>/record.json        the commit record (medseg.io_utils.write_text: temp name, fsync, rename)
    cases/<id>/<generation>/      image.b2nd, label.b2nd, fg.npz of one build
    tmp/<id>/                     the folder a writer fills (under the case's lock)

Leftovers of a killed writer are found by exact names (the case's own tmp/<id>/ folder and the entries
of cases/<id>/ that its record does not name), never by a pattern that another case's name could match.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from medseg.io_utils import commit_folder, write_text

RECORD = "record.json"


def case_folder(root: Path, case_id: str) -> Path:
    return Path(root) / "cases" / case_id


def record_file(root: Path, case_id: str) -> Path:
    return case_folder(root, case_id) / RECORD


def tmp_folder(root: Path, case_id: str) -> Path:
    return Path(root) / "tmp" / case_id


def read_record(root: Path, case_id: str) -> dict[str, Any] | None:
    """The committed record of a case, or None (not built, or unreadable)."""
    try:
        return json.loads(record_file(root, case_id).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def start_case(root: Path, case_id: str) -> Path:
    """A fresh, empty tmp/<id>/ for the writer that holds the case's lock (a dead writer's is removed)."""
    tmp = tmp_folder(root, case_id)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def commit_case(root: Path, case_id: str, tmp: Path | None, record: dict[str, Any]) -> None:
    """Make `tmp` the case's new generation (None: a record without files) and replace its record."""
    folder = case_folder(root, case_id)
    folder.mkdir(parents=True, exist_ok=True)
    if tmp is not None:
        generation = f"{time.time_ns():x}-{os.getpid()}"
        commit_folder(tmp, folder / generation)
        record["generation"] = generation
    write_text(record_file(root, case_id), json.dumps(record))
    remove_unnamed(root, case_id, record.get("generation"))


def remove_unnamed(root: Path, case_id: str, keep: str | None) -> None:
    """Remove what cases/<id>/ holds besides the record and generation `keep` (old builds, leftovers).

    Readers that have an old generation's files open keep reading them (unlinked files stay readable);
    a reader that opens one after this point is told that the case was rebuilt (reading.py)."""
    folder = case_folder(root, case_id)
    with contextlib.suppress(FileNotFoundError):
        for entry in folder.iterdir():
            if entry.name in (RECORD, keep):
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
