"""mode=preprocess: build the case store for a data config ahead of training, in parallel processes.

    python run.py mode=preprocess data=totalseg data.root=/data/Totalsegmentator

Every case is decoded once through the deterministic chain into the store that train, evaluate and
predict then read (docs/store.md). Cases already stored and unchanged are kept; a rerun after an
interruption builds only the missing ones. Ends with the data check over every case and a summary.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from omegaconf import DictConfig

log = logging.getLogger(__name__)


def run_preprocess(cfg: DictConfig) -> dict[str, Any]:
    from medseg.data.checks import check_volumes
    from medseg.data.datamodule import check_geometry_settings, read_checked_cases
    from medseg.data.store import open_store, store_cfg

    check_geometry_settings(cfg.data)
    caseset = read_checked_cases(cfg)
    workers = store_cfg(cfg.data).get("workers")
    workers = available_cores() if workers is None else int(workers)
    store = open_store(
        cfg.data,
        str(cfg.paths.cache_dir),
        caseset.cases,
        caseset.root,
        workers=workers,
        progress=bool(cfg.trainer.progress_bar),
        classes=caseset.class_names,
    )
    summary = store.last_summary
    if cfg.data.check:
        declared = None
        if caseset.class_names:
            declared = (len(caseset.class_names), caseset.extra.get("class_source", "the layout's class names"))
        metas = [store.meta(c["id"]) for c in caseset.cases]
        check_volumes(metas, cfg.data.num_classes, "dataset", caseset.cases, declared)
    if summary.built:  # open_store has logged the summary line
        log.info("%.2f s per built case with %d worker process(es)", summary.seconds / summary.built, max(1, workers))
    else:
        log.info(summary.line(store.root))
    return {"store": str(store.root), **summary.__dict__}


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
