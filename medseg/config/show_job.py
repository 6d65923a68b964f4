"""`python run.py ... --cfg job`: the job's config as the run will use it, planned values included.

Hydra prints `--cfg job` as composed, before the task starts. plan=default (data=msd / totalseg) and
plan=auto fill in their values when the run starts, from the data's fingerprint and the memory budget, so
Hydra's own print showed the unplanned defaults or `${plan:...}`. For a single run's `--cfg job`, medseg
composes the same config with Hydra's compose API, applies the plan as the run would (keys given on the
command line still win) and prints it with every interpolation resolved and secrets masked, as the
run's own files are. `--cfg hydra|all`, `--package`, `-m` and Hydra's other flags are left to Hydra.
"""

from __future__ import annotations

import sys
from typing import Any


def job_config_request(argv: list[str]) -> list[str] | None:
    """The overrides when `argv` asks for `--cfg job` (or `-c job`) of a single run, else None."""
    args, overrides, wanted = argv[1:], [], None
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--cfg", "-c") and i + 1 < len(args):
            wanted, i = args[i + 1], i + 2
            continue
        if arg.startswith("--cfg="):
            wanted = arg.split("=", 1)[1]
        elif arg == "--resolve":
            pass  # resolved anyway
        elif arg.startswith("-"):
            return None  # -m, --package, --info, ...: Hydra's own
        else:
            overrides.append(arg)
        i += 1
    return overrides if wanted == "job" else None


def print_job_config(overrides: list[str], out: Any = None) -> None:
    """Compose the config for `overrides`, apply the plan as a run's start does, print it resolved."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import InterpolationResolutionError

    from medseg.config.redact import redact_config
    from medseg.errors import MedsegError
    from medseg.planning.apply import PLANNING_MODES, apply_default_plan
    from medseg.runtime import conf_dir

    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3", job_name="run"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)  # the plan reads the command-line keys from it
        with open_dict(cfg):
            del cfg["hydra"]
        if cfg.mode in PLANNING_MODES:
            apply_default_plan(cfg, overrides)
        try:
            text = OmegaConf.to_yaml(OmegaConf.create(redact_config(cfg)))  # resolved, secrets masked
        except InterpolationResolutionError as exc:  # a plan that cannot be made: say why, not where
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, MedsegError):
                cause = cause.__cause__ or cause.__context__
            raise (cause or exc) from None
        (out or sys.stdout).write(text)
