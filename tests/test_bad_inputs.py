"""The bad-input suite: each row is one thing a user can get wrong (a config value, a data file, a
checkpoint, a storage URL). Every row must end with exit code 2 and one line `medseg: error: ...` naming
the problem, no traceback, and must leave an earlier run's checkpoints and history in the same run folder
byte for byte as they were (hydra.run.dir points at that finished run).

Rows run through run.py's own entry (`main` of run.py: argv parsing, Hydra, the one-line error printing)
inside the test process, which keeps the suite fast; test_rows_agree_with_a_real_process runs a few rows
as real `python run.py` processes to show that the exit code and the line are the same there.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import importlib.util
import io
import logging
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import ROOT

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


# ------------------------------------------------------------------ running run.py's entry in-process
@pytest.fixture(scope="module")
def entry() -> Callable[[], Any]:
    spec = importlib.util.spec_from_file_location("medseg_run_entry", ROOT / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    task = module.main
    while hasattr(task, "__wrapped__"):
        task = task.__wrapped__
    task.__module__ = "__main__"  # as when run.py runs as a script: Hydra looks for conf/ next to the file
    return module.main


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


@pytest.fixture(scope="module")
def finished(entry, tmp_path_factory, cache_dir) -> tuple[Path, Path, Path]:
    from medseg.data.examples import write_msd

    base = tmp_path_factory.mktemp("bad_inputs")
    run = base / "finished_run"
    done = call_entry(entry, [f"hydra.run.dir={run}", *RUN], cache_dir)
    assert done.code == 0, done.err[-2000:]
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "history.json").is_file()
    msd = write_msd(base / "msd", num_cases=4, num_classes=3)
    image = base / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.random.default_rng(0).random((32, 32, 8)).astype(np.float32), np.eye(4)), image)
    return run, msd, image


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


CONFIG_ROWS = [
    Row("typo-key", _args("trainer.max_epoch=3"), r"trainer\.max_epoch\b.*did you mean trainer\.max_epochs\?"),
    Row("typo-nested-key", _args("data.intensity.presett=ct"), r"did you mean data\.intensity\.preset\?"),
    Row("wrong-type", _args("trainer.max_epochs=abc"), r"trainer\.max_epochs"),
    Row("wrong-type-list", _args("data.batch_size=[1,2]"), r"data\.batch_size"),
    Row("unknown-option", _args("model=unet9"), r"model.*unet9"),
    Row("unknown-mode", _args("mode=dance"), r"mode='dance' is not known"),
    Row("batch-size-negative", _args("data.batch_size=-1"), r"data\.batch_size=-1 must be an integer >= 1"),
    Row("epochs-zero", _args("trainer.max_epochs=0"), r"trainer\.max_epochs=0 must be an integer >= 1"),
    Row(
        "accumulation-zero",
        _args("trainer.accumulate_grad_batches=0"),
        r"accumulate_grad_batches=0 must be an integer >= 1",
    ),
    Row("scale-above-one", _args("data.scale=1.5"), r"data\.scale=1\.5 must be in \(0, 1\]"),
    Row("val-percent-100", _args("data.val_percent=100"), r"data\.val_percent=100\.0 must be in \(0, 100\)"),
    Row("lr-negative", _args("optimizer.lr=-0.001"), r"optimizer\.lr=-0\.001 must be > 0"),
    Row("workers-negative", _args("hardware.num_workers=-2"), r"hardware\.num_workers=-2 must be an integer >= 0"),
    Row(
        "probability-above-one",
        _args("data.augment.flip_prob=1.5"),
        r"data\.augment\.flip_prob=1\.5 must be in \[0, 1\]",
    ),
    Row("overlap-one", _args("predict.overlap=1"), r"predict\.overlap=1\.0 must be in \[0, 1\)"),
    Row(
        "patch-size-zero",
        _args("data.dims=3", "data.patch_size=[0,16,16]"),
        r"data\.patch_size=\[0,16,16\] must be a list of integers >= 1 or null",
    ),
    Row("fold-beyond-folds", _args("data.fold=5"), r"data\.fold=5 .*\[0, 4\]"),
    Row("predict-without-ckpt", _args("mode=predict"), r"mode=predict needs ckpt="),
    Row("missing-ckpt", lambda ctx: _predict(ctx.tmp / "nope.pt", ctx), r"nope\.pt not found"),
    Row("missing-ckpt-fine-tune", lambda ctx: [f"ckpt={ctx.tmp}/gone.pt", *RUN], r"gone\.pt not found"),
    Row(  # Hydra skips an unknown option of an optional group; the misspelt recipe must not run the demo
        "unknown-recipe",
        _args("experiment=pytorch-unet"),
        r"experiment=pytorch-unet is not an option of experiment: choose one of pytorch_unet, .*did you mean",
    ),
    Row("unknown-search", _args("hparams_search=optun"), r"hparams_search=optun .*choose one of optuna"),
    Row("unknown-in-list", _args("logger=[wandb,csvv]"), r"logger=csvv .*choose one of csv, none"),
]
for _row in CONFIG_ROWS:
    _row.config_error = True


# ------------------------------------------------------------------ the rows: data files
def _msd_args(root: Path, *extra: str) -> list[str]:
    return ["data=msd", f"data.root={root}", "model.channels=[4,8]", "logger=none", "trainer.max_epochs=1", *extra]


def _truncated_image(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _truncate_nifti(root / "imagesTr" / "case_002.nii.gz")
    return _msd_args(root)


def _label_wrong_shape(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _rewrite(ctx.label(root, 0), np.zeros((30, 32, 8), dtype=np.uint8))
    return _msd_args(root)


def _label_out_of_range(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    label = _label_array(ctx.label(root, 1))
    label[:2, :2, :] = 7
    _rewrite(ctx.label(root, 1), label)
    return _msd_args(root)


def _nan_image(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    path = root / "imagesTr" / "case_003.nii.gz"
    image = _label_array(path).astype(np.float32)
    image[1, 1, 1] = np.nan
    _rewrite(path, image)
    return _msd_args(root, "data.intensity.preset=none")


def _missing_label(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    ctx.label(root, 2).unlink()
    return _msd_args(root)


def _empty_folder(ctx: Ctx) -> list[str]:
    root = ctx.tmp / "empty"
    (root / "imgs").mkdir(parents=True)
    (root / "masks").mkdir()
    return ["data=folder", f"data.root={root}", "logger=none"]


def _masks_missing(ctx: Ctx) -> list[str]:
    from medseg.data.examples import write_folder

    root = write_folder(ctx.tmp / "pngs", num_cases=3, mask_suffix="_mask")
    (root / "masks" / "img_001_mask.png").unlink()
    return ["data=folder", f"data.root={root}", "data.mask_suffix=_mask", "logger=none"]


def _folder_names_unreadable(ctx: Ctx) -> list[str]:
    from medseg.data.examples import write_folder

    root = write_folder(ctx.tmp / "named", num_cases=3, mask_suffix="_mask")
    (root / "dataset.json").write_text('{"labels": {"background": 0, "car": 1')  # cut short
    return ["data=folder", f"data.root={root}", "data.mask_suffix=_mask", "logger=none"]


def _evaluate_truncated_label(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _truncate_nifti(ctx.label(root, 1))
    return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={root}", "logger=none"]


def _evaluate_shape_mismatch(ctx: Ctx) -> list[str]:
    root = ctx.copy_msd()
    _rewrite(ctx.label(root, 0), np.zeros((30, 32, 8), dtype=np.uint8))
    return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={root}", "logger=none"]


def _no_metrics(ctx: Ctx, outcome: Outcome) -> None:
    assert not (ctx.run / "metrics.csv").exists()


FILE_ROWS = [
    Row("truncated-nifti", _truncated_image, r"case_002.*cannot read"),
    Row(
        "label-shape-mismatch", _label_wrong_shape, r"case_000: image shape \(32, 32, 8\) != label shape \(30, 32, 8\)"
    ),
    Row("label-out-of-range", _label_out_of_range, r"case_001: label value 7 outside"),
    Row("nan-voxels", _nan_image, r"case_003: image has 1 NaN/Inf voxel"),
    Row("missing-label-file", _missing_label, r"missing file.*case_002"),
    Row("empty-folder", _empty_folder, r"no cases found for data\.layout=folder"),
    Row("masks-missing", _masks_missing, r"have no mask .*img_001\.png"),
    Row(
        "folder-class-names-unreadable", _folder_names_unreadable, r"named/dataset\.json cannot be read as class names"
    ),
    Row(
        "root-not-a-folder",
        _args("data=msd", "data.root=/nonexistent/msd", "logger=none"),
        r"data\.root=.* not a folder",
    ),
    Row(
        "evaluate-truncated-label",
        _evaluate_truncated_label,
        r"case_001.*labelsTr/case_001\.nii\.gz",
        check=_no_metrics,
    ),
    Row(
        "evaluate-label-shape-mismatch",
        _evaluate_shape_mismatch,
        r"case_000.*shape",
        check=_no_metrics,
    ),
]


# ------------------------------------------------------------------ the rows: checkpoints
def _truncated_ckpt(ctx: Ctx) -> list[str]:
    path = ctx.tmp / "truncated.pt"
    data = ctx.best.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return _predict(path, ctx)


def _foreign_ckpt(ctx: Ctx) -> list[str]:
    import torch

    path = ctx.tmp / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    return _predict(path, ctx)


def _weights_of_another_model(ctx: Ctx) -> list[str]:
    """The stored config says UNet [4, 8] but the tensors belong to a wider network."""

    def edit(payload: dict[str, Any]) -> None:
        payload["model"] = {k: v.repeat(*([2] + [1] * (v.ndim - 1))) for k, v in payload["model"].items()}

    return _predict(_edit_checkpoint(ctx, edit), ctx)


def _fine_tune_another_model(ctx: Ctx) -> list[str]:
    return [f"ckpt={ctx.best}", *RUN, "model=attention_unet", "model.channels=[4,8]"]


def _resume_another_model(ctx: Ctx) -> list[str]:
    return [f"ckpt={ctx.best}", *RUN, "trainer.resume=true", "model.channels=[8,16]"]


def _crafted_nested(target: str, **kwargs: Any) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        fill = {k: str(v).format(marker=_marker(ctx), best=ctx.best) for k, v in kwargs.items()}
        path = _with_model_config(ctx, lambda m: m.update(dropout={"_target_": target, **fill}))
        return _predict(path, ctx)

    return setup


def _crafted_deep(ctx: Ctx) -> list[str]:
    payload = {"_target_": "pathlib.Path.touch", "self": str(_marker(ctx))}
    path = _with_model_config(ctx, lambda m: m.update(channels=[4, {"x": payload}]))
    return _predict(path, ctx)


def _crafted_top_level(ctx: Ctx) -> list[str]:
    def change(model: dict[str, Any]) -> None:
        model.clear()
        model.update({"_target_": "shutil.copyfile", "src": str(ctx.best), "dst": str(_marker(ctx))})

    return _predict(_with_model_config(ctx, change), ctx)


def _crafted_partial(ctx: Ctx) -> list[str]:
    path = _with_model_config(ctx, lambda m: m.update({"_partial_": True}))
    return _predict(path, ctx)


class _Touch:
    """Unpickling this object would create the marker file (what a crafted pickle does)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.path,))


