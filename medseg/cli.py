"""One-line errors for run.py: user errors print `medseg: error: ...` and exit 2, no traceback.

HYDRA_FULL_ERROR=1 or MEDSEG_DEBUG=1 shows the full traceback instead. Unexpected exceptions
(bugs) always keep their traceback. Secrets typed on the command line are moved out of sys.argv
before Hydra sees it (medseg.config.redact.hide_argv_secrets); printed errors are masked too.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

EXIT_USER_ERROR = 2


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").lower() in ("1", "true", "yes")


def describe_user_error(exc: BaseException) -> str | None:
    """One line for an error the user caused, or None when it is not one."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from medseg.errors import MedsegError

    if isinstance(exc, MedsegError):
        return _masked(_flat(str(exc)))
    chain = [exc]
    while chain[-1].__cause__ is not None and len(chain) < 5:
        chain.append(chain[-1].__cause__)
    for err in chain:
        if isinstance(err, MedsegError):
            return _masked(_flat(str(err)))
    omega = next((e for e in chain if isinstance(e, OmegaConfBaseException)), None)
    if omega is not None:
        key = getattr(omega, "full_key", None)
        from medseg.config.schema import other_layout_key

        other = other_layout_key(key, getattr(omega, "object_type", None))  # data=msd data.mask_suffix=...
        if other:
            return _masked(other)
        first = str(omega).strip().splitlines()[0] if str(omega).strip() else type(omega).__name__
        where = f"{key}: " if key else ""
        hint = _closest_key(omega)
        return _masked(f"config error: {where}{first}{hint} (python run.py --cfg job lists the keys and values)")
    if isinstance(exc, HydraException):
        text = str(exc).split("Config search path")[0]
        return _masked("config error: " + _flat(text))
    return None


def _closest_key(omega: BaseException) -> str:
    """'; did you mean trainer.max_epochs?' for a key the config does not have, when one is close."""
    import dataclasses
    import difflib

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    key, full_key = getattr(omega, "key", None), getattr(omega, "full_key", None)
    if not isinstance(omega, (ConfigKeyError, ConfigAttributeError)) or not key or not full_key:
        return ""
    keys: list[str] = []
    parent = getattr(omega, "parent_node", None)
    if parent is not None and hasattr(parent, "keys"):
        keys = [str(k) for k in parent.keys()]
    kind = getattr(omega, "object_type", None)
    if not keys and dataclasses.is_dataclass(kind):
        keys = [f.name for f in dataclasses.fields(kind)]
    close = difflib.get_close_matches(str(key), keys, n=1, cutoff=0.6)
    if not close:
        return ""
    prefix = str(full_key)[: -len(str(key))] if str(full_key).endswith(str(key)) else ""
    return f"; did you mean {prefix}{close[0]}?"


def _flat(text: str) -> str:
    return " ".join(text.split())


def _masked(text: str) -> str:
    from medseg.config.redact import redact_text, secret_values

    return redact_text(text, secret_values())


def one_line_errors(entry: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(entry)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from medseg.config.redact import hide_argv_secrets

        sys.argv[:] = hide_argv_secrets(sys.argv)  # before Hydra writes or prints any override
        debug = _env_true("HYDRA_FULL_ERROR") or _env_true("MEDSEG_DEBUG")
        os.environ["_MEDSEG_USER_DEBUG"] = "1" if debug else "0"
        if not debug:
            os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise; the message is shortened below
        from medseg.failed_run import mark_start

        mark_start()  # files older than this in a run folder are not this run's
        try:
            from medseg.config.groups import check_group_options

            check_group_options(sys.argv[1:])  # Hydra skips an unknown option of an optional group silently
            from medseg.config.show_job import job_config_request, print_job_config

            overrides = job_config_request(sys.argv)
            if overrides is not None:  # --cfg job: with the values the run's start fills in (the plan)
                return print_job_config(overrides)
            return entry(*args, **kwargs)
        except Exception as exc:
            message = None if debug else describe_user_error(exc)
            if message is None:
                raise
            print(f"medseg: error: {message}", file=sys.stderr)
            sys.exit(EXIT_USER_ERROR)

    return wrapper


def exit_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    """Inside a single run, end a user error here with its one line (Hydra would add its own).

    In a multirun the error propagates, so the sweeper can record the job as failed.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as exc:
            if _is_multirun():
                _log_job_failure(exc)
                raise
            if _env_true("MEDSEG_DEBUG") or os.environ.get("_MEDSEG_USER_DEBUG") == "1":
                raise
            message = describe_user_error(exc)
            if message is None:
                raise
            _to_log_file(message)
            print(f"medseg: error: {message}", file=sys.stderr)
            _discard_run_folder()
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper


def _discard_run_folder() -> None:
    """A single run that failed before producing anything leaves no folder (medseg.failed_run says when)."""
    from hydra.core.hydra_config import HydraConfig

    from medseg.failed_run import discard_if_empty

    if HydraConfig.initialized():
        discard_if_empty(HydraConfig.get().runtime.output_dir)


def _is_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def _log_job_failure(exc: BaseException) -> None:
    """A failed multirun job says why in its own run.log (the sweep goes on; optuna.TrialPruned is no failure)."""
    import logging

    if type(exc).__name__ == "TrialPruned":
        return
    message = describe_user_error(exc)
    log = logging.getLogger("medseg")
    if message is not None:
        log.error("job failed: %s", message)
    else:
        log.error("job failed: %s: %s", type(exc).__name__, exc, exc_info=exc)


def _to_log_file(message: str) -> None:
    """Record the error in the run's log file only (the console gets the one line)."""
    import logging

    record = logging.LogRecord("medseg", logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
