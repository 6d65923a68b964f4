"""The processes that build cases: how many threads each runs, and that they end with their parent.

Builders are spawned (each a fresh interpreter: a fork can deadlock in blosc2's thread pool once the
store has been read in the parent; forkserver, in Python 3.11, does not carry sys.path to its workers).
Each runs `threads_per_builder` PyTorch and blosc2 threads, so N builders use the machine's CPUs once,
not N times (hardware.num_threads logic: the CPUs this process may use, shared among the workers).

A builder must not outlive the process that started it, however that one ends (kill -9 included): it
asks the kernel for SIGKILL when its parent dies (Linux prctl PR_SET_PDEATHSIG), and a watchdog thread
ends it when its parent pid changes (other systems, and the moment between spawn and prctl).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Any

PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 1.0
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS", "BLOSC_NTHREADS")


def threads_per_builder(workers: int, cpus: int | None = None) -> int:
    """The CPUs this process may use, shared among `workers` builders (at least 1 each)."""
    from medseg.cpu_load import usable_cpus

    cpus = usable_cpus() if cpus is None else int(cpus)
    return max(1, cpus // max(1, int(workers)))


def builder_pool(workers: int, threads: int | None = None) -> Any:
    """A ProcessPoolExecutor of `workers` spawned builders, each capped at `threads` threads."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    threads = threads_per_builder(workers) if threads is None else max(1, int(threads))
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=mp.get_context("spawn"),
        initializer=init_builder,
        initargs=(threads, os.getpid()),
    )


def init_builder(threads: int, parent: int) -> None:
    """Runs first in every builder: end with the parent, then cap the threads."""
    die_with_parent(parent)
    for name in THREAD_ENV:  # libraries imported later read these
        os.environ[name] = str(threads)
    import torch

    torch.set_num_threads(threads)
    from medseg.data.store.reading import blosc2_quiet

    blosc2_quiet().set_nthreads(threads)


def die_with_parent(parent: int) -> None:
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watchdog below still ends us
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent,), name="medseg-parent-watch", daemon=True).start()


def _watch_parent(parent: int) -> None:
    while True:
        if os.getppid() != parent:
            os._exit(1)
        time.sleep(WATCH_SECONDS)