def _crafted_pickle(ctx: Ctx) -> list[str]:
    return _predict(_edit_checkpoint(ctx, lambda p: p.update(extra=_Touch(_marker(ctx))), "pickled.pt"), ctx)


def _config_not_yaml(ctx: Ctx) -> list[str]:
    return _predict(_edit_checkpoint(ctx, lambda p: p.update(config_yaml=None)), ctx)


CKPT_ROWS = [
    Row("truncated-checkpoint", _truncated_ckpt, r"truncated\.pt cannot be read .*is the file complete"),
    Row("not-a-medseg-checkpoint", _foreign_ckpt, r"foreign\.pt is not a medseg checkpoint"),
    Row("weights-of-another-model", _weights_of_another_model, r"edited\.pt: its weights do not fit its own model"),
    Row("fine-tune-from-another-model", _fine_tune_another_model, r"best\.pt holds weights of another network .*UNet"),
    Row("resume-another-model", _resume_another_model, r"best\.pt: .* has shape .* but the model has"),
    Row("checkpoint-without-config", _config_not_yaml, r"edited\.pt holds no config"),
    Row(
        "crafted-copyfile",
        _crafted_nested("shutil.copyfile", src="{best}", dst="{marker}"),
        r"crafted\.pt asks to build objects inside its model config \(model\.dropout\._target_\)",
        check=_no_marker,
    ),
    Row(
        "crafted-open",
        _crafted_nested("builtins.open", file="{marker}", mode="w"),
        r"model\.dropout\._target_",
        check=_no_marker,
    ),
    Row(
        "crafted-touch",
        _crafted_nested("pathlib.Path.touch", self="{marker}"),
        r"model\.dropout\._target_",
        check=_no_marker,
    ),
    Row("crafted-deep-in-a-list", _crafted_deep, r"model\.channels\[1\]\.x\._target_", check=_no_marker),
    Row(
        "crafted-top-level-target",
        _crafted_top_level,
        r"names model 'shutil\.copyfile', which medseg does not build",
        check=_no_marker,
    ),
    Row("crafted-partial", _crafted_partial, r"model\._partial_"),
    Row("crafted-pickle", _crafted_pickle, r"pickled\.pt holds Python objects other than tensors", check=_no_marker),
]


