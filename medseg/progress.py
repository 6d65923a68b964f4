"""Progress of long work outside the training loop (lr_find, benchmark, the case-store build), shown the
way training shows it: a tqdm bar when the console is a terminal, otherwise a log line every tenth of the work."""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

log = logging.getLogger("medseg")


class Progress:
    """Counts `total` units of work: `update(**values)` after each one, `close()` at the end.

    With `bar` and a terminal on stderr: a tqdm bar (values as its postfix). Otherwise: a log line
    `desc: i/total (values) [elapsed]` at every tenth of `total` and at the end, so a log file or CI
    console still shows that the run is alive and how far it got.
    """

    def __init__(self, total: int, desc: str, bar: bool = True, log_after_s: float = 0.0) -> None:
        """`log_after_s`: without a bar, write no line before this many seconds (work that ends sooner
        is reported by its caller's summary alone)."""
        self.total, self.desc, self.done = max(0, int(total)), desc, 0
        self.log_after_s = float(log_after_s)
        self.every = max(1, self.total // 10)
        self.started = time.perf_counter()
        self._bar: Any = None
        if bar and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, **values: Any) -> None:
        self.done += 1
        text = ", ".join(f"{k} {_fmt(v)}" for k, v in values.items())
        if self._bar is not None:
            self._bar.update(1)
            if values:
                self._bar.set_postfix_str(text, refresh=False)
        elif self.done % self.every == 0 or self.done == self.total:
            elapsed = time.perf_counter() - self.started
            if elapsed < self.log_after_s:
                return
            log.info("%s: %d/%d%s [%.0fs]", self.desc, self.done, self.total, f" ({text})" if text else "", elapsed)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)
