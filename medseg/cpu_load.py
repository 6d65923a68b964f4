"""How many CPUs other work keeps busy now, measured from /proc (Linux), without this process's own work.

The 1-minute load average lags: seconds after another job ends (the previous trial of a multirun in this
process, a benchmark round, a build) it still shows that job, and a run that reads it at start picks one
PyTorch thread on an idle machine for its whole length (measured: 0.58x a bare loop). Instead, two
snapshots of the kernel's CPU time counters are compared:

    /proc/stat            busy and total CPU time of the whole machine
    /proc/self/stat       CPU time of this process (all its threads) and of its reaped children
    /proc/<child>/stat    CPU time of its live children (DataLoader workers, store builders)

others = (machine busy - this process and its children) / elapsed, in CPUs. Taken between two points of a
running training loop it costs nothing (no sleep); at start it samples `sample_s` seconds. Where /proc is
missing (macOS, Windows) it falls back to the load average (or 0 where there is none).

No library here measures "busy CPUs other than mine" (psutil reads the same files and is only in the
`bench` extra), hence these few lines.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, e.g. a container's or taskset's share), not the host's."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS and Windows have no affinity mask
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class CpuSnapshot:
    busy: int  # machine-wide busy ticks (user, nice, system, irq, softirq, steal), all CPUs
    total: int  # machine-wide ticks, idle and iowait included
    own: int  # ticks of this process and its children, live and reaped
    machine_cpus: int


def snapshot(proc: Path = PROC, pid: int | None = None) -> CpuSnapshot | None:
    """The counters now, or None where /proc/stat cannot be read."""
    try:
        lines = (proc / "stat").read_text().splitlines()
    except OSError:
        return None
    fields = [int(x) for x in lines[0].split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    busy = user + nice + system + irq + softirq + steal
    machine_cpus = sum(1 for line in lines[1:] if line.startswith("cpu")) or (os.cpu_count() or 1)
    me = proc / (str(pid) if pid is not None else "self")
    return CpuSnapshot(busy, busy + idle + iowait, _process_ticks(me, children=True), machine_cpus)


def busy_between(before: CpuSnapshot, after: CpuSnapshot, cpus: int) -> float:
    """CPUs of this process's share (`cpus` of the machine's) that other work kept busy between two snapshots."""
    total = after.total - before.total
    if total <= 0:
        return 0.0
    others = max(0, (after.busy - before.busy) - (after.own - before.own))
    return min(float(cpus), others / total * cpus)


def busy_cpus_now(cpus: int, sample_s: float = 0.3, proc: Path = PROC) -> float:
    """CPUs of this process's share that other work keeps busy, measured over the next `sample_s` seconds."""
    before = snapshot(proc)
    if before is None:
        return _load_average_share(cpus)
    time.sleep(sample_s)
    after = snapshot(proc)
    return busy_between(before, after, cpus) if after is not None else _load_average_share(cpus)


def _load_average_share(cpus: int) -> float:
    """The fallback where /proc is missing: the 1-minute load average, scaled to this process's share."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0
    return max(0.0, load * cpus / max(cpus, os.cpu_count() or cpus))


def _process_ticks(folder: Path, children: bool) -> int:
    """utime + stime (+ reaped children's cutime + cstime) of the process in `folder`, plus its live children."""
    try:
        after_name = (folder / "stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0
    ticks = sum(int(x) for x in after_name[11:15])  # utime, stime, cutime, cstime (fields 14-17)
    if children:
        for pid in _children(folder):
            ticks += _process_ticks(folder.parent / str(pid), children=True)
    return ticks


def _children(folder: Path) -> list[int]:
    pids: list[int] = []
    try:
        tasks = list((folder / "task").iterdir())
    except OSError:
        return pids
    for task in tasks:
        try:
            pids += [int(p) for p in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue
    return pids