# ------------------------------------------------------------------ the rows: a stored config is inert data
def _with_stored(ctx: Ctx, change: Callable[[dict[str, Any]], None], name: str = "stored.pt") -> Path:
    """best.pt with its stored config (YAML text) changed as plain data."""
    import yaml

    def edit(payload: dict[str, Any]) -> None:
        cfg = yaml.safe_load(payload["config_yaml"])
        change(cfg)
        payload["config_yaml"] = yaml.safe_dump(cfg)

    return _edit_checkpoint(ctx, edit, name)


def _set(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(cfg: dict[str, Any]) -> None:
        *parents, leaf = key.split(".")
        node = cfg
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value

    return change


def _mode_args(mode: str, path: Path, ctx: Ctx) -> list[str]:
    """The same crafted checkpoint handed to predict, evaluate, report or a resumed training."""
    if mode == "predict":
        return _predict(path, ctx)
    if mode == "evaluate":
        return ["mode=evaluate", f"ckpt={path}", "logger=none"]
    if mode == "report":
        return ["mode=report", f"ckpt={path}", "logger=none"]
    return [f"ckpt={path}", *RUN, "trainer.resume=true"]


def _stored(mode: str, key: str, value: Any) -> Callable[[Ctx], list[str]]:
    return lambda ctx: _mode_args(mode, _with_stored(ctx, _set(key, value)), ctx)


def _config_larger_than_weights(mode: str) -> Callable[[Ctx], list[str]]:
    """The stored config says channels [4, 2048]; the weights are those of [4, 8] (what a crafted file
    would do to make us allocate gigabytes): refused by comparing shapes on the meta device."""
    return lambda ctx: _mode_args(mode, _with_stored(ctx, _set("model.channels", [4, 2048])), ctx)


def _facts(mode: str, edit: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], list[str]]:
    return lambda ctx: _mode_args(mode, _edit_checkpoint(ctx, edit, "facts.pt"), ctx)


def _evaluate_without_root(ctx: Ctx) -> list[str]:
    """A checkpoint of data=msd handed to evaluate without data.root: the file does not choose the folder."""
    path = _with_stored(ctx, lambda cfg: cfg["data"].update(layout="msd", root=str(ctx.msd)))
    return ["mode=evaluate", f"ckpt={path}", "logger=none"]


def _evaluate_root_without_the_cases(ctx: Ctx) -> list[str]:
    path = _with_stored(ctx, lambda cfg: cfg["data"].update(layout="msd"))
    return ["mode=evaluate", f"ckpt={path}", "data=msd", f"data.root={ctx.msd}", "logger=none"]


def _yaml_tag(ctx: Ctx) -> str:
    """A stored config whose YAML asks the loader to call a function (PyYAML's unsafe python/object tags)."""
    return f"model: !!python/object/apply:pathlib.Path.touch [{str(_marker(ctx))!r}]\n"


def _resume_crafted_run_id(ctx: Ctx) -> list[str]:
    path = _edit_checkpoint(ctx, lambda p: p.update(tracker_ids={"wandb": "../../outside"}), "ids.pt")
    return [f"ckpt={path}", *RUN, "trainer.resume=true", "logger=wandb", "logger.wandb.mode=offline"]


def _no_wandb_folder(ctx: Ctx, outcome: Outcome) -> None:
    assert not (ctx.run / "wandb").exists() and not (ctx.tmp / "outside").exists()


