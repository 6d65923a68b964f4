"""The resolved config as a tree of text, printed at the start of a run and saved as config_tree.txt."""

from __future__ import annotations

from typing import Any

# Groups first, in the order a reader looks for them; other keys follow in config order.
ORDER = ("mode", "task_name", "seed", "ckpt", "tags", "model", "data", "optimizer", "scheduler", "trainer", "logger")


def config_tree(config: dict[str, Any], title: str = "CONFIG") -> str:
    """Box-drawing tree of a plain config; lists of scalars stay on one line."""
    keys = [k for k in ORDER if k in config] + [k for k in config if k not in ORDER]
    lines = [title]
    _branch({k: config[k] for k in keys}, "", lines)
    return "\n".join(lines) + "\n"


def _branch(node: dict[str, Any], prefix: str, lines: list[str]) -> None:
    items = list(node.items())
    for i, (key, value) in enumerate(items):
        last = i == len(items) - 1
        joint, pad = ("└── ", "    ") if last else ("├── ", "│   ")
        if isinstance(value, dict) and value:
            lines.append(f"{prefix}{joint}{key}")
            _branch(value, prefix + pad, lines)
        elif isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
            lines.append(f"{prefix}{joint}{key}")
            _branch({f"[{j}]": v for j, v in enumerate(value)}, prefix + pad, lines)
        else:
            lines.append(f"{prefix}{joint}{key}: {_scalar(value)}")


def _scalar(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{}"
    if isinstance(value, list):
        return "[" + ", ".join(_scalar(v) for v in value) + "]"
    return str(value)
