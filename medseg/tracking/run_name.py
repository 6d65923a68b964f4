"""Run names from a template such as "{model}-bs{data.batch_size}-lr{optimizer.lr}-{date}".

Fields: {dotted.key} is a value of the resolved config (floats written compactly: 1e-4, 0.5),
{model} the model class in lower case (unet), {date} MMDD, {time} HHMM, {now:FMT} any strftime format.
"""

from __future__ import annotations

import datetime as _dt
import re
from typing import Any

from medseg.errors import ConfigError

FIELD = re.compile(r"\{([^{}:]+)(?::([^{}]*))?\}")


def format_run_name(template: str, config: dict[str, Any], now: _dt.datetime | None = None) -> str:
    now = now or _dt.datetime.now()

    def fill(match: re.Match) -> str:
        key, spec = match.group(1).strip(), match.group(2)
        if key == "now":
            return now.strftime(spec or "%m%d-%H%M")
        if key == "date":
            return now.strftime("%m%d")
        if key == "time":
            return now.strftime("%H%M")
        if key == "model":
            target = str((config.get("model") or {}).get("_target_", "model"))
            return target.rsplit(".", 1)[-1].lower()
        value: Any = config
        for part in key.split("."):
            if not isinstance(value, dict) or part not in value:
                raise ConfigError(f"run name template {template!r}: {{{key}}} is not a config key; fix the template")
            value = value[part]
        return compact(value)

    return FIELD.sub(fill, template)


def compact(value: Any) -> str:
    """1e-4 rather than 0.0001; integers and strings as they are; lists joined with 'x'."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if value != 0 and (abs(value) < 0.01 or abs(value) >= 1e5):
            mantissa, exp = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exp)}"
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(compact(v) for v in value)
    return str(value)