INTERPOLATION = "${oc.env:USER,nouser}"
STORED_ROWS = [
    *(
        Row(
            f"{mode}-stored-interpolation",
            _stored(mode, "data.scale", INTERPOLATION),
            r"stored\.pt: its stored data\.scale='\$\{oc\.env:USER,nouser\}' is an interpolation; .* never resolved",
        )
        for mode in ("predict", "evaluate", "report", "resume")
    ),
    Row(
        "evaluate-stored-interpolation-in-a-list",
        _stored("evaluate", "data.intensity.percentiles", [0.5, INTERPOLATION]),
        r"its stored data\.intensity\.percentiles\[1\]='\$\{oc\.env:USER,nouser\}' is an interpolation",
    ),
    *(
        Row(
            f"{mode}-absurd-channels",
            _stored(mode, "model.channels", [4, 200000]),
            r"its stored model\.channels=\[4,200000\] must be an integer or a list of at most 16 integers"
            r" in \[1, 4096\]",
        )
        for mode in ("predict", "evaluate", "report", "resume")
    ),
    *(
        Row(
            f"{mode}-config-larger-than-weights",
            _config_larger_than_weights(mode),
            r"stored\.pt: its weights do not fit its own model config \(downs\.0\.1\.0\.weight has shape"
            r" \(8, 4, 3, 3\) but the model has \(2048, 4, 3, 3\)\)",
        )
        for mode in ("predict", "evaluate")
    ),
    Row(
        "predict-absurd-width",
        _stored("predict", "model.width", 1000.0),
        r"its stored model\.width=1000\.0 must be in \(0, 16\] or null",
    ),
    Row(
        "predict-absurd-in-channels",
        _facts("predict", lambda p: p["dataset"].update(in_channels=100000)),
        r"facts\.pt: its stored model\.in_channels=100000 must be an integer in \[1, 1024\]",
    ),
    Row(
        "predict-class-names-of-another-model",
        _facts("predict", lambda p: p.update(class_names=["background", "a"])),
        r"facts\.pt: its stored class_names=\['background', 'a'\] must name the 4 classes of its weights",
    ),
    Row(
        "predict-mask-values-out-of-range",
        _facts("predict", lambda p: p.update(mask_values=[0, 1, 2, 70000])),
        r"facts\.pt: its stored data\.mask_values=\[0,1,2,70000\] must be a list of at most 1024 integers"
        r" in \[0, 65535\]",
    ),
    Row(
        "evaluate-crafted-case-ids",
        _facts("evaluate", lambda p: p.update(val_case_ids=[{"_target_": "os.system"}])),
        r"facts\.pt: its stored val_case_ids=.* must be a list of case ids",
    ),
    Row(
        "predict-stored-value-of-another-type",
        _stored("predict", "data.dims", 2.0),
        r"its stored data\.dims: Value '2\.0' of type 'float' could not be converted to Integer",
    ),
    Row(
        "predict-stored-yaml-tag",
        lambda ctx: _predict(_edit_checkpoint(ctx, lambda p: p.update(config_yaml=_yaml_tag(ctx)), "tag.pt"), ctx),
        r"tag\.pt: its stored config cannot be read \(ConstructorError\)",
        check=_no_marker,
    ),
    Row(
        "predict-stored-unknown-keyword",
        _stored("predict", "model.extra_layers", 3),
        r"its stored model\.extra_layers is not a keyword of medseg\.models\.unet\.UNet",
    ),
    Row(
        "predict-stored-path-as-a-word",
        _stored("predict", "model.norm", "../../etc/passwd"),
        r"its stored model\.norm='\.\./\.\./etc/passwd' must be a plain word",
    ),
    Row(
        "evaluate-stored-layout-unknown",
        _stored("evaluate", "data.layout", "shutil.rmtree"),
        r"its stored data\.layout='shutil\.rmtree' must be one of synthetic, msd, folder, totalseg, uwmgi",
    ),
    Row(
        "evaluate-stored-structure-is-a-path",
        _stored("evaluate", "data.structures", ["../../../etc/passwd"]),
        r"its stored data\.structures=\['\.\./\.\./\.\./etc/passwd'\] must be null or a list",
    ),
    Row(
        "evaluate-huge-demo-data",
        _stored("evaluate", "data.synthetic.shape", [2000, 2000, 2000]),
        r"its stored data\.synthetic\.shape=\[2000,2000,2000\] must be a list of at most 3 integers in \[1, 1024\]",
    ),
    Row(
        "evaluate-needs-this-runs-data-root",
        _evaluate_without_root,
        r"mode=evaluate reads the checkpoint's validation cases \(data\.layout=msd\) from data\.root, which this run"
        r" does not set .* give data\.root=",
    ),
    Row(
        "evaluate-data-root-without-the-validation-cases",
        _evaluate_root_without_the_cases,
        r"data\.root=.*msd lacks 1 of the checkpoint's 1 validation cases \(synth_\d+\)",
        check=_no_metrics,
    ),
    Row(
        "resume-crafted-tracker-id",
        _resume_crafted_run_id,
        r"ids\.pt: its logger\.wandb run id '\.\./\.\./outside' is not a run id",
        check=_no_wandb_folder,
    ),
]


