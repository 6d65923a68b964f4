"""What a run folder holds, read into plain Python for the report.

A run folder (training) holds history.json, label_map.json, .hydra/{config,overrides}.yaml,
checkpoints/, run_facts.json (written at the end of training) and report_overlays/. An evaluate
folder holds metrics.csv and summary.json and points at its training run through the checkpoint.
Every file is optional: a missing or unreadable one leaves its section out. Keys and columns are
looked up by name, so extra columns or keys written by newer code are carried along, not fatal.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

EVAL_COLUMNS = ("dice", "iou", "hd95")  # the per-class scores evaluate writes; any further column is shown too


@dataclass
class RunData:
    folder: Path  # where report.html goes
    train_dir: Path | None  # the training run (history, checkpoints); may equal folder
    history: list[dict[str, Any]] = field(default_factory=list)
    class_names: list[str] = field(default_factory=list)
    config_yaml: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    command: str | None = None
    facts: dict[str, Any] = field(default_factory=dict)  # dataset, model, hardware, device, precision, ...
    metrics_rows: list[dict[str, Any]] = field(default_factory=list)  # evaluate's metrics.csv
    metrics_columns: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)  # evaluate's summary.json
    overlays: list[dict[str, Any]] = field(default_factory=list)  # {role, case, dice, png (bytes)}
    overlay_source: str = ""
    best_checkpoint_epoch: int | None = None  # the epoch whose weights checkpoints/best.pt holds


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_history(folder: Path) -> list[dict[str, Any]]:
    data = read_json(folder / "history.json")
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def read_evaluation(folder: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """Evaluate's metrics.csv (rows with `case` and `class`); a tracker's per-epoch metrics.csv is not it."""
    path = folder / "metrics.csv"
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = list(reader.fieldnames or [])
            if "case" not in columns or "class" not in columns:
                return [], []
            rows = [{k: _number(v) if k not in ("case", "class") else v for k, v in r.items()} for r in reader]
    except (OSError, csv.Error):
        return [], []
    return rows, columns


def _number(text: Any) -> Any:
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return text
    return None if math.isnan(value) else value


def read_config(folder: Path) -> tuple[str, dict[str, Any]]:
    """The run's saved config (.hydra/config.yaml) as YAML text and as a plain dict."""
    path = folder / ".hydra" / "config.yaml"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return "", {}
    return text, _yaml_dict(text)


def _yaml_dict(text: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.create(text), resolve=False)
    except Exception:  # noqa: BLE001 - a damaged file leaves the facts that depend on it empty
        return {}
    return data if isinstance(data, dict) else {}


def read_command(folder: Path) -> str | None:
    """`python run.py <overrides>` from Hydra's .hydra/overrides.yaml."""
    from omegaconf import OmegaConf

    path = folder / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return None
    try:
        overrides = [str(o) for o in OmegaConf.load(path)]
    except Exception:  # noqa: BLE001
        return None
    return " ".join(["python run.py", *overrides])


def checkpoint_facts(path: Path) -> dict[str, Any]:
    """Dataset, model facts, versions and config text stored in a checkpoint (tensors are memory-mapped, not read).

    The config shown is what medseg takes from a stored config (medseg.config.stored: allow-listed keys,
    checked, never resolved); a crafted one is refused as predict and evaluate refuse it.
    """
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint only leaves facts out
        return {}
    if not isinstance(payload, dict):
        return {}
    keys = ("dataset", "model_facts", "versions", "class_names", "epoch", "best_score", "monitor")
    facts = {k: payload[k] for k in keys if k in payload}
    if "config_yaml" in payload:
        from medseg.config.stored import stored_config_text

        facts["config_yaml"] = stored_config_text(payload["config_yaml"], str(path))
    return facts


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch a checkpoint was saved at (tensors memory-mapped, not read); None when unreadable."""
    import torch

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - an unreadable checkpoint only leaves the fact out
        return None
    epoch = payload.get("epoch") if isinstance(payload, dict) else None
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def training_folder(ckpt: str | Path) -> Path:
    """The run folder of <run>/checkpoints/<name>.pt."""
    path = Path(str(ckpt)).expanduser().resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def gather_run(folder: Path, ckpt: str | Path | None = None) -> RunData:
    """Everything the run report shows, from a training run folder and/or an evaluate folder.

    `folder` is where report.html goes. The training run is `folder` itself when it holds history.json,
    else the folder of `ckpt` (an evaluate run names its checkpoint in its config).
    """
    folder = Path(folder)
    config_yaml, config = read_config(folder)
    if ckpt is None and config.get("mode") == "evaluate" and config.get("ckpt"):
        ckpt = str(config["ckpt"])
    train_dir: Path | None = folder if (folder / "history.json").is_file() else None
    if train_dir is None and ckpt is not None:
        train_dir = training_folder(ckpt)
    data = RunData(folder=folder, train_dir=train_dir)
    data.command = read_command(folder)
    if train_dir is not None:
        data.history = read_history(train_dir)
        facts = read_json(train_dir / "run_facts.json")
        data.facts = facts if isinstance(facts, dict) else {}
        labels = read_json(train_dir / "label_map.json")
        if isinstance(labels, dict):
            data.class_names = [str(labels[k]) for k in sorted(labels, key=lambda k: int(k)) if str(k).isdigit()]
        train_yaml, train_cfg = read_config(train_dir)
        if train_dir != folder or not config_yaml:
            data.config_yaml, data.config = train_yaml, train_cfg
        if data.command is None:
            data.command = read_command(train_dir) or data.facts.get("command")
    if not data.config_yaml:
        data.config_yaml, data.config = config_yaml, config
    best = _checkpoint_path(train_dir, ckpt)
    best_pt = train_dir / "checkpoints" / "best.pt" if train_dir is not None else None
    if best_pt is not None and best_pt.is_file():
        data.best_checkpoint_epoch = checkpoint_epoch(best_pt)
    if best is not None and (not data.facts.get("dataset") or not data.config_yaml):
        stored = checkpoint_facts(best)
        data.facts.setdefault("dataset", stored.get("dataset"))
        data.facts.setdefault("model", stored.get("model_facts"))
        data.facts.setdefault("versions", stored.get("versions"))
        if not data.config_yaml and stored.get("config_yaml"):
            data.config_yaml, data.config = stored["config_yaml"], _yaml_dict(stored["config_yaml"])
        if not data.class_names and stored.get("class_names"):
            data.class_names = list(stored["class_names"])
    if not data.class_names and isinstance(data.facts.get("dataset"), dict):
        data.class_names = list(data.facts["dataset"].get("class_names") or [])
    data.metrics_rows, data.metrics_columns = read_evaluation(folder)
    summary = read_json(folder / "summary.json")
    data.summary = summary if isinstance(summary, dict) else {}
    return data


def _checkpoint_path(train_dir: Path | None, ckpt: str | Path | None) -> Path | None:
    if ckpt is not None and Path(str(ckpt)).expanduser().is_file():
        return Path(str(ckpt)).expanduser()
    if train_dir is not None:
        for name in ("best.pt", "last.pt"):
            if (train_dir / "checkpoints" / name).is_file():
                return train_dir / "checkpoints" / name
    return None
