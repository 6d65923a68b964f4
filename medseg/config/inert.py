"""The two refusals shared by every reader of a checkpoint's stored config (medseg/config/stored.py for the
data keys, medseg/models/stored_model.py for the model): a `${...}` is never resolved, and a bad value is
refused in one line that names the file and the key."""

from __future__ import annotations

from typing import Any

from medseg.errors import CheckpointError


def refuse_interpolation(value: Any, key: str, source: str) -> None:
    """A `${...}` anywhere in a taken value: refused, never resolved."""
    if isinstance(value, str) and "${" in value:
        raise CheckpointError(
            f"checkpoint {source}: its stored {key}={value!r} is an interpolation; a stored config is data and is"
            " never resolved (a real checkpoint holds resolved values); the file may be crafted"
        )
    if isinstance(value, dict):
        for k, v in value.items():
            refuse_interpolation(v, f"{key}.{k}", source)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            refuse_interpolation(v, f"{key}[{i}]", source)


def stored_value_error(source: str, key: str, value: Any, problem: str) -> CheckpointError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return CheckpointError(
        f"checkpoint {source}: its stored {key}={shown} {problem}; the file may be crafted or damaged"
    )