# ------------------------------------------------------------------ the rows: study storage
class FakePostgres:
    """A socket that speaks just enough of the PostgreSQL protocol to ask for a cleartext password,
    record it and refuse the login: it shows the real password reaches the driver (no PostgreSQL here)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(4)
        self.port = self.sock.getsockname()[1]
        self.passwords: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                try:
                    self._session(conn)
                except (OSError, struct.error):
                    pass

    def _session(self, conn: socket.socket) -> None:
        while True:
            (length,) = struct.unpack("!i", _recv(conn, 4))
            body = _recv(conn, length - 4)
            code = struct.unpack("!i", body[:4])[0]
            if code in (80877103, 80877104):  # SSLRequest / GSSENCRequest: not offered
                conn.sendall(b"N")
                continue
            break  # the startup message
        conn.sendall(b"R" + struct.pack("!ii", 8, 3))  # AuthenticationCleartextPassword
        kind = _recv(conn, 1)
        (length,) = struct.unpack("!i", _recv(conn, 4))
        if kind == b"p":
            self.passwords.append(_recv(conn, length - 4).rstrip(b"\0").decode())
        fields = b'SFATAL\0C28P01\0Mpassword authentication failed for user "alice"\0\0'
        conn.sendall(b"E" + struct.pack("!i", len(fields) + 4) + fields)

    def close(self) -> None:
        self.sock.close()


def _recv(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise OSError("closed")
        data += chunk
    return data


def _sweep(ctx: Ctx, url: str) -> list[str]:
    return ["-m", "hparams_search=optuna", f"hydra.sweeper.storage={url}", f"hydra.sweep.dir={ctx.tmp}/sweep", *RUN]


def _storage_driver_missing(ctx: Ctx) -> list[str]:
    return _sweep(ctx, f"mysql://alice:{PASSWORD}@127.0.0.1:1/optuna")


def _storage_unreachable(ctx: Ctx) -> list[str]:
    pytest.importorskip("psycopg2")
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return _sweep(ctx, f"postgresql://alice:{PASSWORD}@127.0.0.1:{port}/optuna")


def _storage_refuses_login(ctx: Ctx) -> list[str]:
    pytest.importorskip("psycopg2")
    server = FakePostgres()
    ctx.cleanup.append(server.close)
    ctx.server = server
    return _sweep(ctx, f"postgresql://alice:{PASSWORD}@127.0.0.1:{server.port}/optuna")


def _password_reached_the_server(ctx: Ctx, outcome: Outcome) -> None:
    _no_password(ctx, outcome)
    assert PASSWORD in ctx.server.passwords


STORAGE_ROWS = [
    Row(
        "storage-driver-missing",
        _storage_driver_missing,
        r"hydra\.sweeper\.storage=mysql://alice:\*\*\*@127\.0\.0\.1:1/optuna needs the database driver 'MySQLdb'"
        r".*pip install mysqlclient",
        check=_no_password,
    ),
    Row(
        "storage-unreachable",
        _storage_unreachable,
        r"postgresql://alice:\*\*\*@127\.0\.0\.1:\d+/optuna: cannot connect to the database server at 127\.0\.0\.1:\d+",
        check=_no_password,
    ),
    Row(
        "storage-login-refused",
        _storage_refuses_login,
        r"cannot connect to the database server at 127\.0\.0\.1:\d+ .*password authentication failed",
        check=_password_reached_the_server,
    ),
]

# Passwords as a database URL holds them (SQLAlchemy's rules: `/ : #` as typed, `@ %` percent-encoded; an
# `@` typed as is too): Hydra's .hydra/hydra.yaml, the console and every file must hold neither the text
# nor the decoded password.
URL_PASSWORDS = {
    "slash": "ab/cd+Ef12",
    "colon": "ab:cd+Ef12",
    "hash": "ab#cd+Ef12",
    "at-encoded": "ab%40cd+Ef12",
    "percent-encoded": "ab%25cd+Ef12",
    "at-typed": "ab@cd+Ef12",
}


def _storage_password(password: str) -> Callable[[Ctx], list[str]]:
    url = f"postgresql://user:{password}@db.host/optuna"
    return _args("hparams_search=optuna", f"hydra.sweeper.storage={url}", "mode=predict")


def _password_nowhere(password: str) -> Callable[[Ctx, Outcome], None]:
    from urllib.parse import unquote

    def check(ctx: Ctx, outcome: Outcome) -> None:
        hydra_yaml = (ctx.run / ".hydra" / "hydra.yaml").read_text()
        assert "postgresql://user:${oc.env:MEDSEG_ARGV_SECRET_" in hydra_yaml
        for text in {password, unquote(password), "cd+Ef12"}:  # the tail too: no part of a password leaks
            assert text not in outcome.out + outcome.err
            leaks = [
                p for p in [*ctx.tmp.rglob("*"), *ctx.run.rglob("*")] if p.is_file() and text.encode() in p.read_bytes()
            ]
            assert leaks == []

    return check


SECRET_ROWS = [
    Row(
        f"storage-password-{name}",
        _storage_password(password),
        r"mode=predict needs ckpt=",
        check=_password_nowhere(password),
        config_error=True,
    )
    for name, password in URL_PASSWORDS.items()
]


# ------------------------------------------------------------------ the rows: DICOM input, export folders
def _dicom(change: dict[str, Any], *extra: str) -> Callable[[Ctx], list[str]]:
    """predict.input = a DICOM series (tests/dicom_series.py) written with `change`."""

    def setup(ctx: Ctx) -> list[str]:
        from tests.dicom_series import write_series

        volume = np.round(np.random.default_rng(0).random((32, 32, 6)) * 100).astype(np.float32)
        folder = ctx.tmp / "dicom"
        if change.get("mixed"):
            uid = "1.2.826.0.1.3680043.8.498.77"
            write_series(folder / "a", volume, series_uid=uid)
            write_series(folder / "b", volume[:16], series_uid=uid, depths=[100.0 + k for k in range(6)])
        else:
            write_series(folder, volume, **change)
        return [*_predict(ctx.best, ctx)[:-2], f"predict.input={folder}", "logger=none", *extra]

    return setup


def _dicom_labelled(problem: str) -> Callable[[Ctx], list[str]]:
    """evaluate.input = a folder of DICOM case folders (tests/dicom_series.py) with `problem` in case_0."""

    def setup(ctx: Ctx) -> list[str]:
        from medseg.dicom.seg import write_seg
        from tests.dicom_series import expected_affine, write_series

        volume = np.round(np.random.default_rng(0).random((32, 32, 6)) * 100).astype(np.float32)
        label = (volume > 50).astype(np.int16)
        case = ctx.tmp / "dicom" / "case_0"
        files = write_series(case / "series", volume)
        if problem == "two-series":
            write_series(case / "other", volume, series_number=2)
        grid = label[:, :, :5] if problem == "label-shape" else label
        origin = (-10.0, 20.0, 35.0 if problem == "label-affine" else 30.0)  # write_series' default: z 30
        if problem != "no-label":
            nib.save(nib.Nifti1Image(grid, expected_affine((0.8, 0.9, 2.5), origin=origin)), case / "label.nii.gz")
        if problem in ("two-labels", "seg-of-another-series", "seg-off-grid"):
            import pydicom

            other = files
            if problem != "two-labels":  # another series, or the same series UID 1 mm off its slices
                uid = str(pydicom.dcmread(files[0]).SeriesInstanceUID) if problem == "seg-off-grid" else None
                other = write_series(ctx.tmp / "elsewhere", volume, origin=(-10.0, 20.0, 31.0), series_uid=uid)
            sources = sorted((pydicom.dcmread(f) for f in other), key=lambda ds: float(ds.ImagePositionPatient[2]))
            write_seg(case / "seg.dcm", label, sources, ["background", "disc"], "test")
            if problem != "two-labels":
                (case / "label.nii.gz").unlink()
        return ["mode=evaluate", f"ckpt={ctx.best}", f"evaluate.input={case.parent}", "logger=none"]

    return setup


# ------------------------------------------------------------------ the rows: each data layout owns its keys
LAYOUT_ROWS = [
    Row(
        "data-key-of-another-layout",
        _args("data=msd", "data.mask_suffix=_mask"),
        r"data\.mask_suffix is a key of data=folder, not of data=msd; leave it out, or choose data=folder$",
    ),
    Row("data-base-is-no-layout", _args("data=base"), r"data=base is not a layout .*choose data=msd\|folder"),
    Row(
        "data-layout-of-another-schema",
        _args("data.layout=folder"),
        r"data\.layout=folder does not match data=synthetic",
    ),
]
for _row in LAYOUT_ROWS:
    _row.config_error = True


# ------------------------------------------------------------------ the rows: the case store's folder
def _store_dir_is_a_file(mode: str) -> Callable[[Ctx], list[str]]:
    def setup(ctx: Ctx) -> list[str]:
        path = ctx.tmp / "store-file"
        path.write_text("not a folder")
        return [f"mode={mode}", *RUN, f"data.store.dir={path}"]

    return setup


STORE_ROWS = [
    Row(
        f"{mode}-store-dir-is-a-file",
        _store_dir_is_a_file(mode),
        r"case store folder .*store-file is not a folder \(a file is in the way\); set data\.store\.dir to a folder",
    )
    for mode in ("train", "preprocess")
]

# Planning (issue 21): budgets no plan fits, and configurations the data do not have
PLAN_ROWS = [
    Row(
        "plan-budget-too-small",
        _args("mode=plan", "plan.memory_gb=0.1"),
        r"plan\.memory_gb=0\.1: a plan needs a memory budget of at least 0\.25 GB",
    ),
    Row(
        "plan-hardware-budget-too-small",
        _args("plan=auto", "hardware.memory_gb=0.2", "trainer.max_epochs=1"),
        r"hardware\.memory_gb=0\.2: a plan needs a memory budget of at least 0\.25 GB",
    ),
    Row(
        "plan-budget-negative",
        _args("plan=auto", "plan.memory_gb=-8"),
        r"plan\.memory_gb=-8",
        config_error=True,
    ),
    Row(
        "plan-configuration-unknown",
        _args("plan=auto", "plan.configuration=3d_lowres", "trainer.max_epochs=1"),
        r"plan\.configuration='3d_lowres' is not planned for these data; choose one of 3d_fullres, 2d",
    ),
]


# ------------------------------------------------------------------ the rows: cross-validation
def _fold_folder(ctx: Ctx, with_checkpoint: bool) -> Path:
    """A fold multirun whose job 0 failed (no checkpoint) or ended without out-of-fold predictions."""
    job = ctx.tmp / "folds" / "0"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- data.fold=0\n")
    if with_checkpoint:
        (job / "checkpoints").mkdir()
        shutil.copy(ctx.best, job / "checkpoints" / "best.pt")
    return job.parent


def _crossval_of(with_checkpoint: bool) -> Callable[[Ctx], list[str]]:
    return lambda ctx: ["mode=crossval", f"crossval.runs=[{_fold_folder(ctx, with_checkpoint)}]", "logger=none"]


def _missing_fold(ctx: Ctx) -> list[str]:
    from tests.crossval_runs import predicted, truth_volume, write_fold_runs

    truths = {f"case_{i}": truth_volume(i) for i in range(4)}
    preds = {k: predicted(t, 0, islands=False) for k, t in truths.items()}
    runs = write_fold_runs(ctx.tmp / "folds", "unet", preds, truths, num_folds=2, skip_folds=(1,))
    return ["mode=crossval", f"crossval.runs=[{runs}]", "logger=none"]


def _crossval_json(ctx: Ctx, text: str) -> Path:
    folder = ctx.tmp / "cv"
    folder.mkdir()
    (folder / "crossval.json").write_text(text)
    return folder


def _damaged_crossval(ctx: Ctx) -> list[str]:
    return _predict(_crossval_json(ctx, '{"chosen": {"name": "x"'), ctx)


def _evaluate_crossval(ctx: Ctx) -> list[str]:
    import json

    choice = {"chosen": {"name": "a", "configurations": [{"name": "a", "checkpoints": [str(ctx.best)]}]}}
    folder = _crossval_json(ctx, json.dumps({**choice, "postprocessing": {}}))
    return ["mode=evaluate", f"ckpt={folder}", "logger=none"]


CROSSVAL_ROWS = [
    Row("crossval-no-runs", _args("mode=crossval", "logger=none"), r"mode=crossval needs crossval\.runs=\["),
    Row(
        "crossval-runs-not-a-folder",
        _args("mode=crossval", "crossval.runs=[/nonexistent/folds]", "logger=none"),
        r"crossval\.runs: /nonexistent/folds is not a folder",
    ),
    Row("crossval-failed-fold", _crossval_of(False), r"fold run \S+/folds/0 failed \(no checkpoint; see \S+run\.log\)"),
    Row(
        "crossval-fold-without-predictions",
        _crossval_of(True),
        r"fold run \S+/folds/0 has no out-of-fold predictions \(oof/index\.json\)",
    ),
    Row("crossval-missing-fold", _missing_fold, r"configuration \S+ lacks fold\(s\) \[1\] of data\.num_folds=2"),
    Row(
        "crossval-max-ensemble",
        _args("crossval.max_ensemble=1"),
        r"crossval\.max_ensemble=1 must be",
        config_error=True,
    ),
    Row("predict-crossval-damaged", _damaged_crossval, r"crossval\.json cannot be read as the result of mode=crossval"),
    Row("evaluate-crossval-without-input", _evaluate_crossval, r"scores a crossval ensemble.*give evaluate\.input="),
]


def _tampered_export(ctx: Ctx) -> list[str]:
    folder = ctx.tmp / "export"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "run.py"), "mode=export", f"ckpt={ctx.best}", f"export.output_dir={folder}"]
        + [f"hydra.run.dir={ctx.tmp}/export_run", "logger=none"],
        env={**os.environ, "MEDSEG_CACHE": str(ctx.tmp / "cache")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    model = folder / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-100] ^= 0x01
    model.write_bytes(bytes(data))
    return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]


def _export_with_spacing(spacing: Any) -> Callable[[Ctx], list[str]]:
    """An export folder whose manifest is well-formed but for its spacing (the manifest is checked before
    any model file is opened, so none is needed)."""

    def setup(ctx: Ctx) -> list[str]:
        import json

        folder = ctx.tmp / "export"
        folder.mkdir()
        manifest = {
            "format": "medseg-export",
            "format_version": 1,
            "models": [{"file": "model.onnx", "sha256": "0" * 64}],
            "files": [],
            "input": {"name": "image", "channels": 1},
            "classes": {"count": 2, "names": ["background", "fg"]},
            "dims": 3,
            "slice_axis": 2,
            "context_slices": 0,
            "pad_divisible": 16,
            "patch_size": None,
            "image_size": None,
            "spacing": spacing,
            "scale": 1.0,
            "intensity": {"preset": "zscore"},
            "modalities": ["CT"],
        }
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]

    return setup


def _export_crossval(ctx: Ctx, crossval: str) -> list[str]:
    folder = _crossval_json(ctx, crossval)
    return ["mode=export", f"ckpt={folder}", f"export.output_dir={ctx.tmp}/export", "logger=none"]


def _crossval_along_two_axes(ctx: Ctx) -> list[str]:
    """crossval.json choosing two configurations whose checkpoints predict along different slice axes."""
    import json

    import yaml

    def axis_0(payload: dict[str, Any]) -> None:
        cfg = yaml.safe_load(payload["config_yaml"])
        cfg["data"]["slice_axis"] = 0
        payload["config_yaml"] = yaml.safe_dump(cfg)

    other = _edit_checkpoint(ctx, axis_0, "axis0.pt")
    configs = [{"name": "a", "checkpoints": [str(ctx.best)]}, {"name": "b", "checkpoints": [str(other)]}]
    return _export_crossval(
        ctx, json.dumps({"chosen": {"name": "a + b", "configurations": configs}, "postprocessing": {}})
    )


def _no_export_written(ctx: Ctx, outcome: Outcome) -> None:
    assert not (ctx.tmp / "export").exists() or not list((ctx.tmp / "export").iterdir())


def _ensemble_manifest(change: Callable[[dict[str, Any]], None]) -> Callable[[Ctx], list[str]]:
    """An export folder of a two-configuration ensemble whose manifest is well-formed but for `change` (the
    manifest is checked before any model file is opened, so none is needed)."""

    def setup(ctx: Ctx) -> list[str]:
        import json

        folder = ctx.tmp / "export"
        folder.mkdir()
        keys = {"input": {"name": "image", "channels": 1}, "dims": 2, "slice_axis": 2, "context_slices": 0}
        keys |= {"pad_divisible": 16, "patch_size": None, "image_size": None, "spacing": None, "scale": 1.0}
        keys |= {"intensity": {"preset": "minmax"}, "files": []}
        models = [{"file": f"model_{i}_0.onnx", "sha256": "0" * 64} for i in range(2)]
        manifest = {
            "format": "medseg-export",
            "format_version": 2,
            "models": models,
            "classes": {"count": 2, "names": ["background", "fg"]},
            "modalities": ["CT"],
            "postprocessing": [{"class": "fg", "operation": "largest_component"}],
            **keys,
            "configurations": [{"name": n, **keys, "models": [m]} for n, m in zip("ab", models)],
        }
        change(manifest)
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return ["mode=predict", f"ckpt={folder}", f"predict.input={ctx.image}", "logger=none"]

    return setup


def _set_postprocessing(manifest: dict[str, Any]) -> None:
    manifest["postprocessing"] = [{"class": "fg", "operation": "largest_hole"}]


def _unlisted_member(manifest: dict[str, Any]) -> None:
    manifest["configurations"][1]["models"] = [{"file": "model_9_0.onnx", "sha256": "0" * 64}]


DEPLOY_ROWS = [
    Row("dicom-gantry-tilt", _dicom({"tilt": 0.5}), r"dicom \(series .*\): gantry tilt: slices are not stacked"),
    Row(
        "dicom-uneven-spacing",
        _dicom({"depths": [0.0, 2.5, 5.0, 8.5, 10.0, 12.5]}),
        r"dicom \(series .*\): uneven spacing: slice steps from 1\.5 to 3\.5 mm",
    ),
    Row(
        "dicom-missing-slice",
        _dicom({"depths": [0.0, 2.5, 5.0, 10.0, 12.5, 15.0]}),
        r"dicom \(series .*\): a slice is missing between positions 35\.00 and 40\.00 mm \(spacing 2\.5 mm\)",
    ),
    Row("dicom-mixed-series", _dicom({"mixed": True}), r"dicom \(series .*\): mixed series: .*one series per folder"),
    Row(
        "dicom-modality",
        _dicom({"modality": "MR"}, "export.modalities=[CT]"),
        r"modality MR, but the model was trained on CT images",
    ),
    Row(
        "dicom-seg-for-nifti",
        lambda ctx: [*_predict(ctx.best, ctx), "predict.output_format=dicom_seg"],
        r"predict\.output_format=dicom_seg needs DICOM input, but .*scan\.nii\.gz is not DICOM",
    ),
    Row(
        "dicom-evaluate-no-label",
        _dicom_labelled("no-label"),
        r"dicom/case_0/series holds DICOM images but no label; put label\.nii\.gz \(on the series. grid\) or a DICOM",
    ),
    Row(
        "dicom-evaluate-two-series",
        _dicom_labelled("two-series"),
        r"case folder \S+/dicom/case_0 holds 2 DICOM image series beside its label label\.nii\.gz; put exactly one",
    ),
    Row(
        "dicom-evaluate-two-labels",
        _dicom_labelled("two-labels"),
        r"dicom/case_0 holds 2 labels \(label\.nii\.gz, seg\.dcm\); keep one label per case folder",
    ),
    Row(
        "dicom-evaluate-seg-of-another-series",
        _dicom_labelled("seg-of-another-series"),
        r"case_0: \S+seg\.dcm references series [0-9.]+, not the case's series [0-9.]+; give the SEG made on this",
    ),
    Row(
        "dicom-evaluate-seg-off-grid",
        _dicom_labelled("seg-off-grid"),
        r"case_0: frame 1 of \S+seg\.dcm lies on no slice of the series \(position .*\); give a SEG on the series",
    ),
    Row(
        "dicom-evaluate-label-shape",
        _dicom_labelled("label-shape"),
        r"case_0: label \S+label\.nii\.gz has shape \(32, 32, 5\) but the series \(32, 32, 6\) .*series' grid",
    ),
    Row(
        "dicom-evaluate-label-affine",
        _dicom_labelled("label-affine"),
        r"case_0: label \S+label\.nii\.gz has another affine \(origin, direction or spacing\) than the series",
    ),
    Row(
        "export-tampered-model",
        _tampered_export,
        r"export/model\.onnx does not match the SHA-256 in .*manifest\.json; the file was changed",
    ),
    Row(
        "export-manifest-spacing",
        _export_with_spacing([1.0, 0.0, 1.5]),
        r"export/manifest\.json: spacing must be three numbers > 0 \(mm\) or null; export the model again",
    ),
    Row(
        "export-crossval-damaged",
        lambda ctx: _export_crossval(ctx, '{"chosen": {"name": "x"'),
        r"cv/crossval\.json cannot be read as the result of mode=crossval; rerun crossval",
        check=_no_export_written,
    ),
    Row(
        "export-crossval-slice-axes",
        _crossval_along_two_axes,
        r"cv/crossval\.json: the chosen configurations predict along different slice axes",
        check=_no_export_written,
    ),
    Row(
        "export-manifest-postprocessing",
        _ensemble_manifest(_set_postprocessing),
        r"export/manifest\.json: postprocessing .*largest_hole.* must name a foreground class and one of"
        r" largest_component, largest_foreground; export the model again",
    ),
    Row(
        "export-manifest-unlisted-member",
        _ensemble_manifest(_unlisted_member),
        r"export/manifest\.json: configurations\[1\] \(b\) names a file that the top-level models/files do not list",
    ),
]

ROWS = (
    CONFIG_ROWS
    + FILE_ROWS
    + CKPT_ROWS
    + STORED_ROWS
    + STORAGE_ROWS
    + SECRET_ROWS
    + LAYOUT_ROWS
    + STORE_ROWS
    + PLAN_ROWS
    + CROSSVAL_ROWS
    + DEPLOY_ROWS
)


def test_the_suite_has_enough_rows() -> None:
    assert len(ROWS) >= 118
    assert len({r.id for r in ROWS}) == len(ROWS)


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_bad_input(row: Row, entry, finished, cache_dir: Path, tmp_path: Path) -> None:
    run, msd, image = finished
    ctx = Ctx(tmp=tmp_path, run=run, msd=msd, image=image)
    before = snapshot(run)
    try:
        args = row.setup(ctx)
        outcome = call_entry(entry, _in_run(run, args), cache_dir)
    finally:
        for close in ctx.cleanup:
            close()
    assert_one_line_error(outcome, row.expect)
    if row.config_error:
        assert "├──" not in outcome.out, "the config tree was printed before the config error"
    if row.check is not None:
        row.check(ctx, outcome)
    assert snapshot(run) == before, "the finished run's checkpoints or history changed"


def _in_run(run: Path, args: list[str]) -> list[str]:
    """Options (-m) first, then the finished run as hydra.run.dir, then the row's overrides."""
    options = [a for a in args if a.startswith("-")]
    return [*options, f"hydra.run.dir={run}", *(a for a in args if not a.startswith("-"))]


