"""Bad-input rows: checkpoints, and a stored config that must stay inert data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.bad_inputs_harness import (
    RUN,
    Ctx,
    Outcome,
    Row,
    _edit_checkpoint,
    _marker,
    _no_marker,
    _no_metrics,
    _predict,
    _with_model_config,
)


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
