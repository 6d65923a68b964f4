"""Run-level facts: the run folder, the device, backend flags and seeding."""

from __future__ import annotations

import logging
import os
import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where used: predict with an ONNX export must not load it
    import torch

log = logging.getLogger(__name__)


def run_dir(cfg: Any) -> Path:
    """paths.output_dir, or Hydra's run folder when running under @hydra.main."""
    if cfg.paths.output_dir:
        path = Path(str(cfg.paths.output_dir)).expanduser()
    else:
        from hydra.core.hydra_config import HydraConfig

        if not HydraConfig.initialized():
            raise ConfigError("paths.output_dir is not set and there is no Hydra run folder; set paths.output_dir")
        path = Path(HydraConfig.get().runtime.output_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def conf_dir() -> Path:
    """The conf/ folder this run was composed from."""
    try:
        from hydra.core.hydra_config import HydraConfig

        if HydraConfig.initialized():
            for source in HydraConfig.get().runtime.config_sources:
                if source.provider == "main" and source.schema == "file":
                    return Path(source.path)
    except Exception:  # noqa: BLE001 - fall back to the repository layout
        pass
    return Path(__file__).resolve().parents[1] / "conf"


def select_device(requested: str) -> torch.device:
    import torch

    requested = str(requested)
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested.startswith("cuda") and not torch.cuda.is_available():
        log.warning("hardware.device=%s but no CUDA device is visible; using cpu", requested)
        return torch.device("cpu")
    try:
        return torch.device(requested)
    except RuntimeError as exc:
        raise ConfigError(f"hardware.device={requested!r} is not a device; use auto, cpu, cuda or cuda:N") from exc


def apply_backend_flags(hw: Any, deterministic: bool) -> None:
    import torch

    torch.backends.cudnn.benchmark = bool(hw.cudnn_benchmark) and not deterministic
    if hw.matmul_precision not in ("highest", "high", "medium"):
        raise ConfigError(f"hardware.matmul_precision={hw.matmul_precision!r}: choose highest, high or medium")
    torch.set_float32_matmul_precision(str(hw.matmul_precision))
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch; each DDP rank gets its own stream derived from (seed, rank)."""
    if rank:
        seed = int(np.random.SeedSequence([seed % (2**32), rank]).generate_state(1)[0])
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