def assert_one_line_error(outcome: Outcome, expect: str) -> None:
    import re

    text = outcome.out + outcome.err
    assert "Traceback" not in text, text[-3000:]
    assert outcome.code == 2, text[-3000:]
    lines = [line for line in outcome.err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("medseg: error: ")]
    assert len(errors) == 1, outcome.err[-3000:]
    assert re.search(expect, errors[0]), errors[0]


@pytest.mark.slow
def test_rows_agree_with_a_real_process(finished, cache_dir: Path, tmp_path: Path) -> None:
    """The same exit code and line from `python run.py` as a process, for a config, a file and a checkpoint row."""
    run, msd, image = finished
    ctx = Ctx(tmp=tmp_path, run=run, msd=msd, image=image)
    before = snapshot(run)
    env = {**os.environ, "MEDSEG_CACHE": str(cache_dir), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    for row_id in ("batch-size-negative", "crafted-copyfile"):
        row = next(r for r in ROWS if r.id == row_id)
        args = row.setup(ctx)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *_in_run(run, args)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert_one_line_error(Outcome(proc.returncode, proc.stdout, proc.stderr), row.expect)
        if row.check is not None:
            row.check(ctx, Outcome(proc.returncode, proc.stdout, proc.stderr))
    assert snapshot(run) == before


def test_a_run_that_fails_before_training_leaves_no_folder_and_deletes_nothing_of_the_users(
    entry, cache_dir: Path, tmp_path: Path
) -> None:
    """A misspelt data.root: the run folder Hydra made for it is gone; a folder that already held a user's
    file keeps it (and Hydra's files of this run stay beside it)."""
    run = [o for o in RUN if not o.startswith("data.synthetic.")]  # keys of data=synthetic only
    bad = ["data=msd", f"data.root={tmp_path}/no_such_dataset", *run]
    fresh = tmp_path / "outputs" / "train" / "2026-01-01_00-00-00"
    outcome = call_entry(entry, [f"hydra.run.dir={fresh}", *bad], cache_dir)
    assert_one_line_error(outcome, r"no_such_dataset")
    assert not fresh.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    os.utime(mine / "notes.txt", (1e9, 1e9))  # written long before this run
    outcome = call_entry(entry, [f"hydra.run.dir={mine}", *bad], cache_dir)
    assert_one_line_error(outcome, r"no_such_dataset")
    assert (mine / "notes.txt").read_text() == "my notes" and (mine / ".hydra" / "config.yaml").is_file()
