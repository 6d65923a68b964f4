"""What the bad-input suite (tests/test_bad_inputs.py) shares with its row tables: running run.py's entry in
this process, the finished run a row must leave as it was, the row type and the helpers that damage files."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import logging
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

PASSWORD = "S3cretPw-42"  # a password that must never be printed or written

# A finished run: tiny synthetic data, a tiny U-Net, one training and one validation batch.
RUN = [
    "data.synthetic.num_cases=3",
    "data.synthetic.shape=[32,32,8]",
    "data.batch_size=2",
    "data.val_percent=34",
    "model.channels=[4,8]",
    "trainer.max_epochs=1",
    "trainer.accumulate_grad_batches=1",
    "trainer.limit_train_batches=1",
    "trainer.limit_val_batches=1",
    "trainer.log_images_every_n_epochs=0",
    "trainer.progress_bar=false",
    "logger=none",
]


@dataclass
class Outcome:
    code: Any
    out: str
    err: str


def call_entry(entry: Callable[[], Any], args: list[str], cache: Path) -> Outcome:
    """`python run.py *args` in this process; everything it changes globally is put back afterwards."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    saved_env, saved_argv = dict(os.environ), list(sys.argv)
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    os.environ.pop("HYDRA_FULL_ERROR", None)
    os.environ.update({"MEDSEG_CACHE": str(cache), "WANDB_MODE": "offline"})
    sys.argv = ["run.py", *args]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            entry()
        code: Any = 0
    except SystemExit as exc:
        code = exc.code
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        for handler in list(root.handlers):
            if handler not in saved_handlers:
                root.removeHandler(handler)
                handler.close()
        for handler in saved_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(saved_level)
        GlobalHydra.instance().clear()
        HydraConfig.instance().cfg = None  # type: ignore[assignment]
    return Outcome(code, out.getvalue(), err.getvalue())


def snapshot(run: Path) -> dict[str, str]:
    """Hashes of the finished run's checkpoints and history (what a bad run must never touch)."""
    files = sorted((run / "checkpoints").glob("*")) + [run / "history.json"]
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


# ------------------------------------------------------------------ shared material
@dataclass
class Ctx:
    tmp: Path  # this row's own folder
    run: Path  # the finished run (hydra.run.dir of every row)
    msd: Path  # a valid MSD dataset to copy and damage
    image: Path  # a valid NIfTI image for predict.input
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    server: Any = None  # the fake database server of a storage row

    @property
    def best(self) -> Path:
        return self.run / "checkpoints" / "best.pt"

    def copy_msd(self) -> Path:
        return Path(shutil.copytree(self.msd, self.tmp / "msd"))

    def label(self, root: Path, i: int) -> Path:
        return root / "labelsTr" / f"case_{i:03d}.nii.gz"


# ------------------------------------------------------------------ row helpers
def _truncate_nifti(path: Path) -> None:
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) // 2])[:-8])


def _rewrite(path: Path, array: np.ndarray) -> None:
    old = nib.load(str(path))
    nib.save(nib.Nifti1Image(array, old.affine), str(path))


def _label_array(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj).copy()


def _predict(ckpt: Path, ctx: Ctx) -> list[str]:
    return ["mode=predict", f"ckpt={ckpt}", f"predict.input={ctx.image}", "logger=none"]


def _edit_checkpoint(ctx: Ctx, edit: Callable[[dict[str, Any]], None], name: str = "edited.pt") -> Path:
    import torch

    payload = torch.load(ctx.best, map_location="cpu", weights_only=True)
    edit(payload)
    path = ctx.tmp / name
    torch.save(payload, path)
    return path


def _with_model_config(ctx: Ctx, change: Callable[[dict[str, Any]], None]) -> Path:
    import yaml

    def edit(payload: dict[str, Any]) -> None:
        cfg = yaml.safe_load(payload["config_yaml"])
        change(cfg["model"])
        payload["config_yaml"] = yaml.safe_dump(cfg)

    return _edit_checkpoint(ctx, edit, "crafted.pt")


def _marker(ctx: Ctx) -> Path:
    return ctx.tmp / "MARKER"


def _no_marker(ctx: Ctx, outcome: Outcome) -> None:
    assert not _marker(ctx).exists(), "the callable named in the checkpoint ran"
    assert not list(ctx.tmp.glob("MARKER*"))


def _no_metrics(ctx: Ctx, outcome: Outcome) -> None:
    assert not (ctx.run / "metrics.csv").exists()


def _no_password(ctx: Ctx, outcome: Outcome) -> None:
    assert PASSWORD not in outcome.out + outcome.err
    leaks = [
        p for p in [*ctx.tmp.rglob("*"), *ctx.run.rglob("*")] if p.is_file() and PASSWORD.encode() in p.read_bytes()
    ]
    assert leaks == []


# ------------------------------------------------------------------ the rows: configs
def _args(*args: str) -> Callable[[Ctx], list[str]]:
    return lambda ctx: list(args)


@dataclass
class Row:
    id: str
    setup: Callable[[Ctx], list[str]]
    expect: str  # a regular expression the one error line must match
    check: Callable[[Ctx, Outcome], None] | None = None
    config_error: bool = False  # raised before the config tree may be printed
    marks: tuple[Any, ...] = ()
