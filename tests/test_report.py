"""report.html: a run's and a sweep's report, opened in headless Chromium the way a reader opens them.

The browser checks skip only when chromium is absent (CI installs it: .ci/run). Screenshots are kept
in the test's tmp folder (report_run.png, report_eval.png, report_sweep.png).
"""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from tests.browser import CHROMIUM

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")

FAST_SWEEP = [
    "data.synthetic.num_cases=6",
    "data.synthetic.shape=[32,32,8]",
    "data.batch_size=4",
    "data.val_percent=34",
    "trainer.max_epochs=2",
    "trainer.progress_bar=false",
    "logger=none",
    "print_config=false",
]

ROWS_JS = "Array.from(document.querySelectorAll('#{} tbody tr')).map(r => Array.from(r.cells).map(c => c.textContent))"
TRACES_JS = "document.querySelectorAll('#{} .main-svg .trace').length"


def open_offline(page, path: Path, shot: Path, plots: list[str]) -> None:
    """Open `path`; assert the page drew `plots`, made no request and logged no error; take a screenshot."""
    page.log.clear()
    page.open(path)
    for div in plots:
        assert page.wait_until(TRACES_JS.format(div)), f"{div} drew nothing"
    assert page.wait_until("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
    requests = [u for u in page.requests() if not u.startswith("data:")]
    assert requests == [path.resolve().as_uri()], requests  # the file itself and nothing else
    assert page.problems() == []
    page.screenshot(shot)
    assert shot.stat().st_size > 10_000


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def loaded_from(html: str) -> list[str]:
    """What the page's tags would load (src of script/img/iframe, href of link): must be nothing."""
    from html.parser import HTMLParser

    found: list[str] = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag: str, attrs: list) -> None:
            for name, value in attrs:
                if (tag, name) in {("script", "src"), ("img", "src"), ("iframe", "src"), ("link", "href")}:
                    if not str(value).startswith("data:"):
                        found.append(f"{tag} {value}")

    Tags().feed(html)
    return found


# ---------------------------------------------------------------- a run and its evaluation
@pytest.mark.slow
@needs_chromium
def test_run_and_evaluate_reports_open_offline_with_curves_tables_and_overlays(compose, tmp_path: Path) -> None:
    from medseg.tasks.evaluate import run_evaluate
    from medseg.tasks.train import run_train
    from tests.browser import Page

    run = tmp_path / "run"
    run_train(compose("trainer.max_epochs=2", output_dir=run))
    assert (run / "report.html").is_file()  # written at the end of training
    manifest = json.loads((run / "report_overlays" / "overlays.json").read_text())
    assert [o["role"] for o in manifest["overlays"]] == ["best", "worst"]  # 2 validation cases
    ev = tmp_path / "eval"
    run_evaluate(compose("mode=evaluate", f"ckpt={run}/checkpoints/best.pt", output_dir=ev))
    assert (ev / "report.html").is_file()  # written at the end of evaluate

    history = json.loads((run / "history.json").read_text())
    names = json.loads((run / "label_map.json").read_text())
    per_case: dict[str, list[float]] = {}
    for r in read_csv(ev / "metrics.csv"):
        if r["dice"]:
            per_case.setdefault(r["case"], []).append(float(r["dice"]))
    expected_cases = sorted((float(np.mean(v)), c) for c, v in per_case.items())  # worst first

    with Page() as page:
        open_offline(page, run / "report.html", tmp_path / "report_run.png", ["curves-plot"])
        assert page.evaluate("document.querySelectorAll('#curves-plot .main-svg .trace').length") >= 6
        classes = page.evaluate(ROWS_JS.format("class-table"))
        last = history[-1]
        assert [row[0] for row in classes] == [names[k] for k in sorted(names, key=int)][1:]
        for row in classes:
            assert row[1] == f"{last[f'val/dice/{row[0]}']:.4f}"
            assert row[2] == f"{last[f'val/iou/{row[0]}']:.4f}"
        assert page.evaluate("document.querySelectorAll('.overlays img').length") == 2
        captions = page.evaluate(
            "Array.from(document.querySelectorAll('.overlays figcaption')).map(c => c.textContent)"
        )
        assert [c.split(":")[0] for c in captions] == ["best", "worst"]
        assert all(o["case"] in c for o, c in zip(manifest["overlays"], captions))

        open_offline(page, ev / "report.html", tmp_path / "report_eval.png", ["curves-plot"])
        cases = page.evaluate(ROWS_JS.format("case-table"))
        assert [row[0] for row in cases] == [c for _, c in expected_cases]
        assert [row[1] for row in cases] == [f"{d:.4f}" for d, _ in expected_cases]
        # the tables sort by a click on a column title
        page.evaluate("document.querySelector('#case-table th:nth-child(2)').click()")
        page.evaluate("document.querySelector('#case-table th:nth-child(2)').click()")
        assert [row[0] for row in page.evaluate(ROWS_JS.format("case-table"))] == [c for _, c in expected_cases][::-1]


