"""One-line errors for a study storage that cannot be used (hydra.sweeper.storage), password masked.

Optuna opens the storage through SQLAlchemy: a missing database driver surfaces as an ImportError
from deep inside SQLAlchemy, a server that cannot be reached as an OperationalError with a page of
context. Both become a StorageError naming the package to install or the host to check.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from medseg.config.redact import mask_urls
from medseg.errors import MedsegError

# Import name of a database driver -> the pip package that provides it.
DRIVER_PACKAGES = {
    "psycopg2": "psycopg2-binary",
    "psycopg": "psycopg[binary]",
    "pg8000": "pg8000",
    "asyncpg": "asyncpg",
    "MySQLdb": "mysqlclient",
    "pymysql": "PyMySQL",
    "mysql": "mysql-connector-python",
    "cx_Oracle": "cx_Oracle",
    "oracledb": "oracledb",
    "pyodbc": "pyodbc",
    "pymssql": "pymssql",
}


class StorageError(MedsegError):
    """The sweep's study storage (hydra.sweeper.storage) cannot be opened."""


@contextlib.contextmanager
def storage_errors(storage: Any) -> Iterator[None]:
    """Turn the failures of opening `storage` into one StorageError line."""
    url = mask_urls(str(storage))
    key = f"hydra.sweeper.storage={url}"
    try:
        yield
    except ImportError as exc:
        module = _missing_module(exc)
        package = DRIVER_PACKAGES.get(module, module)
        raise StorageError(
            f"{key} needs the database driver {module!r}, which is not installed; pip install {package}"
        ) from None
    except Exception as exc:  # noqa: BLE001 - sorted out below; anything else is re-raised unchanged
        error = _describe(exc, storage)
        if error is None:
            raise
        raise StorageError(f"{key}: {error}") from None


def _missing_module(exc: ImportError) -> str:
    """The top-level module that failed to import (optuna wraps the driver's ImportError in its own)."""
    err: BaseException | None = exc
    while err is not None:
        if isinstance(err, ImportError) and err.name:
            return err.name.split(".")[0]
        err = err.__cause__ or err.__context__
    return str(exc)


def _describe(exc: BaseException, storage: Any) -> str | None:
    """What went wrong with the storage, in words; None when `exc` is not about the storage."""
    try:
        from sqlalchemy import exc as sa_exc
    except ImportError:  # pragma: no cover - optuna's RDB storage needs SQLAlchemy
        return None
    first_line = mask_urls(" ".join(str(getattr(exc, "orig", None) or exc).split("\n")[0].split()))[:200]
    if isinstance(exc, sa_exc.OperationalError):
        where = _host(storage)
        return f"cannot connect to the database server at {where} ({first_line}); check the host, port and credentials"
    if isinstance(exc, sa_exc.NoSuchModuleError):
        example = "sqlite:///path/optuna.db or postgresql://user@host/db"
        return f"the database kind is not known to SQLAlchemy ({first_line}); use e.g. {example}"
    if isinstance(exc, sa_exc.ArgumentError):
        return f"not a database URL SQLAlchemy understands ({first_line})"
    if isinstance(exc, sa_exc.DBAPIError):
        return f"the database refused the study ({first_line})"
    return None


def _host(storage: Any) -> str:
    try:
        from sqlalchemy.engine import make_url

        url = make_url(str(storage))
    except Exception:  # noqa: BLE001 - an unparsable URL: name it masked instead
        return mask_urls(str(storage))
    if not url.host:
        return str(url.database or url.drivername)
    return f"{url.host}:{url.port}" if url.port else str(url.host)
