"""Keep secrets out of everything a run writes: configs, logs, checkpoints and tracker payloads.

Three kinds of values are masked: values of keys named like secrets (api_key, token, password,
secret, credentials); the password of any URL (`scheme://user:password@host`, e.g. a database
given as hydra.sweeper.storage); and, anywhere in any text, the values of environment variables
named like secrets (*_API_KEY, *TOKEN*, *SECRET*, *PASSWORD*), e.g. an API key that reached a
config value through ${oc.env:WANDB_API_KEY} or a command-line override.

URL passwords are found the way the database client reads them (Optuna hands hydra.sweeper.storage
to SQLAlchemy): the user part runs to the first `:`, the password from there to the next `@`, so a
password may hold `/`, `:`, `#` and `%` as typed, and `@` percent-encoded (`%40`). Both the text
and its percent-decoded value are masked. An `@` typed unencoded ends SQLAlchemy's password early
and lands in its host; such a host is no host, so the password is taken to run to its last `@`.

Secrets typed on the command line never reach Hydra: `hide_argv_secrets` moves them into
environment variables before Hydra parses sys.argv, and the override reads them back with
${oc.env:...}. Hydra's files (.hydra/*.yaml, multirun.yaml) and its console lines then hold only
the interpolation, while the composed config resolves to the real value.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable
from typing import Any

MASK = "***"
# Key names that hold secrets (api_key, wandb_api_key, hf_token, db_password, client_secret, ...);
# only string values are masked, so numeric hyperparameters such as token_dim are never touched.
SECRET_KEY = re.compile(r"(^|_)(api_?key|token|password|passwd|secret|secret_key|private_key|credentials?)$", re.I)
SECRET_ENV = re.compile(r"(^|_)API_KEY$|TOKEN|SECRET|PASSWORD|PASSWD", re.I)
# Shorter values are not searched for inside other text (TOKENIZERS_PARALLELISM=false is no secret).
MIN_ENV_LEN = 8
MIN_KEY_LEN = 4
# `scheme://user:` of a URL with a password, as sqlalchemy.engine.url._parse_url (1.4) reads it: the
# user part holds no `:` or `/` (it may be empty: `redis://:password@host`). Inside other text a URL
# also ends at white space and quotes.
URL_USER = re.compile(r"(?<![\w+.-])[A-Za-z][\w+.-]*://[^:/\s'\"]*:")
URL_END = re.compile(r"[\s'\"]")
HOST_END = re.compile(r"[/:?\s'\"]")
# Environment variables that carry secrets moved out of the command line (hide_argv_secrets).
ARGV_SECRET_ENV = "MEDSEG_ARGV_SECRET_"


def is_secret_key(key: Any) -> bool:
    return isinstance(key, str) and bool(SECRET_KEY.search(key))


def env_secrets(environ: dict[str, str] | None = None) -> list[str]:
    """Values of environment variables whose names look like secrets."""
    env = os.environ if environ is None else environ
    values = {v for k, v in env.items() if SECRET_ENV.search(k) and len(v) >= MIN_ENV_LEN}
    return sorted(values - {"true", "false"}, key=len, reverse=True)


def secret_values(config: Any = None, environ: dict[str, str] | None = None) -> list[str]:
    """Every string to mask: secret-looking environment values and values of secret-named config keys."""
    found = set(env_secrets(environ))

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if is_secret_key(key) and isinstance(value, str) and len(value) >= MIN_KEY_LEN:
                    found.add(value)
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)
        elif isinstance(node, str):  # a URL password also masked where it appears without its URL
            found.update(p for p in url_passwords(node) if len(p) >= MIN_KEY_LEN)

    walk(_plain(config))
    return sorted(found, key=len, reverse=True)  # longest first, so a secret inside another is masked whole


def password_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of the password of every URL inside `text`, as the database client parses it.

    Spans holding an interpolation (`${oc.env:X}`, what hide_argv_secrets leaves) are no passwords.
    """
    spans = []
    for m in URL_USER.finditer(text):
        start = m.end()
        stop = URL_END.search(text, start)
        limit = stop.start() if stop else len(text)
        end = text.find("@", start, limit)
        if end < 0:
            continue  # no `@` after the `:`: a port or a path, not a password
        host_end = HOST_END.search(text, end + 1)
        last_at = text.rfind("@", end + 1, host_end.start() if host_end else len(text))
        end = max(end, last_at)  # an unencoded `@` in the password: up to the host's last `@`
        if "${" not in text[m.start() : end]:
            spans.append((start, end))
    return spans


def url_passwords(text: str) -> list[str]:
    """Passwords of the URLs inside `text`: as written and, where percent-encoded, as the client decodes them."""
    from urllib.parse import unquote

    found = []
    for start, end in password_spans(text):
        raw = text[start:end]
        found += [raw] if unquote(raw) == raw else [raw, unquote(raw)]
    return found


