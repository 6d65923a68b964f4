"""The first hour of a user: a short header instead of the config tree, medseg's own --help, quiet wandb,
a folder per mode, the per-class line only when it says something, progress for lr_find and benchmark, and
the next commands after training that run as printed."""

from __future__ import annotations

import logging
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from tests.conftest import ROOT, TINY


def _run(args: list[str], cwd: Path, cache: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDSEG_CACHE": str(cache), "WANDB_MODE": "offline"}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _python_run(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "run.py"), *args]


# ---------------------------------------------------------------------- --help


def test_help_is_medseg_own_with_modes_examples_groups_and_outputs(tmp_path):
    proc = _run(_python_run("--help"), tmp_path, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "powered by Hydra" not in text
    assert text.startswith("medseg:")
    # every mode, with what it needs
    for mode in ("train", "evaluate", "predict", "preprocess", "report", "lr_find", "benchmark"):
        assert re.search(rf"^  {mode}\s", text, re.M), mode
    assert re.search(r"predict\s+needs ckpt=\.\.\. and predict\.input=", text)
    assert "report.path=" in text
    # five example commands
    examples = text.split("== Examples ==")[1].split("==")[0]
    assert len(re.findall(r"^  python run\.py", examples, re.M)) == 5
    # the config groups with their options, filled in by Hydra from conf/
    assert re.search(r"^model: .*\bunetr\b", text, re.M)
    assert re.search(r"^hardware: .*\b8gb\b", text, re.M)
    assert "Chosen now: model=unet data=synthetic" in text
    # where outputs go, and tab completion
    assert "outputs/<mode>/<date>_<time>/" in text and "outputs/<task_name>/" in text
    assert 'eval "$(python run.py -sc install=bash)"' in text


def test_readme_mentions_tab_completion_and_where_each_mode_writes():
    readme = (ROOT / "README.md").read_text()
    assert 'eval "$(python run.py -sc install=bash)"' in readme
    for folder in ("outputs/train/", "outputs/predict/", "outputs/evaluate/", "outputs/lr_find/", "outputs/benchmark/"):
        assert folder in readme, folder


# ---------------------------------------------------------------------- header and config tree


def test_header_names_mode_groups_overrides_and_folder():
    from medseg.config.header import run_header

    text = run_header(
        "train",
        {"model": "unet", "hydra/help": "medseg", "experiment": None, "data": "msd", "logger": ["wandb", "csv"]},
        ["trainer.max_epochs=2"],
        "/elsewhere/run",
        "/elsewhere/run/config_tree.txt",
    )
    assert text.splitlines()[0] == "medseg mode=train"
    assert "groups:     model=unet data=msd logger=[wandb,csv]" in text
    assert "hydra" not in text and "experiment" not in text
    assert "overrides:  trainer.max_epochs=2" in text
    assert "run folder: /elsewhere/run" in text
    assert "print_config=true prints it" in text


@pytest.mark.parametrize("show", [False, True])
def test_config_tree_is_saved_and_printed_only_with_print_config(compose, tmp_path, caplog, show):
    from medseg.app import _config_tree

    cfg = compose(f"print_config={str(show).lower()}")
    with caplog.at_level(logging.INFO, logger="medseg"):
        _config_tree(cfg, show=bool(cfg.print_config))
    tree = (tmp_path / "run" / "config_tree.txt").read_text()
    assert tree.startswith("CONFIG") and "optimizer" in tree
    assert "medseg mode=train" in caplog.text
    assert ("├── " in caplog.text) is show


def test_default_is_not_to_print_the_tree(compose):
    cfg = compose(tiny=False)
    assert cfg.print_config is False


def test_each_mode_writes_under_its_own_folder():
    from medseg.config.resolvers import run_folder

    assert run_folder("train", "train") == "train"
    assert run_folder("train", "totalseg_unet2d") == "totalseg_unet2d"  # a recipe's training keeps its name
    for mode in ("predict", "evaluate", "lr_find", "benchmark", "preprocess", "report"):
        assert run_folder(mode, "totalseg_unet2d") == mode
    hydra_yaml = (ROOT / "conf" / "hydra" / "default.yaml").read_text()
    assert "outputs/${run_folder:${mode},${task_name}}/" in hydra_yaml
    assert "multirun/${run_folder:${mode},${task_name}}/" in hydra_yaml


# ---------------------------------------------------------------------- per-epoch lines


def _log_epoch(n_classes: int, caplog) -> str:
    from medseg.engine.metrics import ranked_classes
    from medseg.engine.trainer import Trainer

    names = ["background"] + [f"c{i}" for i in range(1, n_classes)]
    ranked = ranked_classes([1.0] + [i / n_classes for i in range(1, n_classes)], names)
    record = {
        "epoch": 1,
        "train/loss": 1.0,
        "train/dice": 0.5,
        "val/loss": 1.0,
        "val/dice": 0.5,
        "lr": 1e-3,
        "train/grad_norm": 1.0,
        "train/samples_per_s": 10.0,
        "time/epoch_s": 1.0,
        "val/top5": ranked["top"],
        "val/bottom5": ranked["bottom"],
    }
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medseg.engine.trainer"):
        Trainer._log_epoch(SimpleNamespace(is_main_process=True, max_epochs=1), record)
    return caplog.text


def test_top_and_bottom_classes_only_when_they_name_different_classes(caplog):
    assert "top classes" not in _log_epoch(4, caplog)  # 3 foreground classes: the same ones twice
    assert "top classes" not in _log_epoch(7, caplog)  # 6 foreground: top 5 and bottom 5 share 4 classes
    text = _log_epoch(11, caplog)  # 10 foreground: no class named twice
    assert "top classes: c10 " in text and "| bottom: c1 " in text


# ---------------------------------------------------------------------- progress of lr_find and benchmark


def test_benchmark_logs_its_progress_without_a_terminal(compose, tmp_path, caplog):
    from medseg.tasks.benchmark import run_benchmark

    with caplog.at_level(logging.INFO, logger="medseg"):
        run_benchmark(compose("mode=benchmark", "benchmark.steps=4", "benchmark.warmup=1"))
    for phase in ("loading batches", "training steps", "inference steps"):
        assert re.search(rf"benchmark: {phase}: 5/5\b", caplog.text), phase
    assert (tmp_path / "run" / "benchmark.json").is_file()


def test_a_short_store_build_logs_only_its_summary_and_a_long_one_its_progress(caplog, monkeypatch):
    """Without a terminal: the demo's store builds in under a second and says so in one line; a build
    that runs longer than 10 s logs a line per tenth of its cases, so a log file shows how far it got."""
    from medseg import progress as progress_module
    from medseg.progress import Progress

    with caplog.at_level(logging.INFO, logger="medseg"):
        with Progress(20, "preprocess", bar=True, log_after_s=10.0) as quick:
            for _ in range(20):
                quick.update()
    assert "preprocess:" not in caplog.text
    now = [0.0]
    monkeypatch.setattr(progress_module.time, "perf_counter", lambda: now[0])
    with caplog.at_level(logging.INFO, logger="medseg"):
        with Progress(20, "preprocess", bar=True, log_after_s=10.0) as slow:
            for _ in range(20):
                now[0] += 5.0  # 5 s per case
                slow.update()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("preprocess:")]
    assert [m.split(" [")[0] for m in lines] == [f"preprocess: {i}/20" for i in range(2, 21, 2)]


# ---------------------------------------------------------------------- a whole first hour, as a user runs it


def test_demo_run_is_quiet_and_its_next_commands_and_readme_predict_work(tmp_path):
    """Train as a user does (no run-folder override, wandb on, a GPU preset on this CPU machine), then run
    the predict command the run printed, then the README's predict example, each from the same folder."""
    cache = tmp_path / "cache"
    tiny = [o for o in TINY if not o.startswith(("logger=", "trainer.progress_bar="))]  # the user's defaults
    gpu_preset_on_cpu = ["hardware=8gb", "hardware.device=cpu", "trainer.precision=32", "data.batch_size=4"]
    train = _run(_python_run(*tiny, *gpu_preset_on_cpu, "logger=wandb"), tmp_path, cache)
    console = train.stdout + train.stderr
    assert train.returncode == 0, console[-3000:]

    # the header, not the tree; the tree is in the run folder
    assert "medseg mode=train" in console and "├── " not in console
    runs = sorted((tmp_path / "outputs" / "train").iterdir())
    assert len(runs) == 1 and (runs[0] / "config_tree.txt").is_file()
    assert f"run folder: outputs/train/{runs[0].name}" in console
    # wandb: our one line, none of its banner or closing summary
    assert "upload later: wandb sync" in console
    for banner in ("Tracking run with wandb", "Run history", "Run summary", "You can sync this run", "View run"):
        assert banner not in console, banner
    assert list((runs[0] / "wandb").glob("offline-run-*/run-*.wandb"))  # still recorded
    # the preset's 4 workers on the CPUs this process may use: capped once, and PyTorch does not warn
    cpus = len(os.sched_getaffinity(0))
    if cpus < 4:
        assert console.count("loader workers asked") == 1
    assert "worker processes in total" not in console
    assert "top classes" not in console  # 3 foreground classes
    assert "%|" not in console  # no tqdm bar drawn into a log (the store build's included)

    # the printed next commands: evaluate and predict with this run's best.pt and an existing image
    lines = console.split("next:\n", 1)[1].splitlines()
    evaluate, predict = lines[0].strip(), lines[1].strip()
    assert evaluate.startswith("python ") and "mode=evaluate" in evaluate
    assert f"ckpt=outputs/train/{runs[0].name}/checkpoints/best.pt" in predict
    words = shlex.split(predict)
    image = next(w.split("=", 1)[1] for w in words if w.startswith("predict.input="))
    assert Path(image).is_file()
    pred = _run([sys.executable, *words[1:]], tmp_path, cache)
    assert pred.returncode == 0, (pred.stdout + pred.stderr)[-3000:]
    written = list((tmp_path / "outputs" / "predict").glob("*/predictions/*.nii.gz"))
    assert [p.name for p in written] == [Path(image).name]  # predictions under outputs/predict/, not train/

    # the README's predict example, as written, right after this run
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- predict-after-demo -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    script = block.replace("python run.py", f"{shlex.quote(sys.executable)} {shlex.quote(str(ROOT / 'run.py'))}")
    before = set((tmp_path / "outputs" / "predict").iterdir())
    example = _run(["bash", "-euo", "pipefail", "-c", script], tmp_path, cache)
    assert example.returncode == 0, (example.stdout + example.stderr)[-3000:]
    (new,) = set((tmp_path / "outputs" / "predict").iterdir()) - before
    assert list((new / "predictions").glob("*.nii.gz"))


@pytest.mark.parametrize("verbose", [False, True])
def test_wandb_banner_only_when_asked(tmp_path, capfd, monkeypatch, verbose):
    from medseg.tracking.wandb_tracker import WandbTracker

    monkeypatch.delenv("WANDB_SILENT", raising=False)  # CI exports it; here the setting alone decides

    tracker = WandbTracker(run_dir=str(tmp_path), mode="offline", verbose=verbose)
    tracker.log_config({"mode": "train"}, {})
    tracker.log_epoch({"epoch": 1, "train/loss": 0.5}, step=1)
    tracker.finish()
    printed = "".join(capfd.readouterr())
    assert ("wandb sync" in printed) is verbose  # wandb's own closing hint
    if not verbose:
        assert "wandb:" not in printed
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))