def test_mode_report_redraws_a_run_report_from_its_checkpoint(compose, tmp_path: Path) -> None:
    from medseg.app import main
    from medseg.tasks.train import run_train

    run = tmp_path / "run"
    run_train(compose("report.enabled=false", output_dir=run))
    assert not (run / "report.html").exists() and not (run / "report_overlays").exists()
    out = tmp_path / "copy" / "page.html"
    main(compose("mode=report", f"ckpt={run}/checkpoints/best.pt", f"report.output={out}"))
    html = out.read_text()
    assert "Training curves" in html and loaded_from(html) == []
    assert html.count("* plotly.js v") == 1  # the bundle inlined once


def test_mode_report_needs_a_folder_or_checkpoint(compose, tmp_path: Path) -> None:
    from medseg.app import main
    from medseg.errors import ConfigError, MedsegError

    with pytest.raises(ConfigError, match="report.path"):
        main(compose("mode=report"))
    with pytest.raises(MedsegError, match="holds no history.json"):
        main(compose("mode=report", f"report.path={tmp_path}"))
    with pytest.raises(MedsegError, match="is not a folder"):
        main(compose("mode=report", f"report.path={tmp_path}/missing"))


# ---------------------------------------------------------------- sweeps
@pytest.mark.slow
@needs_chromium
def test_optuna_sweep_report_lists_trials_importance_and_links(run_cli, tmp_path: Path) -> None:
    from tests.browser import Page

    params = 'hydra.sweeper.params={optimizer.lr: "tag(log, interval(1e-4, 1e-2))", data.batch_size: "choice(2, 4)"}'
    run_cli("hydra.mode=MULTIRUN", "hparams_search=optuna", "hydra.sweeper.n_trials=2", params, *FAST_SWEEP, check=True)
    sweep = tmp_path / "multirun"
    trials = read_csv(sweep / "trials.csv")
    assert (sweep / "report.html").is_file()  # written at the end of the multirun
    with Page() as page:
        open_offline(page, sweep / "report.html", tmp_path / "report_sweep.png", ["importance-plot", "trials-plot"])
        assert page.evaluate("document.querySelectorAll('#parallel-plot canvas.gl-canvas').length") == 3
        rows = page.evaluate(ROWS_JS.format("trial-table"))
        assert [r[0] for r in rows] == [t["number"] for t in trials]
        assert [r[1] for r in rows] == ["complete", "complete"]
        assert [r[2] for r in rows] == [f"{float(t['value']):.4f}" for t in trials]
        params = [k for k in trials[0] if k.startswith("params_")]
        bars = page.evaluate("document.querySelectorAll('#importance-plot .bars path').length")
        assert bars == len(params)  # one bar per parameter, from Optuna's evaluator
        axes = page.evaluate(
            "Array.from(document.querySelectorAll('#parallel-plot .axis-title')).map(a => a.textContent)"
        )
        assert sorted(axes) == sorted([p[len("params_") :] for p in params] + ["val/dice"])
        links = page.evaluate(
            "Array.from(document.querySelectorAll('#trial-table a')).map(a => a.getAttribute('href'))"
        )
        assert links == ["0/report.html", "1/report.html"]
        assert all((sweep / link).is_file() for link in links)
        best = max(trials, key=lambda t: float(t["value"]))
        assert page.evaluate("document.querySelector('#trial-table tr.best td').textContent") == best["number"]


@pytest.mark.slow
def test_plain_multirun_report_names_the_failed_job_and_its_reason(run_cli, tmp_path: Path) -> None:
    proc = run_cli("hydra.mode=MULTIRUN", "optimizer.lr=0.001,-1.0", *FAST_SWEEP, "trainer.max_epochs=1")
    assert proc.returncode != 0  # Hydra's basic sweeper stops at the failed job: no report at its end
    sweep = tmp_path / "multirun"
    run_cli("mode=report", f"report.path={sweep}", check=True)
    html = (sweep / "report.html").read_text()
    assert "Hydra multirun · objective val/dice" in html and "Optuna study train" not in html
    assert "optimizer.lr=-1.0 must be &gt; 0" in html or "optimizer.lr=-1.0 must be > 0" in html  # from run.log
    assert 'href="0/report.html"' in html and 'href="1/report.html"' not in html
    assert 'id="trials-plot"' in html


