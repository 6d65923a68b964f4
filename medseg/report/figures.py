"""The report's interactive charts: plotly figures rendered to HTML fragments (no plotly.js inside;
the page inlines the bundle once, see render.py)."""

from __future__ import annotations

import math
from typing import Any

CURVES = [  # (panel title, history keys, log scale)
    ("Loss", ["train/loss", "val/loss"], False),
    ("Dice (foreground mean)", ["train/dice", "val/dice", "val/dice_pooled"], False),
    ("Learning rate", ["lr"], True),
    ("Gradient norm", ["train/grad_norm"], False),
]
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def fragment(fig: Any, div_id: str) -> str:
    """A <div> + <script> that draws `fig` with the page's inline plotly.js."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id, config=PLOT_CONFIG)


def training_curves(history: list[dict[str, Any]], best_epoch: int | None, monitor: str) -> Any:
    """2 x 2 panels: loss, Dice, learning rate, gradient norm per epoch; the best epoch marked in each."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=2, cols=2, subplot_titles=[c[0] for c in CURVES], horizontal_spacing=0.08)
    for k, (_, keys, log_y) in enumerate(CURVES):
        row, col = k // 2 + 1, k % 2 + 1
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in history if _finite(r.get(key)) and r.get("epoch") is not None]
            if pts:
                x, y = zip(*pts)
                fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=key, legendgroup=key), row=row, col=col)
        if log_y:
            fig.update_yaxes(type="log", row=row, col=col)
        fig.update_xaxes(title_text="epoch", row=row, col=col, **epoch_ticks(history))
    if best_epoch is not None:
        for k in range(4):
            fig.add_vline(
                x=best_epoch, line_dash="dash", line_color="#2a9d8f", row=k // 2 + 1, col=k % 2 + 1, opacity=0.8
            )
        fig.add_annotation(
            text=f"dashed line: best epoch {best_epoch} ({monitor})",
            xref="paper",
            yref="paper",
            x=0,
            y=1.1,
            showarrow=False,
            font={"size": 12, "color": "#2a9d8f"},
        )
    fig.update_layout(height=640, margin={"l": 50, "r": 20, "t": 70, "b": 40}, template="plotly_white")
    return fig


def trial_curves(trials: list[dict[str, Any]], key: str) -> Any:
    """`key` per epoch, one line per trial, overlaid."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for t in trials:
        pts = [(r["epoch"], r[key]) for r in t["history"] if _finite(r.get(key)) and r.get("epoch") is not None]
        if pts:
            x, y = zip(*pts)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=f"trial {t['number']}"))
    fig.update_layout(
        height=420, xaxis_title="epoch", yaxis_title=key, template="plotly_white", margin={"t": 30, "b": 40}
    )
    fig.update_xaxes(**epoch_ticks([r for t in trials for r in t["history"]]))
    return fig


def epoch_ticks(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Whole-number epoch ticks: plotly's automatic ticks fall on halves (1.5, 2.5) for short runs."""
    last = max((r["epoch"] for r in records if isinstance(r.get("epoch"), (int, float))), default=0)
    return {"tick0": 1, "dtick": 1} if last <= 12 else {"tickformat": "d"}


def parallel_coordinates(trials: list[dict[str, Any]], params: list[str], objective: str) -> Any | None:
    """One axis per parameter and one for the objective; lines coloured by the objective.

    Plotly's own Parcoords: a plain Hydra multirun has no Optuna study, so optuna.visualization's version
    would cover only half the reports; categorical values get one tick each."""
    import plotly.graph_objects as go

    scored = [t for t in trials if _finite(t.get("value"))]
    if len(scored) < 2 or not params:
        return None
    dims = []
    for name in params:
        values = [t["params"].get(name) for t in scored]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if numeric:
            dims.append({"label": name, "values": values})
        else:
            levels = sorted({str(v) for v in values})
            dims.append(
                {
                    "label": name,
                    "values": [levels.index(str(v)) for v in values],
                    "tickvals": list(range(len(levels))),
                    "ticktext": levels,
                }
            )
    objective_values = [t["value"] for t in scored]
    dims.append({"label": objective, "values": objective_values})
    line = {"color": objective_values, "colorscale": "Viridis", "showscale": True}
    fig = go.Figure(go.Parcoords(line=line, dimensions=dims))
    fig.update_layout(height=420, margin={"l": 80, "r": 80, "t": 60, "b": 30})
    return fig


def importance_bars(importances: dict[str, float], evaluator: str) -> Any:
    import plotly.graph_objects as go

    names = list(importances)[::-1]  # most important on top
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color="#457b9d"))
    fig.update_layout(
        height=120 + 40 * len(names),
        xaxis_title=f"importance (Optuna, {evaluator})",
        template="plotly_white",
        margin={"l": 160, "t": 20, "b": 40},
    )
    return fig


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
