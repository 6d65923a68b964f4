"""The report of one run: facts, curves, per-class and per-case tables, overlays."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any

import numpy as np

from medseg.report import figures
from medseg.report.overlays import data_uri, evaluate_overlays, saved_overlays
from medseg.report.render import REPORT_NAME, fmt_number, write_page
from medseg.report.sources import EVAL_COLUMNS, RunData, gather_run

HIGHLIGHT = 5  # best and worst classes highlighted in the per-class table (fewer when there are few classes)


def write_run_report(folder: str | Path, ckpt: str | Path | None = None, output: str | Path | None = None) -> Path:
    """report.html for a training run folder or an evaluate folder (its training run found through `ckpt`)."""
    data = gather_run(Path(folder), ckpt)
    data.overlays = evaluate_overlays(data.folder, data.metrics_rows)
    data.overlay_source = "From evaluate's overlays (predict.viz=true), picked by evaluate's per-case Dice."
    legend = bool(data.overlays)  # evaluate's overlay PNGs carry no legend of their own
    if not data.overlays:
        data.overlays = saved_overlays(data.train_dir)
        data.overlay_source = (
            "Validation cases scored with the best weights at the end of training (per-case Dice); "
            "each row is one slice: input, truth, prediction, and their agreement voxel by voxel."
        )
    context = run_context(data)
    if data.overlays and not legend:  # the training overlays: their last column's colours, explained
        from medseg.engine.image_panels import AGREEMENT

        context["agreement_legend"] = [(n, list(rgb), what) for n, rgb, what in AGREEMENT]
    if legend:
        from medseg.inference.image_io import PALETTE

        names = data.class_names[1:]
        context["legend"] = [(n, [int(v) for v in PALETTE[c % len(PALETTE)]]) for c, n in enumerate(names, start=1)]
    return write_page(Path(output) if output else data.folder / REPORT_NAME, "run.html.j2", context)


def run_context(data: RunData) -> dict[str, Any]:
    cfg = data.config
    trainer_cfg = cfg.get("trainer") if isinstance(cfg.get("trainer"), dict) else {}
    monitor = str(trainer_cfg.get("monitor", "val/dice"))
    mode = str(trainer_cfg.get("monitor_mode", "max"))
    best_epoch, best_value = best_of(data.history, monitor, mode)
    class_metrics, class_rows, class_source = class_table(data)
    case_metrics, case_rows = case_table(data)
    highlight = min(HIGHLIGHT, len(class_rows) // 2)
    _mark(class_rows, highlight)
    curves = ""
    if data.history:
        curves = figures.fragment(figures.training_curves(data.history, best_epoch, monitor), "curves-plot")
    return {
        "title": f"medseg report: {data.folder.name}",
        "subtitle": _subtitle(data, monitor, best_epoch, best_value),
        "written_at": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "facts": run_facts(data, monitor, best_epoch, best_value),
        "command": data.command,
        "config_yaml": data.config_yaml,
        "config_lines": data.config_yaml.count("\n"),
        "curves": curves,
        "class_metrics": class_metrics,
        "class_rows": class_rows,
        "class_source": class_source,
        "highlight": highlight,
        "case_metrics": case_metrics,
        "case_rows": case_rows,
        "case_note": f"{len(case_rows)} cases, worst mean Dice first; metrics.csv of {data.folder}",
        "overlays": [{**o, "uri": data_uri(o["png"])} for o in data.overlays],
        "overlay_heading": overlay_heading([str(o.get("role")) for o in data.overlays]),
        "overlay_source": data.overlay_source,
        "legend": [],
        "agreement_legend": [],
    }


def overlay_heading(roles: list[str]) -> str:
    """'Best, median and worst cases' only when there are three: two cases are best and worst, one is one."""
    if len(roles) == 1:
        return "The one scored case"
    named = [r for r in ("best", "median", "worst") if r in roles]
    if len(named) < 2:
        return "Cases"
    return (", ".join(named[:-1]) + " and " + named[-1]).capitalize() + " cases"


def best_of(history: list[dict[str, Any]], monitor: str, mode: str) -> tuple[int | None, float | None]:
    """(epoch, value) of the best monitored value in the history."""
    pts = [(r["epoch"], r[monitor]) for r in history if _finite(r.get(monitor)) and r.get("epoch") is not None]
    if not pts:
        return None, None
    pick = max if mode == "max" else min
    epoch, value = pick(pts, key=lambda p: p[1])
    return int(epoch), float(value)


def run_facts(data: RunData, monitor: str, best_epoch: int | None, best_value: float | None) -> list[tuple[str, str]]:
    cfg, facts, hist = data.config, data.facts, data.history
    dcfg = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
    dataset = facts.get("dataset") if isinstance(facts.get("dataset"), dict) else {}
    model = facts.get("model") if isinstance(facts.get("model"), dict) else {}
    hw = cfg.get("hardware") if isinstance(cfg.get("hardware"), dict) else {}
    out: list[tuple[str, str]] = []
    if dataset:
        out.append(
            (
                "data",
                f"{dcfg.get('layout', '?')} · {dataset.get('train_cases', '?')} train / {dataset.get('val_cases', '?')}"
                f" validation cases ({dataset.get('train_items', '?')} / {dataset.get('val_items', '?')} items)"
                f" · {dataset.get('dims', '?')}D · {dataset.get('in_channels', '?')} input channel(s)",
            )
        )
    if dcfg:
        split = f"{dcfg.get('val_percent', '?')}% of cases for validation, by case, seed {cfg.get('seed', '?')}"
        if dcfg.get("split_file"):
            split = f"from {dcfg['split_file']}"
        elif dcfg.get("fold") is not None:
            split = f"fold {dcfg['fold']} of {dcfg.get('num_folds', '?')}"
        out.append(("split", split))
    if data.class_names:
        shown = ", ".join(data.class_names[:12]) + (" …" if len(data.class_names) > 12 else "")
        out.append(("classes", f"{len(data.class_names)} (incl. background): {shown}"))
    if dcfg:
        spacing = dcfg.get("spacing")
        out.append(("spacing", f"{spacing} mm" if spacing else "native (no resampling)"))
        out.append(("scale / slicing", f"scale {dcfg.get('scale', 1.0)}, slice axis {dcfg.get('slice_axis', '?')}"))
    if model:
        params = model.get("params_total")
        out.append(("model", f"{model.get('architecture', '?')} · {fmt_number(params)} parameters"))
    elif isinstance(cfg.get("model"), dict):
        out.append(("model", str(cfg["model"].get("_target_", "?")).rsplit(".", 1)[-1]))
    device = facts.get("device")
    precision = facts.get("precision") or (cfg.get("trainer") or {}).get("precision")
    if hw or device:
        out.append(("hardware", f"preset {hw.get('name', '?')} · device {device or '?'} · precision {precision}"))
    if hist:
        wall = sum(r.get("time/epoch_s") or 0.0 for r in hist)
        rates = [r["train/samples_per_s"] for r in hist if _finite(r.get("train/samples_per_s"))]
        out.append(("epochs", f"{hist[-1].get('epoch')} · {_duration(facts.get('wall_time_s') or wall)} wall time"))
        if rates:
            out.append(("throughput", f"{np.mean(rates):.1f} training samples/s (mean over epochs)"))
    if best_epoch is not None:
        out.append(("best", f"{monitor} {fmt_number(best_value)} at epoch {best_epoch}"))
    if data.summary.get("mean_dice") is not None:
        out.append(("evaluate", f"mean Dice {fmt_number(data.summary['mean_dice'])} on {data.summary.get('source')}"))
    versions = facts.get("versions")
    if isinstance(versions, dict) and versions:
        out.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return out


def class_table(data: RunData) -> tuple[list[str], list[dict[str, Any]], str]:
    """Per class: evaluate's per-class means when this folder holds an evaluation, else the validation of the
    epoch whose weights best.pt holds (the weights the run hands over), said so in the source line."""
    names = data.class_names[1:] if data.class_names else []
    per_class = data.summary.get("per_class")
    if isinstance(per_class, dict) and per_class:
        metrics = list(dict.fromkeys(m for v in per_class.values() if isinstance(v, dict) for m in v))
        rows = [{"name": n, "scores": dict(v)} for n, v in per_class.items() if isinstance(v, dict)]
        return metrics, rows, f"evaluate on {data.summary.get('source', '?')} (mean over cases)"
    if not data.history or not names:
        return [], [], ""
    scored = [r for r in data.history if any(_per_class(r, "dice", n) is not None for n in names)]
    if not scored:
        return [], [], ""
    best_epoch = data.best_checkpoint_epoch
    record = next((r for r in scored if r.get("epoch") == best_epoch), None) if best_epoch is not None else None
    if record is not None:
        source = f"validation at epoch {best_epoch}, the epoch of the weights in best.pt (history.json)"
    else:
        record = scored[-1]
        source = f"validation at epoch {record.get('epoch')}, the last epoch: no best.pt was found (history.json)"
    metrics = [m for m in ("dice", "iou", "hd95") if any(_per_class(record, m, n) is not None for n in names)]
    rows = [{"name": n, "scores": {m: _per_class(record, m, n) for m in metrics}} for n in names]
    return metrics, rows, source


def _per_class(record: dict[str, Any], metric: str, name: str) -> float | None:
    """val/<metric>/<class> or val/<metric>_<class>, whichever the history uses."""
    for key in (f"val/{metric}/{name}", f"val/{metric}_{name}"):
        if _finite(record.get(key)):
            return float(record[key])
    return None


def _mark(rows: list[dict[str, Any]], n: int) -> None:
    scored = sorted((r for r in rows if _finite(r["scores"].get("dice"))), key=lambda r: -r["scores"]["dice"])
    for r in rows:
        r["mark"] = ""
    if n <= 0:
        return
    for r in scored[:n]:
        r["mark"] = "top"
    for r in scored[-n:]:
        r["mark"] = "bottom"


def case_table(data: RunData) -> tuple[list[str], list[dict[str, Any]]]:
    """Evaluate's rows averaged per case (NaN-free mean over classes), worst Dice first."""
    if not data.metrics_rows:
        return [], []
    numeric = [c for c in data.metrics_columns if c not in ("case", "class")]
    metrics = [m for m in EVAL_COLUMNS if m in numeric] + [m for m in numeric if m not in EVAL_COLUMNS]
    by_case: dict[str, list[dict[str, Any]]] = {}
    for r in data.metrics_rows:
        by_case.setdefault(str(r["case"]), []).append(r)
    rows = []
    for case, rs in by_case.items():
        values = {m: _mean([r.get(m) for r in rs]) for m in metrics}
        scored = [r for r in rs if _finite(r.get("dice"))]
        worst = min(scored, key=lambda r: r["dice"]) if scored else None
        rows.append(
            {"case": case, "scores": values, "worst": f"{worst['class']} ({worst['dice']:.4f})" if worst else "–"}
        )
    rows.sort(key=lambda r: (r["scores"].get("dice") is None, r["scores"].get("dice") or 0.0))
    return metrics, rows


def _mean(values: list[Any]) -> float | None:
    finite = [float(v) for v in values if _finite(v)]
    return float(np.mean(finite)) if finite else None


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _duration(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _subtitle(data: RunData, monitor: str, best_epoch: int | None, best_value: float | None) -> str:
    parts = [str(data.folder)]
    if data.train_dir is not None and data.train_dir != data.folder:
        parts.append(f"training run {data.train_dir}")
    if best_epoch is not None:
        parts.append(f"best {monitor} {fmt_number(best_value)} at epoch {best_epoch}")
    return " · ".join(parts)