# ---------------------------------------------------------------- pieces
def test_case_dice_follows_the_validation_contract() -> None:
    from medseg.report.overlays import case_dice

    truth = np.array([[0, 1, 1, 2], [0, 0, 0, 0]])
    pred = np.array([[0, 1, 0, 0], [3, 0, 0, 0]])
    # class 1: 2*1/(2+0+1) = 2/3; class 2: missed, 0; class 3: predicted where absent, 0; class 4: absent, NaN
    assert case_dice(truth, pred, 5) == pytest.approx(np.mean([2 / 3, 0.0, 0.0]))
    assert math.isnan(case_dice(np.zeros((3, 3)), np.zeros((3, 3)), 3))


def test_best_median_worst_are_distinct_cases() -> None:
    from medseg.report.overlays import pick_roles

    assert pick_roles({"a": 0.9, "b": 0.2, "c": 0.5, "d": float("nan")}) == [
        ("best", "a", 0.9),
        ("median", "c", 0.5),
        ("worst", "b", 0.2),
    ]
    assert [r for r, _, _ in pick_roles({"a": 0.9, "b": 0.2})] == ["best", "worst"]
    assert [r for r, _, _ in pick_roles({"a": 0.9})] == ["best"]


def test_labelled_figure_is_readable_and_has_a_legend_of_the_classes_shown() -> None:
    from medseg.engine.image_panels import WRONG_CLASS, labelled_figure
    from medseg.inference.image_io import PALETTE

    truth = np.zeros((16, 16), dtype=np.int64)
    truth[4:8, 4:8] = 5
    pred = np.zeros_like(truth)
    names = ["background", "liver", "spleen", "kidney", "aorta", "pancreas"]
    fig = labelled_figure([(np.random.rand(16, 16), truth, pred)], ["slice 3"], names)
    assert fig.shape[1] >= 4 * 256  # 16 px tiles enlarged to 256 px
    legend = fig[-40:].reshape(-1, 3)  # the legend: a swatch for pancreas (5) and the comparison colours
    colours = {tuple(int(v) for v in c) for c in np.unique(legend, axis=0)}
    assert tuple(int(v) for v in PALETTE[5]) in colours and WRONG_CLASS in colours
    assert tuple(int(v) for v in PALETTE[4]) not in colours  # aorta is not shown, so not in the legend


def test_epoch_axes_tick_whole_epochs() -> None:
    """A 3-epoch run's curves tick 1, 2, 3, not 1.5 and 2.5; a long run keeps plotly's spacing, whole numbers."""
    from medseg.report.figures import training_curves, trial_curves

    def history(n: int) -> list[dict]:
        return [{"epoch": e, "train/loss": 1 / e, "val/dice": e / n, "lr": 1e-3} for e in range(1, n + 1)]

    short = training_curves(history(3), 2, "val/dice")
    assert all(ax.dtick == 1 and ax.tick0 == 1 for ax in short.select_xaxes())
    long = training_curves(history(50), 40, "val/dice")
    assert all(ax.dtick is None and ax.tickformat == "d" for ax in long.select_xaxes())
    trials = trial_curves([{"number": 0, "history": history(3)}], "val/dice")
    assert trials.layout.xaxis.dtick == 1


