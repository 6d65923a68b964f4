"""Atomic, durable file writes: write to a temporary name in the same folder, fsync, rename over the
target, fsync the folder. A crash or power loss leaves either the old file or the new one, never a mix."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _read_umask() -> int:
    """The process umask, read once at import (os.umask can only be read by setting it, which races
    with other threads creating files; later changes of the umask by the program are not seen)."""
    try:  # Linux: read it without touching it
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # once, at import, before any thread of ours exists
    os.umask(mask)
    return mask


_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file


def atomic_write(path: str | Path, write: Callable[[str], None]) -> Path:
    """Call `write(tmp_path)` and move the result to `path`; a crash never leaves a partial file.

    The data reaches the disk before the rename (fsync of the file) and the rename itself reaches it
    before we return (fsync of the folder), so after a power loss `path` holds the old or the new content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; give the mode a plain open() would
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def commit_folder(tmp: str | Path, dest: str | Path) -> Path:
    """Move a fully written folder `tmp` to the new name `dest` in one rename (same file system).

    Every file below `tmp` and the folder itself reach the disk first, then the rename and its parent
    folder: a reader sees no `dest`, or `dest` with everything in it. `dest` must not exist (a rename
    never replaces a folder that has files in it).
    """
    tmp, dest = Path(tmp), Path(dest)
    for folder, _, files in os.walk(tmp):
        for name in files:
            _fsync_file(os.path.join(folder, name))
        _fsync_dir(Path(folder))
    os.rename(tmp, dest)
    _fsync_dir(dest.parent)
    return dest


def _fsync_file(name: str) -> None:
    fd = os.open(name, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (POSIX); skipped where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders; the rename is still atomic
        pass
    finally:
        os.close(fd)


def write_text(path: str | Path, text: str) -> Path:
    def _write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    return atomic_write(path, _write)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def write_figure(path: str | Path, fig: Any, dpi: int = 80) -> Path:
    """Save a matplotlib figure as PNG atomically, then close it."""
    import matplotlib.pyplot as plt

    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))
    finally:
        plt.close(fig)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
