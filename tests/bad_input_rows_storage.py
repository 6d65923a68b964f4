"""Bad-input rows: a sweep's study storage and the passwords its URL may hold."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Callable

import pytest

from tests.bad_inputs_harness import (
    PASSWORD,
    RUN,
    Ctx,
    Outcome,
    Row,
    _args,
    _no_password,
)


# ------------------------------------------------------------------ the rows: study storage
class FakePostgres:
    """A socket that speaks just enough of the PostgreSQL protocol to ask for a cleartext password,
    record it and refuse the login: it shows the real password reaches the driver (no PostgreSQL here)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.passwords: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except (OSError, struct.error):
                    pass

    def _session(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!i", _recv(conn, 4))
            body = _recv(conn, length - 4)
            code = struct.unpack("!i", body[:4])[0]
            if code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: not offered
                conn.sendall(b"N")
                continue
            break  # the startup message
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = _recv(conn, 1)
        (length,) = struct.unpack("!i", _recv(conn, 4))
        if kind == b"p":
            self.passwords.append(_recv(conn, length - 4).rstrip(b"\0").decode())
        fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "alice"\0\0'
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.close()


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _sweep(ctx: Ctx, url: str) -> list[str]:
    return ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={ctx.tmp}/sweep", *RUN]


def _storage_driver_missing(ctx: Ctx) -> list[str]:
    return _sweep(ctx, f"mysql://alice:{PASSWORD}@127.0.0.1:1/optuna")


def _storage_unreachable(ctx: Ctx) -> list[str]:
    pytest.importorskip("psycopg2")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _sweep(ctx, f"postgresql://alice:{PASSWORD}@127.0.0.1:{port}/optuna")


def _storage_refuses_login(ctx: Ctx) -> list[str]:
    pytest.importorskip("psycopg2")
    server = FakePostgres()
    ctx.cleanup.append(server.close)
    ctx.server = server
    return _sweep(ctx, f"postgresql://alice:{PASSWORD}@127.0.0.1:{server.port}/optuna")


def _password_reached_the_server(ctx: Ctx, outcome: Outcome) -> None:
    _no_password(ctx, outcome)
    assert PASSWORD in ctx.server.passwords


STORAGE_ROWS = [
    Row(
        "storage-driver-missing",
        _storage_driver_missing,
        r"hydra\.sweeper\.storage=mysql://alice:\*\*\*@127\.0\.0\.1:1/optuna needs the database driver 'MySQLdb'"
        r".*pip install mysqlclient",
        check=_no_password,
    ),
    Row(
        "storage-unreachable",
        _storage_unreachable,
        r"postgresql://alice:\*\*\*@127\.0\.0\.1:\d+/optuna: cannot connect to the database server at 127\.0\.0\.1:\d+",
        check=_no_password,
    ),
    Row(
        "storage-login-refused",
        _storage_refuses_login,
        r"cannot connect to the database server at 127\.0\.0\.1:\d+ .*password authentication failed",
        check=_password_reached_the_server,
    ),
]

# Passwords as a database URL holds them (SQLAlchemy's rules: `/ : #` as typed, `@ %` percent-encoded; an
# `@` typed as is too): Hydra's .hydra/hydra.yaml, the console and every file must hold neither the text
# nor the decoded password.
URL_PASSWORDS = {
    "slash": "ab/cd+Ef12",
    "colon": "ab:cd+Ef12",
    "hash": "ab#cd+Ef12",
    "at-encoded": "ab%40cd+Ef12",
    "percent-encoded": "ab%25cd+Ef12",
    "at-typed": "ab@cd+Ef12",
}


def _storage_password(password: str) -> Callable[[Ctx], list[str]]:
    url = f"postgresql://user:{password}@db.host/optuna"
    return _args("hparams_search=optuna", f"hydra.sweeper.storage={url}", "mode=predict")


def _password_nowhere(password: str) -> Callable[[Ctx, Outcome], None]:
    from urllib.parse import unquote

    def check(ctx: Ctx, outcome: Outcome) -> None:
        hydra_yaml = (ctx.run / ".hydra" / "hydra.yaml").read_text()
        assert "postgresql://user:${oc.env:MEDSEG_ARGV_SECRET_" in hydra_yaml
        for text in {password, unquote(password), "cd+Ef12"}:  # the tail too: no part of a password leaks
            assert text not in outcome.out + outcome.err
            leaks = [
                p for p in [*ctx.tmp.rglob("*"), *ctx.run.rglob("*")] if p.is_file() and text.encode() in p.read_bytes()
            ]
            assert leaks == []

    return check


SECRET_ROWS = [
    Row(
        f"storage-password-{name}",
        _storage_password(password),
        r"mode=predict needs ckpt=",
        check=_password_nowhere(password),
        config_error=True,
    )
    for name, password in URL_PASSWORDS.items()
]