def test_predict_and_evaluate_headers_show_the_checkpoints_model_data_and_plan(compose, tmp_path, caplog):
    """Trained with SegResNet on 2D synthetic data: the header says so, not this run's model=unet optimizer=adam."""
    from medseg.app import _config_tree
    from medseg.config.header import checkpoint_summary, run_header
    from medseg.tasks.train import run_train

    train_dir = tmp_path / "trained"
    run_train(
        compose(
            "model=segresnet",
            "model.init_filters=8",
            "model.blocks_down=[1,1]",
            "model.blocks_up=[1]",
            "data.dims=2",
            "report.enabled=false",
            "trainer.log_images_every_n_epochs=0",
            output_dir=train_dir,
        )
    )
    ckpt = train_dir / "checkpoints" / "best.pt"
    for mode in ("evaluate", "predict"):
        caplog.clear()
        cfg = compose(f"mode={mode}", f"ckpt={ckpt}", output_dir=tmp_path / mode)
        with caplog.at_level(logging.INFO, logger="medseg"):
            _config_tree(cfg, show=False)
        header = caplog.text
        assert f"medseg mode={mode}" in header and f"checkpoint: {ckpt} (epoch 1, val/dice " in header
        assert "model:      SegResNet" in header
        assert "data:       synthetic · 2D · 4 classes (background, disc, square, ring)" in header
        assert "plan:       none (trained without plan=auto)" in header
    # the groups Hydra chose for this evaluate run are defaults that say nothing about the checkpoint
    choices = {"model": "unet", "data": "synthetic", "optimizer": "adam", "scheduler": "cosine", "hardware": "cpu"}
    text = run_header("evaluate", choices, ["hardware=cpu"], tmp_path, checkpoint=checkpoint_summary(ckpt))
    assert "groups:     hardware=cpu" in text
    for default in ("model=unet", "data=synthetic", "optimizer=adam", "scheduler=cosine"):
        assert default not in text
    # a group the user typed for this run (the data to evaluate on) is shown
    text = run_header("evaluate", choices, ["data=synthetic"], tmp_path, checkpoint=checkpoint_summary(ckpt))
    assert "groups:     data=synthetic hardware=cpu" in text


