"""Checkpoint files: tensors and plain data only, written atomically, loaded with weights_only=True."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medseg.errors import CheckpointError
from medseg.io_utils import atomic_write

FORMAT = "medseg-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(path: str | Path, payload: dict[str, Any]) -> Path:
    payload = {"format": FORMAT, "format_version": FORMAT_VERSION, **payload}
    return atomic_write(path, lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: str | Path | None) -> dict[str, Any]:
    if not path:
        raise CheckpointError("no checkpoint given; pass ckpt=path/to/checkpoints/best.pt")
    path = Path(str(path)).expanduser()
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found; check the ckpt= path")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means the same to the user
        if "GLOBAL" in str(exc):  # the weights-only unpickler met a Python callable, not only tensors
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain data; medseg does not"
                " load them (a medseg checkpoint never does; the file may be crafted)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}); is the file complete?"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a medseg checkpoint; pass a file from <run>/checkpoints/")
    if int(payload.get("format_version", 0)) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer medseg (format {payload['format_version']}); upgrade")
    return payload


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached": float(np_state[4]),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    npst = state["numpy"]
    np.random.set_state(
        ("MT19937", npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"])
    )
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def library_versions() -> dict[str, str]:
    import monai

    import medseg

    return {"medseg": str(medseg.__version__), "torch": str(torch.__version__), "monai": str(monai.__version__)}
