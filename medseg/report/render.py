"""Jinja2 page rendering: templates ship as package data (medseg/report/templates/); plotly.js is inlined
once per page so the file opens with no network."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from medseg.io_utils import write_text

REPORT_NAME = "report.html"


def render_page(template: str, context: dict[str, Any]) -> str:
    import jinja2
    from plotly.offline import get_plotlyjs

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("medseg.report", "templates"),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
        undefined=jinja2.StrictUndefined,  # a missing value is a bug in the report, not an empty cell
    )
    env.filters["num"] = fmt_number
    env.filters["param"] = fmt_param
    return env.get_template(template).render(plotly_js=get_plotlyjs(), **context)


def write_page(path: Path, template: str, context: dict[str, Any]) -> Path:
    return write_text(path, render_page(template, context))


def fmt_number(value: Any, digits: int = 4) -> str:
    """Numbers for cells: 4 decimals, integers as they are, missing or NaN as an en dash."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
        return f"{value:.3e}"
    return f"{value:.{digits}f}"


def fmt_param(value: Any) -> str:
    """A parameter value: floats to 4 significant digits (learning rates read as 0.0005612, not 17 digits)."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return "–" if value is None else str(value)
