"""hardware.num_threads=null during training: follow what other work keeps busy, as the run goes.

At start medseg/hardware.py picks the PyTorch thread count from a short measurement. A long run outlives
that: a neighbour job starts (then threads that share a core with it wait on each other at every
operation) or ends (then a core stays idle). Every `every_s` seconds, at a logging step or an epoch end,
this callback compares the kernel's CPU counters with the last reading (medseg/cpu_load.py: no sleep,
this process and its loader workers left out), applies the same rule as at start
(medseg.hardware.cpu_limits) and calls torch.set_num_threads when the answer changes, saying why.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import torch

from medseg.cpu_load import CpuSnapshot, busy_between, snapshot
from medseg.engine.callbacks import Callback
from medseg.hardware import cpu_limits

log = logging.getLogger(__name__)


class AdaptiveThreads(Callback):
    def __init__(
        self,
        cpus: int,
        workers: int,
        every_s: float = 20.0,
        measure: Callable[[], CpuSnapshot | None] = snapshot,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cpus, self.workers, self.every_s = int(cpus), int(workers), float(every_s)
        self.measure, self.clock = measure, clock
        self.last: CpuSnapshot | None = None
        self.at = 0.0
        self.changes: list[tuple[int, int, float]] = []  # (from, to, busy CPUs) for each change made

    def on_fit_start(self, trainer: Any) -> None:
        self.last, self.at = self.measure(), self.clock()

    def on_train_step(self, trainer: Any, metrics: dict[str, float]) -> None:
        self.check()

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        self.check()

    def check(self) -> None:
        at = self.clock()
        if self.last is None or at - self.at < self.every_s:
            return
        now = self.measure()
        if now is None:
            return
        busy, seconds = busy_between(self.last, now, self.cpus), at - self.at
        self.last, self.at = now, at
        _, threads = cpu_limits(self.workers, None, self.cpus, busy)
        current = torch.get_num_threads()
        if threads == current:
            return
        log.info(
            "hardware: PyTorch threads %d -> %d: other work kept about %.1f of %d CPU(s) busy over the last %.0f s",
            current,
            threads,
            busy,
            self.cpus,
            seconds,
        )
        torch.set_num_threads(threads)
        self.changes.append((current, threads, busy))
