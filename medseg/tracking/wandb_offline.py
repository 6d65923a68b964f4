"""Read an offline wandb run (<run folder>/wandb/offline-run-*/run-<id>.wandb) without syncing it.

The .wandb file is a LevelDB-style log (32 KiB blocks of crc/length/type-framed chunks) of protobuf
records; this reads the run's identity, its history rows and its final summary.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte); also the size of each chunk header
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


@dataclass
class OfflineRun:
    run_id: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def offline_runs(run_dir: str | Path) -> list[Path]:
    """The offline-run-* folders under a run folder, oldest first."""
    return sorted((Path(run_dir) / "wandb").glob("offline-run-*"))


def read_offline_run(folder: str | Path, wait_s: float = 0.0) -> OfflineRun:
    """The run as written so far; with wait_s, re-read until its exit record is there (wandb writes
    the file from its own service process, a moment after run.finish() returns)."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        run = _read(folder)
        if run.exit_code is not None or time.monotonic() >= deadline:
            return run
        time.sleep(0.2)


def _read(folder: str | Path) -> OfflineRun:
    from wandb.proto import wandb_internal_pb2 as pb

    files = sorted(Path(folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no run-*.wandb file")
    run = OfflineRun()
    for payload in _chunks(files[0].read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.run_id, run.name, run.group, run.tags = r.run_id, r.display_name, r.run_group, list(r.tags)
            run.config.update({i.key: json.loads(i.value_json) for i in r.config.update if i.value_json})
        elif kind == "config":
            run.config.update({i.key: json.loads(i.value_json) for i in record.config.update if i.value_json})
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def _chunks(data: bytes) -> Iterator[bytes]:
    if data[:4] != b":W&B":
        raise ValueError("not a wandb run file")
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER:  # the rest of a block too small for a chunk header is padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        pos += HEADER
        if pos + length > len(data):  # a chunk still being written by a live run
            return
        chunk, pos = data[pos : pos + length], pos + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""
