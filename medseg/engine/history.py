"""history.json and history.png: the per-epoch record of a run, as data and as six panels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from medseg.io_utils import write_figure, write_json

PANELS = [
    ("Loss", ["train/loss", "val/loss"], False),
    ("Dice (foreground mean)", ["train/dice", "val/dice"], False),
    ("IoU (foreground mean)", ["train/iou", "val/iou"], False),
    ("Overfit gap", ["gap/loss", "gap/dice"], False),
    ("Gradient norm", ["train/grad_norm"], False),
    ("Learning rate", ["lr"], True),
]


def write_history(path: str | Path, history: list[dict[str, Any]]) -> Path:
    return write_json(path, history)


def plot_history(path: str | Path, history: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for ax, (title, keys, log_y) in zip(axes.flat, PANELS):
        for key in keys:
            pts = [(r["epoch"], r[key]) for r in history if r.get(key) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", markersize=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        if log_y and any(r.get("lr") for r in history):
            ax.set_yscale("log")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return write_figure(path, fig)