# ---------------------------------------------------------------- what the overlays and the per-class table say
def _poor_model():
    """A deliberately poor 'model': finds the two structures by their intensity but names each the other's
    class (1 <-> 2); calls a faint bar of background class 1 (extra), a faint band of the square background
    (missed), and only the square's bright edge (intensity 3) by its own class (correct)."""
    import torch

    class SwapsClasses(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            v = x[:, :1]
            near = [-((v - c) ** 2) for c in (0.0, 2.5, 1.0)]  # class 1 answers to intensity 2 and 3, class 2 to 1
            near[1] = near[1] + 5.0 * (v > 0.3).float() * (v < 0.7).float()  # the bar (0.5) as class 1: extra
            return torch.cat(near, 1) * 10

    return SwapsClasses()


def _volumes(n: int) -> list[dict]:
    import torch

    out = []
    for k in range(n):
        image = np.zeros((1, 24, 24, 6), dtype=np.float32)
        label = np.zeros((1, 24, 24, 6), dtype=np.float32)
        label[0, 3 : 10 + k, 3:10, 1:5] = 1  # a square, class 1
        yy, xx = np.mgrid[:24, :24]
        disk = (yy - 16) ** 2 + (xx - 15) ** 2 <= (4 + k % 2) ** 2
        label[0, disk, 2:5] = 2  # a disk, class 2
        image[0] = label[0]
        image[0, 12:14, 2:22, :] = np.where(label[0, 12:14, 2:22, :] == 0, 0.5, image[0, 12:14, 2:22, :])
        image[0, 3:5, 3:10, :] *= 0.1  # a faint band of the square: the model sees background there
        image[0, 7 + k : 10 + k, 3:10, :] *= 3.0  # the square's bright edge: intensity 3
        out.append({"image": torch.from_numpy(image), "label": torch.from_numpy(label)})
    return out


def _poor_run(folder: Path) -> Path:
    """A training run folder as a run leaves it: history (best val/dice at epoch 2 of 3), best.pt saved at
    epoch 2, label_map.json, and the overlays the end of training draws, here with the poor model."""
    import torch

    from medseg.io_utils import write_json
    from medseg.precision import resolve_precision
    from medseg.report.overlays import write_validation_overlays

    names = ["background", "liver", "spleen"]
    history = [
        {"epoch": e, "train/loss": 1.0 / e, "lr": 1e-3, "val/dice": d, "val/dice/liver": lv, "val/dice/spleen": sp}
        for e, d, lv, sp in [(1, 0.40, 0.41, 0.39), (2, 0.80, 0.82, 0.78), (3, 0.60, 0.63, 0.57)]
    ]
    write_json(folder / "history.json", history)
    write_json(folder / "label_map.json", {str(i): n for i, n in enumerate(names)})
    (folder / "checkpoints").mkdir(parents=True)
    torch.save({"epoch": 2, "best_epoch": 2, "monitor": "val/dice", "best_score": 0.8}, folder / "checkpoints/best.pt")
    torch.save({"epoch": 3, "best_epoch": 2, "monitor": "val/dice", "best_score": 0.8}, folder / "checkpoints/last.pt")
    write_validation_overlays(
        _poor_model(),
        _volumes(3),
        ["case_a", "case_b", "case_c"],
        lambda x, m: m(x),
        torch.device("cpu"),
        resolve_precision("32", torch.device("cpu")),
        names,
        folder,
        max_cases=3,
        slices=2,
        slice_axis=2,
    )
    return folder


WRONG_CLASS_PIXELS_JS = """(() => {
  const img = document.querySelector('.overlays img');
  const c = document.createElement('canvas');
  c.width = img.naturalWidth; c.height = img.naturalHeight;
  const g = c.getContext('2d'); g.drawImage(img, 0, 0);
  const d = g.getImageData(0, 0, c.width, c.height).data;
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (d[i] === %d && d[i + 1] === %d && d[i + 2] === %d) n++;
  return n;
})()"""


def test_agreement_colours_never_stand_for_a_class() -> None:
    from medseg.engine.image_panels import AGREEMENT
    from medseg.inference.image_io import PALETTE

    colours = [np.array(rgb) for _, rgb, _ in AGREEMENT]
    for c in colours:  # far from every class colour, not only unequal
        assert np.min(np.linalg.norm(PALETTE[1:].astype(float) - c, axis=1)) > 100
    assert len({tuple(c) for c in colours}) == 4


@needs_chromium
def test_report_overlays_show_wrong_classes_with_a_legend_and_the_table_describes_best_pt(tmp_path: Path) -> None:
    from medseg.engine.image_panels import WRONG_CLASS
    from medseg.report import write_report
    from tests.browser import Page

    run = _poor_run(tmp_path / "run")
    path = write_report(run)
    with Page() as page:
        page.open(path)
        assert page.wait_until("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
        legend = page.evaluate("document.querySelector('#agreement-legend').textContent")
        for kind in ("correct", "wrong class", "missed", "extra"):
            assert kind in legend
        # the poor model's errors are drawn as what they are: wrong class, not "both"
        assert page.evaluate(WRONG_CLASS_PIXELS_JS % WRONG_CLASS) > 100
        captions = page.evaluate(
            "Array.from(document.querySelectorAll('.overlays figcaption')).map(f => f.textContent)"
        )
        assert len(captions) == 3 and all(re.search(r"wrong class [1-9]", c) for c in captions), captions
        assert "slices None" not in page.evaluate("document.body.textContent")
        assert page.evaluate("document.querySelector('#overlays').textContent") == "Best, median and worst cases"
        note = page.evaluate("document.querySelector('#classes').nextElementSibling.textContent")
        assert "epoch 2" in note and "best.pt" in note, note
        rows = page.evaluate(ROWS_JS.format("class-table"))
        assert {r[0]: float(r[1]) for r in rows} == {"liver": 0.82, "spleen": 0.78}  # epoch 2, not the last (3)
        page.screenshot(tmp_path / "report_poor_model.png")
        assert page.problems() == []


def test_overlay_heading_says_how_many_cases_there_are(tmp_path: Path) -> None:
    from medseg.report.run_report import overlay_heading

    assert overlay_heading(["best", "median", "worst"]) == "Best, median and worst cases"
    assert overlay_heading(["best", "worst"]) == "Best and worst cases"
    assert overlay_heading(["best"]) == "The one scored case"


def test_validation_panels_show_different_cases(compose) -> None:
    from medseg.data.datamodule import build_data
    from medseg.engine.image_panels import choose_items

    cfg = compose("data.synthetic.num_cases=9", "data.val_percent=40", "data.dims=2")
    dataset = build_data(cfg).val_loader.dataset
    picked = choose_items(dataset, 4)
    cases = {dataset.case_index(i) for i in picked}
    assert len(picked) == 4 and len(cases) == min(4, len(dataset.case_ids)) >= 3


def test_sweep_report_warns_when_importance_rests_on_few_trials(tmp_path: Path) -> None:
    """A 3-trial Optuna study over two parameters: the chart is drawn, with a caveat above it; 20+ trials: none."""
    import optuna

    from medseg.report.sweep_report import importance_caveat, write_sweep_report

    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(storage=f"sqlite:///{tmp_path}/optuna.db", study_name="s", direction="maximize")
        study.optimize(lambda t: t.suggest_float("lr", 1e-4, 1e-2, log=True) + t.suggest_int("batch", 1, 8), n_trials=3)
        optuna.logging.set_verbosity(optuna.logging.INFO)
        html = write_sweep_report(tmp_path).read_text()
        # the report reads the study quietly but leaves the process-wide verbosity as it found it
        assert optuna.logging.get_verbosity() == optuna.logging.INFO
    finally:
        optuna.logging.set_verbosity(verbosity)
    assert 'id="importance-caveat"' in html and "only 3 completed trials over 2 parameters" in html
    assert importance_caveat(20, 2) == "" and importance_caveat(19, 2)


def test_a_2d_case_is_not_labelled_with_a_slice(tmp_path: Path) -> None:
    """Native 2D validation images (one item per case): the manifest and the page give no slice number."""
    import torch

    from medseg.precision import resolve_precision
    from medseg.report.overlays import write_validation_overlays
    from medseg.report.run_report import write_run_report

    items = []
    for k in range(2):
        label = np.zeros((1, 20, 20), dtype=np.float32)
        label[0, 4 : 10 + k, 4:12] = 1
        items.append({"image": torch.from_numpy(label.copy()), "label": torch.from_numpy(label)})
    model = torch.nn.Conv2d(1, 2, 1)
    with torch.no_grad():
        model.weight[:] = torch.tensor([[[[-4.0]]], [[[4.0]]]])
        model.bias[:] = torch.tensor([2.0, -2.0])
    cpu = torch.device("cpu")
    manifest = write_validation_overlays(
        model, items, ["img_a", "img_b"], lambda x, m: m(x), cpu, resolve_precision("32", cpu),
        ["background", "car"], tmp_path, max_cases=2, slices=3, slice_axis=2,
    )  # fmt: skip
    assert [m["slices"] for m in manifest] == [[], []] and all("axis" not in m for m in manifest)
    (tmp_path / "history.json").write_text(json.dumps([{"epoch": 1, "train/loss": 0.5, "val/dice": 0.5}]))
    html = write_run_report(tmp_path).read_text()
    assert html.count("<figure>") == 2
    assert "slices None" not in html and "slice None" not in html
    assert "Best and worst cases" in html  # two cases: no median
