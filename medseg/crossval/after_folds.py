"""A Hydra callback: a fold multirun (-m data.fold=...) with crossval.after_folds=true runs mode=crossval on
its own sweep folder at its end, into <sweep folder>/crossval/.

Registered in conf/hydra/default.yaml (hydra.callbacks.crossval_after_folds); it does nothing unless
crossval.after_folds is true. Imported at every start, so it stays free of heavy imports. A crossval that
cannot run (a fold failed) logs its one-line reason: the sweep itself has finished and stays finished.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger(__name__)


class CrossvalAfterFolds(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if not OmegaConf.select(config, "crossval.after_folds", default=False):
            return
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not any(sweep_dir.glob("*/oof/index.json")):
            log.info("crossval.after_folds: no fold run in %s wrote out-of-fold predictions; no crossval", sweep_dir)
            return
        cfg = copy.deepcopy(config)
        with open_dict(cfg):
            cfg.mode = "crossval"
            cfg.crossval.runs = [str(sweep_dir)]
            cfg.paths.output_dir = str(sweep_dir / "crossval")
        from medseg.errors import MedsegError
        from medseg.tasks.crossval import run_crossval

        try:
            run_crossval(cfg)
        except MedsegError as exc:
            log.error("crossval after the folds: %s", exc)
