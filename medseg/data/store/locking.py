"""One writer per case: an exclusive fcntl.flock on the case's lock file.

The lock is released when its file is closed, also when the process dies (kill -9 included), so a
killed writer never blocks anyone; the next writer finds its leftovers and removes them (commit.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path


def lock_file(root: Path, case_id: str) -> Path:
    return Path(root) / "locks" / f"{case_id}.lock"


@contextlib.contextmanager
def case_lock(root: Path, case_id: str, wait: bool = True) -> Iterator[bool]:
    """Hold the case's lock for the block; yields False (holding nothing) when `wait` is false and
    another process holds it."""
    import fcntl

    path = lock_file(root, case_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
