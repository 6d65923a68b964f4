"""The commands a user runs after training, printed at its end ready to paste: evaluate and predict with
this run's best checkpoint, on an image that exists (the first validation case's)."""

from __future__ import annotations

import logging
import re
import shlex
import sys
from pathlib import Path
from typing import Any

from medseg.config.header import display_path

log = logging.getLogger(__name__)

# Characters a Hydra override value may hold unquoted (anything else is quoted for Hydra and the shell).
_PLAIN = re.compile(r"^[A-Za-z0-9_./~+@:%-]+$")


def validation_image(cfg: Any) -> str | None:
    """The image file of the first validation case (the same split training used), or None when the case
    has no single image file (several channel files) or the cases cannot be read."""
    from medseg.data.layouts import read_cases
    from medseg.data.split import split_cases

    try:
        caseset = read_cases(cfg.data, str(cfg.paths.cache_dir))
        _, val = split_cases(caseset.cases, cfg.data, seed=int(cfg.seed))
    except Exception as exc:  # noqa: BLE001 - a hint only: never fail a finished training over it
        log.debug("no validation image for the next commands: %s", exc)
        return None
    image = val[0].get("image") if val else None
    if isinstance(image, (str, Path)) and Path(image).is_file():
        return str(Path(image).resolve())
    return None


def override(key: str, value: str) -> str:
    """`key=value` as one shell word that Hydra reads back as the same string."""
    if _PLAIN.match(value):
        return f"{key}={value}"
    return shlex.quote(f"{key}='{value}'") if "'" not in value else shlex.quote(f'{key}="{value}"')


def next_commands(
    ckpt: str | Path, image: str | None, extra: list[str] | None = None, data: list[str] | None = None
) -> list[str]:
    """`python run.py mode=evaluate ...` and `mode=predict ...` for checkpoint `ckpt` (relative to the working
    folder when it lies below it); `extra` overrides (e.g. hardware=8gb) are added to both, `data` (where the
    validation cases are: a checkpoint never names folders) to evaluate."""
    script = display_path(sys.argv[0]) if sys.argv and sys.argv[0].endswith("run.py") else "run.py"
    base = ["python", script]
    ckpt_arg = override("ckpt", display_path(ckpt))
    tail = list(extra or [])
    predict_input = override("predict.input", image) if image else "predict.input=<image file or folder>"
    return [
        " ".join([*base, "mode=evaluate", ckpt_arg, *(data or []), *tail]),
        " ".join([*base, "mode=predict", ckpt_arg, predict_input, *tail]),
    ]


def log_next_commands(cfg: Any, run_folder: Path) -> list[str]:
    """Log the next commands for the run in `run_folder` (best.pt, or last.pt when no best was kept)."""
    folder = run_folder / "checkpoints"
    ckpt = folder / "best.pt" if (folder / "best.pt").is_file() else folder / "last.pt"
    if not ckpt.is_file():
        return []
    commands = next_commands(ckpt, validation_image(cfg), _hardware_choice(), data_folder(cfg.data))
    log.info("next:\n%s", "\n".join(f"  {c}" for c in commands))
    return commands


def data_folder(data_cfg: Any) -> list[str]:
    """data=<layout>, data.root and the file-name keys of the folder layout where they differ from the
    defaults: what evaluate needs to find the training run's validation cases (the demo data needs nothing)."""
    from medseg.config.schema import FolderDataConfig

    if data_cfg.layout == "synthetic" or not data_cfg.root:
        return []
    words = [f"data={data_cfg.layout}", override("data.root", str(Path(str(data_cfg.root)).expanduser().resolve()))]
    if data_cfg.layout == "folder":
        default = FolderDataConfig()
        for key in ("images_dir", "masks_dir", "mask_suffix"):
            if str(data_cfg[key]) != str(getattr(default, key)):
                words.append(override(f"data.{key}", str(data_cfg[key])))
    return words


def _hardware_choice() -> list[str]:
    """hardware=<preset> when the run chose one other than the default cpu, so inference runs on the same device."""
    from medseg.config.header import hydra_choices_and_overrides

    choice = hydra_choices_and_overrides()[0].get("hardware")
    return [f"hardware={choice}"] if choice and choice != "cpu" else []