@pytest.mark.parametrize("classes", [1, 3, 4, 12])
def test_evaluate_best_and_worst_lists_never_name_a_class_twice(classes, caplog):
    from medseg.inference.scores_summary import log_summary, summarise

    names = ["background", *(f"s{i}" for i in range(1, classes + 1))]
    rows = [
        {"case": c, "class": n, "dice": (i + c) / 20, "iou": 0.5, "hd95": 1.0, "hd95_missing": 0}
        for c in range(2)
        for i, n in enumerate(names[1:], start=1)
    ]
    summary = summarise(rows, names, "validation", 2)
    best, worst = [n for n, _ in summary["best_classes"]], [n for n, _ in summary["worst_classes"]]
    assert not set(best) & set(worst)
    assert len(best) == len(worst) == min(5, classes // 2)
    with caplog.at_level(logging.INFO):
        log_summary(summary)
    assert ("best:" in caplog.text) is (classes > 1)


def test_the_store_summary_counts_an_unreadable_case_once(compose, tmp_path, caplog):
    """6 images, one of them broken: '5 built, 0 reused, 1 unreadable' of 6, not 6 built and 1 unreadable."""
    from medseg.data.datamodule import build_data
    from medseg.data.examples import write_folder
    from medseg.errors import DataError

    root = write_folder(tmp_path / "f", num_cases=6, mask_suffix="")
    (root / "masks" / "img_003.png").write_bytes(b"not a png at all")
    with caplog.at_level(logging.INFO, logger="medseg"), pytest.raises(DataError, match="img_003"):
        build_data(compose("data=folder", f"data.root={root}"))
    assert "6 cases (5 built, 0 reused, 1 unreadable)" in caplog.text
