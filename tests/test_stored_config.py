"""A checkpoint's stored config is inert data (medseg/config/stored.py, medseg/models/stored_model.py):
only allow-listed keys are taken, range-checked, never resolved; no path comes from it; the network is
sized by the file's weights; evaluate, report and a resumed run read and write where the run says.

The one-line refusals themselves are rows of tests/bad_input_rows_checkpoints.py (run by tests/test_bad_inputs.py).
"""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import CONF, tiny_for


def _compose_in(cache: Path, out: Path, *overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medseg.config import register_configs

    register_configs()
    base = [*tiny_for(overrides), "model.channels=[4,8]", "trainer.limit_train_batches=2", f"paths.cache_dir={cache}"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=[*base, f"paths.output_dir={out}", *overrides])


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A run trained one epoch on the demo data with logger=csv (shared by this module's tests)."""
    from medseg.tasks.train import run_train

    base = tmp_path_factory.mktemp("trained")
    run_train(_compose_in(base / "cache", base / "run", "logger=csv", "trainer.log_images_every_n_epochs=0"))
    return base / "run"


def _restamp(src: Path, dst: Path, change) -> Path:
    """A copy of a checkpoint whose stored config (as plain YAML data) and payload `change` edits."""
    import yaml

    payload = torch.load(src, weights_only=True)
    cfg = yaml.safe_load(payload["config_yaml"])
    change(cfg, payload)
    payload["config_yaml"] = yaml.safe_dump(cfg)
    torch.save(payload, dst)
    return dst


def test_restored_config_holds_only_allow_listed_keys_and_no_path(trained: Path, tmp_path: Path) -> None:
    from medseg.config.stored import STORED_KEYS
    from medseg.tasks.restore import restore_model

    def change(cfg, payload):
        cfg["paths"] = {"cache_dir": "/very/private/cache", "output_dir": "/very/private/out"}
        cfg["data"].update(root="/very/private/data", split_file="/very/private/split.json", images_dir="../x")
        cfg["data"]["store"]["dir"] = "${oc.env:HOME}/store"
        cfg["hydra"] = {"run": {"dir": "/very/private/run"}}

    path = _restamp(trained / "checkpoints" / "best.pt", tmp_path / "best.pt", change)
    restored = restore_model(str(path), torch.device("cpu"))
    cfg = restored.cfg
    assert set(cfg) == {"seed", "trainer", "data", "model"} and set(cfg.trainer) == {"precision"}
    assert cfg.data.root is None and cfg.data.store.dir is None and cfg.data.split_file is None
    assert "images_dir" not in cfg.data  # the demo data's schema has no such key; the file's value is not taken
    text = OmegaConf.to_yaml(cfg)
    assert "/very/private" not in text and "${" not in text
    stored = OmegaConf.create(torch.load(trained / "checkpoints" / "best.pt", weights_only=True)["config_yaml"])
    for row in STORED_KEYS:  # every allow-listed value is the stored one
        assert OmegaConf.select(cfg, row.key) == OmegaConf.select(stored, row.key), row.key
    assert len(restored.ckpt["val_case_ids"]) == restored.ckpt["dataset"]["val_cases"] > 0


def test_evaluate_writes_demo_data_and_store_where_this_run_says(trained: Path, tmp_path: Path) -> None:
    """Stored paths.cache_dir and data.store.dir (one an interpolation) are never used: evaluate builds
    the demo data and the case store under this run's paths.cache_dir and scores as the genuine file does."""
    from medseg.tasks.evaluate import run_evaluate

    foreign = tmp_path / "foreign"

    def change(cfg, payload):
        cfg["paths"]["cache_dir"] = str(foreign / "cache")
        cfg["data"]["store"]["dir"] = str(foreign) + "/${oc.env:USER,nouser}-store"

    path = _restamp(trained / "checkpoints" / "best.pt", tmp_path / "crafted.pt", change)
    genuine = run_evaluate(_compose_in(tmp_path / "own", tmp_path / "eval1", f"ckpt={trained}/checkpoints/best.pt"))
    crafted = run_evaluate(_compose_in(tmp_path / "own", tmp_path / "eval2", f"ckpt={path}"))
    assert not foreign.exists()
    assert crafted == pytest.approx(genuine)
    assert list((tmp_path / "own" / "synthetic").iterdir()) and list((tmp_path / "own" / "store").iterdir())


def test_evaluate_reads_the_checkpoints_validation_cases_from_this_runs_data_root(tmp_path: Path) -> None:
    """The layout and validation case ids come from the checkpoint, the folder from this run's data.root:
    after the dataset moved, evaluate scores the same cases with the same numbers."""
    import shutil

    from medseg.data.examples import write_msd
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.next_commands import data_folder
    from medseg.tasks.train import run_train

    first = write_msd(tmp_path / "msd", num_cases=6, num_classes=3)
    data = ("data=msd", "data.val_percent=34", "trainer.log_images_every_n_epochs=0", "report.enabled=false")
    train_cfg = _compose_in(tmp_path / "cache", tmp_path / "run", *data, f"data.root={first}")
    run_train(train_cfg)
    assert data_folder(train_cfg.data) == ["data=msd", f"data.root={first.resolve()}"]  # in the evaluate command
    ckpt = tmp_path / "run" / "checkpoints" / "best.pt"
    val_ids = torch.load(ckpt, weights_only=True)["val_case_ids"]
    before = run_evaluate(_compose_in(tmp_path / "cache", tmp_path / "e1", *data, f"ckpt={ckpt}", f"data.root={first}"))
    moved = shutil.move(str(first), tmp_path / "moved")
    after = run_evaluate(
        _compose_in(tmp_path / "cache", tmp_path / "e2", "mode=evaluate", f"ckpt={ckpt}", f"data.root={moved}")
    )
    assert after == pytest.approx(before)
    scored = json.loads((tmp_path / "e2" / "summary.json").read_text())
    assert scored["cases"] == len(val_ids) == 2
    cases = {row["case"] for row in csv.DictReader(io.StringIO((tmp_path / "e2" / "metrics.csv").read_text()))}
    assert cases == set(val_ids)


# What a checkpoint written before each data layout had its own keys holds, whatever its layout.
OLD_FLAT_KEYS = {
    "images_dir": "imgs",
    "masks_dir": "masks",
    "mask_suffix": "",
    "colour_map": None,
    "mask_values": None,
    "structures": None,
    "synthetic": {"num_cases": 12, "shape": [64, 64, 16], "num_classes": 4, "seed": 0},
}
OWNED = {"folder": {"mask_values": [0, 85, 170, 255]}, "totalseg": {"structures": ["liver", "spleen", "aorta"]}}


@pytest.mark.parametrize("layout", ["msd", "folder", "totalseg", "uwmgi", "synthetic"])
def test_a_checkpoint_from_before_each_layout_had_its_own_keys_restores(trained: Path, tmp_path, layout) -> None:
    """Its other layouts' keys are left out; its own (mask values, structure names) are taken as stored."""
    from medseg.config.schema import LAYOUT_SCHEMAS, layout_keys
    from medseg.tasks.restore import restore_model

    def change(cfg, payload):
        cfg["data"] = {**OLD_FLAT_KEYS, **cfg["data"], "layout": layout, **OWNED.get(layout, {})}

    path = _restamp(trained / "checkpoints" / "best.pt", tmp_path / "old.pt", change)
    data = restore_model(str(path), torch.device("cpu")).cfg.data
    assert OmegaConf.get_type(data) is LAYOUT_SCHEMAS[layout] and set(data) == layout_keys(layout)
    for key, value in OWNED.get(layout, {}).items():
        assert data[key] == value
    if layout == "synthetic":  # the demo data's own settings, as trained (not the flat defaults)
        assert data.synthetic.num_cases == 6 and data.synthetic.shape == [32, 32, 8]


def test_restoring_allocates_only_what_the_file_holds(trained: Path, tmp_path: Path) -> None:
    """A stored config asking for channels [4, 4096] with the weights of [4, 8]: refused after a build on the
    meta device, before gigabytes are allocated (measured as the peak resident memory of a fresh process)."""
    path = _restamp(
        trained / "checkpoints" / "best.pt", tmp_path / "big.pt", lambda cfg, _: cfg["model"].update(channels=[4, 4096])
    )
    script = f"""
import torch
from medseg.tasks.restore import restore_model
def peak():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
restore_model({str(trained / "checkpoints" / "best.pt")!r}, torch.device("cpu"))  # imports and a real restore
before = peak()
try:
    restore_model({str(path)!r}, torch.device("cpu"))
except Exception as exc:
    print("refused:", exc)
print("grew", peak() - before)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "refused: checkpoint" in proc.stdout and "its weights do not fit its own model config" in proc.stdout
    grew = int(proc.stdout.split("grew")[-1])
    assert grew < 100 * 2**20, f"restoring the crafted file raised the peak memory by {grew / 2**20:.0f} MiB"


@pytest.mark.slow
def test_every_shipped_model_restores_through_the_meta_device_with_its_own_outputs(compose) -> None:
    import yaml

    from medseg.models.factory import build_model
    from medseg.models.stored_model import build_stored_model, stored_model_config

    one_per_class = {OmegaConf.load(p)["_target_"]: p for p in sorted((CONF / "model").glob("*.yaml"), reverse=True)}
    for path in sorted(one_per_class.values()):  # segformer_b0 stands for b1..b5 (the same class, wider)
        dims = 3 if path.stem in ("dynunet", "segresnet") else 2  # 3D where it is cheap
        side = 64 if path.stem == "swinunetr" else 32 if dims == 2 else 16  # the smallest each network takes
        cfg = compose(f"model={path.stem}", f"data.image_size=[{side},{side}]", f"data.dims={dims}")
        model = build_model(cfg.model, 1, 3, dims).eval()
        stored = yaml.safe_load(OmegaConf.to_yaml(OmegaConf.to_container(cfg.model, resolve=True)))
        restored = build_stored_model(stored_model_config(stored, "x.pt"), 1, 3, dims, model.state_dict(), "x.pt")
        restored.eval()
        assert not any(t.is_meta for t in (*restored.parameters(), *restored.buffers())), path.stem
        x = torch.rand(1, 1, *[side] * dims)
        with torch.no_grad():
            assert torch.equal(restored(x), model(x)), path.stem


def test_the_allow_list_is_one_table_every_number_has_a_range_and_every_key_a_default() -> None:
    from medseg.config.schema import LAYOUT_SCHEMAS, MedsegConfig
    from medseg.config.stored import STORED_KEYS, ranged
    from medseg.config.validate import RANGES

    schemas = [OmegaConf.structured(MedsegConfig)]  # data keys: in the schema of a layout that has them
    schemas += [OmegaConf.create({"data": OmegaConf.structured(layout)}) for layout in LAYOUT_SCHEMAS.values()]
    ranges = {rule.key for rule in RANGES} | {"data.fold", "data.colour_map"}  # the last two: relations
    for row in STORED_KEYS:
        assert any(OmegaConf.select(s, row.key, default="absent") != "absent" for s in schemas), row.key
        assert row.check is not ranged or row.key in ranges, f"{row.key} has no range in medseg/config/validate.py"
        for part in ("root", "dir", "file", "path", "_dir", "suffix"):
            assert not row.key.rsplit(".", 1)[-1].endswith(part), f"{row.key} names a place"
    for path in sorted((CONF / "model").glob("*.yaml")):  # every size of a shipped network is range-checked
        for key, value in OmegaConf.to_container(OmegaConf.load(path), resolve=False).items():
            numbers = value if isinstance(value, list) else [value]
            if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in numbers):
                assert f"model.{key}" in ranges, f"{path.name}: model.{key} has no range"


def test_a_resumed_csv_table_comes_from_the_checkpoint_history_not_a_file_it_names(trained: Path, tmp_path) -> None:
    from medseg.tasks.train import run_train

    private = tmp_path / "private.csv"
    private.write_text("epoch,secret\n1,PRIVATE-ROW\n")

    def change(cfg, payload):
        payload["tracker_ids"] = {"csv": str(private)}

    path = _restamp(trained / "checkpoints" / "last.pt", tmp_path / "last.pt", change)
    out = tmp_path / "resumed"
    resume = ("logger=csv", "trainer.log_images_every_n_epochs=0", "trainer.max_epochs=2", "trainer.resume=true")
    run_train(_compose_in(tmp_path / "cache", out, *resume, f"ckpt={path}"))
    table = (out / "metrics.csv").read_text()
    assert "PRIVATE-ROW" not in table and "secret" not in table
    first = (trained / "metrics.csv").read_text().splitlines()
    lines = table.splitlines()
    assert lines[1] == first[1]  # epoch 1 as the first run wrote it, from the checkpoint's history
    assert [int(float(r["epoch"])) for r in csv.DictReader(io.StringIO(table))] == [1, 2]


def test_a_report_of_a_checkpoint_shows_only_what_medseg_takes_from_its_config(trained: Path, tmp_path) -> None:
    from medseg.report import write_report

    lone = tmp_path / "lone"
    lone.mkdir()

    def change(cfg, payload):
        cfg["paths"]["cache_dir"] = "/very/private/cache"
        cfg["data"]["root"] = "/very/private/data"

    path = _restamp(trained / "checkpoints" / "best.pt", lone / "best.pt", change)
    page = write_report(lone, ckpt=path).read_text()
    assert "/very/private" not in page
    assert "medseg.models.unet.UNet" in page  # the model config it takes is shown