def replace_passwords(text: str, replace: Callable[[str], str]) -> str:
    """`text` with each URL password replaced by `replace(password)`."""
    out, pos = [], 0
    for start, end in password_spans(text):
        out += [text[pos:start], replace(text[start:end])]
        pos = end
    return "".join(out) + text[pos:]


def mask_urls(text: str) -> str:
    """`text` with the password of every URL replaced by the mask (interpolations are left alone)."""
    return replace_passwords(text, lambda _: MASK)


def redact_text(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret and secret in text:
            text = text.replace(secret, MASK)
    return mask_urls(text)


def redact(node: Any, secrets: Iterable[str] | None = None) -> Any:
    """A copy of a plain config (dicts, lists, scalars) with secrets masked; keys keep their names."""
    secrets = list(secret_values(node) if secrets is None else secrets)

    def walk(value: Any, key: Any = None) -> Any:
        if is_secret_key(key) and isinstance(value, str) and value:
            return MASK
        if isinstance(value, dict):
            return {k: walk(v, k) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(v) for v in value]
        if isinstance(value, str):
            return redact_text(value, secrets)
        return value

    return walk(_plain(node))


def redact_config(cfg: Any) -> dict[str, Any]:
    """The resolved config as a plain dict with secrets masked."""
    return redact(_plain(cfg, resolve=True))


def redact_files(paths: Iterable[Any], secrets: list[str]) -> None:
    """Mask secrets inside text files written by others (Hydra's .hydra/*.yaml, multirun.yaml)."""
    from pathlib import Path

    from medseg.io_utils import write_text

    for path in map(Path, paths):
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        masked = redact_text(text, secrets)
        if masked != text:
            write_text(path, masked)


class RedactingFilter(logging.Filter):
    """Masks secrets in log records before any handler formats them (console and run.log)."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = redact_text(message, self.secrets)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def install_log_filter(secrets: list[str]) -> None:
    """Attach a RedactingFilter to every handler of the root logger (once per handler); URL passwords
    are masked even when `secrets` is empty."""
    for handler in logging.getLogger().handlers:
        old = [f for f in handler.filters if isinstance(f, RedactingFilter)]
        for f in old:
            handler.removeFilter(f)
        handler.addFilter(RedactingFilter(secrets))


def hide_argv_secrets(argv: list[str], environ: Any = None) -> list[str]:
    """Command-line overrides with every secret replaced by an ${oc.env:...} interpolation.

    - a URL password (`hydra.sweeper.storage=postgresql://u:pw@host/db`) and the value of a secret-named
      key (`logger.wandb.api_key=...`) move into a new environment variable MEDSEG_ARGV_SECRET_<n>;
    - the value of a secret environment variable typed again (`logger.wandb.notes=$WANDB_API_KEY`) becomes
      ${oc.env:<that variable>}.
    Hydra composes the same config (child processes inherit the variables), but writes and prints only
    the interpolations. argv[0] and options (`-m`, `--cfg`) are left alone.
    """
    env = os.environ if environ is None else environ
    secrets = set(env_secrets(env))
    known = {env[name]: name for name in sorted(env) if env[name] in secrets}
    out = list(argv[:1])
    for arg in argv[1:]:
        if arg.startswith("-") or "=" not in arg:
            out.append(arg)
            continue
        key, value = arg.split("=", 1)
        out.append(f"{key}={_hide_value(key, value, env, known)}")
    return out


def _hide_value(key: str, value: str, env: Any, known: dict[str, str]) -> str:
    def stash(secret: str) -> str:
        for name, held in env.items():  # the same secret twice: one variable
            if name.startswith(ARGV_SECRET_ENV) and held == secret:
                return f"${{oc.env:{name}}}"
        name = f"{ARGV_SECRET_ENV}{sum(n.startswith(ARGV_SECRET_ENV) for n in env) + 1}"
        env[name] = secret
        return f"${{oc.env:{name}}}"

    leaf = key.lstrip("+~").rsplit(".", 1)[-1]
    quote = value[:1] if len(value) >= 2 and value[:1] in "'\"" and value[-1:] == value[:1] else ""
    inner = value[1:-1] if quote else value
    if is_secret_key(leaf) and inner and "${" not in inner:
        return quote + stash(inner) + quote
    for secret, name in sorted(known.items(), key=lambda kv: -len(kv[0])):
        inner = inner.replace(secret, f"${{oc.env:{name}}}")
    inner = replace_passwords(inner, stash)
    return quote + inner + quote


def _plain(node: Any, resolve: bool = True) -> Any:
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(node, (DictConfig, ListConfig)):
            return OmegaConf.to_container(node, resolve=resolve)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return node
