"""Bad-input rows: config values, a layout's keys, the case store's folder, planning."""

from __future__ import annotations

from collections.abc import Callable

from tests.bad_inputs_harness import (
    RUN,
    Ctx,
    Row,
    _args,
    _predict,
)

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
