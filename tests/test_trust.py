"""Trust boundaries: what a checkpoint may build, secrets typed on the command line or inside URLs,
value ranges checked before any work, and writes that survive a power loss.

The bad inputs themselves (one line, exit 2, nothing lost) are in tests/test_bad_inputs.py.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from medseg.config.redact import MASK, hide_argv_secrets, mask_urls, redact, redact_text, secret_values
from medseg.errors import CheckpointError, ConfigError
from tests.conftest import CONF, TINY

PASSWORD = "S3cretPw-42"
URL = f"postgresql://alice:{PASSWORD}@dbhost:5432/optuna"


# ------------------------------------------------------------------ a checkpoint is data
def test_every_shipped_model_is_allowed_and_nothing_else() -> None:
    from medseg.models.stored_model import allowed_model_class, allowed_model_targets

    allowed = allowed_model_targets()
    for path in sorted((CONF / "model").glob("*.yaml")):
        target = OmegaConf.load(path)["_target_"]
        assert target in allowed, path.name
        assert issubclass(allowed_model_class(target, "x.pt"), torch.nn.Module)
    assert "monai.networks.nets.UNet" in allowed
    for target in (
        "shutil.copyfile",
        "builtins.open",
        "pathlib.Path.touch",
        "os.system",
        "torch.nn.Sequential",  # a module, but not a network medseg builds
        "monai.networks.nets.FlexibleUNet",  # downloads weights on construction
        "medseg.models.unet.DoubleConv",  # a block, not a network
        "medseg.models.unet._conv",
        "medseg.models.factory.build_model",
        "medseg.models.unet.nn.Module",
        None,
    ):
        with pytest.raises(CheckpointError, match="does not build from a checkpoint"):
            allowed_model_class(target, "x.pt")


def _checkpoint(compose, path: Path) -> tuple[Path, torch.nn.Module]:
    """A medseg checkpoint of a tiny U-Net written the way training writes one (epoch 3; best was epoch 2)."""
    from medseg.config.redact import redact_config
    from medseg.engine.checkpoint import save_checkpoint
    from medseg.models.factory import build_model

    cfg = compose("model.channels=[4,8]")
    model = build_model(cfg.model, 1, 4, 2)
    history = [{"epoch": e, "val/dice": d} for e, d in [(1, 0.5), (2, 0.8), (3, 0.6)]]
    save_checkpoint(
        path,
        {
            "config_yaml": OmegaConf.to_yaml(OmegaConf.create(redact_config(cfg))),
            "class_names": ["background", "a", "b", "c"],
            "dataset": {"in_channels": 1, "num_classes": 4, "dims": 2},
            "model": model.state_dict(),
            "epoch": 3,
            "best_epoch": 2,
            "best_score": 0.8,
            "monitor": "val/dice",
            "history": history,
        },
    )
    return path, model


def test_restored_model_holds_the_stored_weights_and_the_log_shows_its_own_score(compose, tmp_path, caplog) -> None:
    from medseg.tasks.restore import restore_model

    path, model = _checkpoint(compose, tmp_path / "last.pt")
    with caplog.at_level(logging.INFO, logger="medseg.tasks.restore"):
        restored = restore_model(str(path), torch.device("cpu"))
    assert type(restored.model) is type(model)
    for key, value in model.state_dict().items():
        assert torch.equal(restored.model.state_dict()[key], value)
    assert "(epoch 3, val/dice=0.6000; the run's best was 0.8000 at epoch 2)" in caplog.text


def test_a_stored_model_config_is_never_instantiated(compose, tmp_path) -> None:
    """Hydra would build the nested object while building the model; the factory refuses the file."""
    import yaml

    from medseg.tasks.restore import restore_model

    path, _ = _checkpoint(compose, tmp_path / "best.pt")
    payload = torch.load(path, weights_only=True)
    cfg = yaml.safe_load(payload["config_yaml"])
    marker = tmp_path / "marker"
    cfg["model"]["norm"] = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    payload["config_yaml"] = yaml.safe_dump(cfg)
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"model\.norm\._target_"):
        restore_model(str(path), torch.device("cpu"))
    assert not marker.exists()


def test_fine_tuning_uses_only_the_tensors_of_a_checkpoint(compose, tmp_path) -> None:
    """The user's own config builds the model; the checkpoint's stored config (crafted here) is never read."""
    import yaml

    from medseg.tasks.train import run_train

    path, model = _checkpoint(compose, tmp_path / "shared.pt")
    payload = torch.load(path, weights_only=True)
    cfg = yaml.safe_load(payload["config_yaml"])
    marker = tmp_path / "marker"
    cfg["model"]["dropout"] = {"_target_": "pathlib.Path.touch", "self": str(marker)}
    payload["config_yaml"] = yaml.safe_dump(cfg)
    torch.save(payload, path)
    out = tmp_path / "tuned"
    fast = ("model.channels=[4,8]", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1")
    run_train(compose(*fast, "trainer.log_images_every_n_epochs=0", f"ckpt={path}", output_dir=out))
    assert not marker.exists()
    assert (out / "checkpoints" / "last.pt").is_file()


def test_fine_tuning_refuses_the_weights_of_another_network(compose) -> None:
    from medseg.models.factory import build_model
    from medseg.tasks.build import check_weights_fit, load_weights

    unet = build_model(compose("model.channels=[4,8]").model, 1, 4, 2)
    other = build_model(compose("model=attention_unet", "model.channels=[4,8]").model, 1, 4, 2)
    with pytest.raises(ConfigError, match=r"x\.pt holds weights of another network \(it holds a UNet\)"):
        check_weights_fit(other, unet.state_dict(), "x.pt", "UNet")
    with pytest.raises(ConfigError, match=r"has shape .* the model config or number of classes differs"):
        load_weights(build_model(compose("model.channels=[4,8]").model, 1, 3, 2), unet.state_dict(), "x.pt")
    same = build_model(compose("model.channels=[4,8]").model, 1, 4, 2)
    load_weights(same, unet.state_dict(), "x.pt")
    assert all(torch.equal(same.state_dict()[k], v) for k, v in unet.state_dict().items())


# ------------------------------------------------------------------ secrets
def test_command_line_secrets_move_into_the_environment_and_compose_to_the_real_values(compose) -> None:
    env = {"WANDB_API_KEY": "fk-0123456789abcdef", "HOME": "/home/x"}
    argv = [
        "run.py",
        "-m",
        f"hydra.sweeper.storage={URL}",
        "logger.wandb.notes=key fk-0123456789abcdef",
        "+logger.wandb.api_key='k3y-typed-here'",
        "seed=1,2",
        "data.root=/data/a:b@c",  # no URL: left alone
    ]
    hidden = hide_argv_secrets(argv, env)
    assert hidden == [
        "run.py",
        "-m",
        "hydra.sweeper.storage=postgresql://alice:${oc.env:MEDSEG_ARGV_SECRET_1}@dbhost:5432/optuna",
        "logger.wandb.notes=key ${oc.env:WANDB_API_KEY}",
        "+logger.wandb.api_key='${oc.env:MEDSEG_ARGV_SECRET_2}'",
        "seed=1,2",
        "data.root=/data/a:b@c",
    ]
    assert env["MEDSEG_ARGV_SECRET_1"] == PASSWORD and env["MEDSEG_ARGV_SECRET_2"] == "k3y-typed-here"
    assert hide_argv_secrets(hidden, env) == hidden  # idempotent (torchrun workers run it again)

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    os.environ.update({k: v for k, v in env.items() if k.startswith("MEDSEG_ARGV_SECRET_")})
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = hydra_compose(
                "config",
                overrides=["hparams_search=optuna", hidden[2], hidden[4].replace("'", "")],
                return_hydra_config=True,
            )
        assert cfg.hydra.sweeper.storage == URL  # the study connects with the real URL
        assert cfg.logger.wandb.api_key == "k3y-typed-here"
    finally:
        for name in ("MEDSEG_ARGV_SECRET_1", "MEDSEG_ARGV_SECRET_2"):
            os.environ.pop(name, None)


def test_url_passwords_are_masked_in_text_configs_and_log_records(tmp_path) -> None:
    from medseg.config.redact import install_log_filter

    assert mask_urls(f"storage {URL} and redis://:pw@cache:6379/0") == (
        f"storage postgresql://alice:{MASK}@dbhost:5432/optuna and redis://:{MASK}@cache:6379/0"
    )
    assert mask_urls("https://example.org/a@b and user@host:path") == "https://example.org/a@b and user@host:path"
    config = {"hydra_like": {"storage": URL}, "note": f"pw is {PASSWORD}"}
    secrets = secret_values(config, environ={})
    assert PASSWORD in secrets
    assert redact(config, secrets) == {
        "hydra_like": {"storage": f"postgresql://alice:{MASK}@dbhost:5432/optuna"},
        "note": f"pw is {MASK}",
    }
    assert redact_text(f"failed: {URL}", []) == f"failed: postgresql://alice:{MASK}@dbhost:5432/optuna"

    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "run.log")
    root.addHandler(handler)
    try:
        install_log_filter([])  # no secret values known: URL passwords are masked all the same
        logging.getLogger("medseg.test").warning("study at %s", URL)
        handler.flush()
    finally:
        root.removeHandler(handler)
        handler.close()
    assert PASSWORD not in (tmp_path / "run.log").read_text()


@pytest.mark.parametrize("char", ["/", "@", ":", "%", "#"])
def test_url_passwords_are_read_as_the_database_client_reads_them(char: str) -> None:
    """Each character in a password, percent-encoded and (where SQLAlchemy keeps it) as typed: SQLAlchemy's
    own parser says what the password is; medseg masks that text and its decoded value everywhere."""
    from urllib.parse import quote

    from sqlalchemy.engine import make_url

    password = f"ab{char}cd+Ef12"
    forms = [quote(password, safe="")] + ([password] if char in "/:#" else [])
    for typed in forms:
        url = f"postgresql://alice:{typed}@db.host:5432/optuna"
        assert make_url(url).password == password  # what the database client sends
        secrets = secret_values({"hydra": {"sweeper": {"storage": url}}}, environ={})
        assert {typed, password} <= set(secrets)
        text = f"storage {url}; the server refused {password!r}"
        masked = redact_text(text, secrets)
        assert masked == f"storage postgresql://alice:{MASK}@db.host:5432/optuna; the server refused '{MASK}'"
        assert redact({"storage": url}) == {"storage": f"postgresql://alice:{MASK}@db.host:5432/optuna"}
        env: dict[str, str] = {}
        hidden = hide_argv_secrets(["run.py", f"hydra.sweeper.storage={url}"], env)
        assert (
            hidden[1] == "hydra.sweeper.storage=postgresql://alice:${oc.env:MEDSEG_ARGV_SECRET_1}@db.host:5432/optuna"
        )
        assert env == {"MEDSEG_ARGV_SECRET_1": typed}


def test_an_at_sign_typed_in_a_password_masks_it_whole_and_other_urls_stay() -> None:
    from sqlalchemy.engine import make_url

    url = "postgresql://alice:ab@cd+Ef12@db.host/optuna"
    assert make_url(url).host == "cd+Ef12@db.host"  # the client cuts the password at the first @: no real host
    assert mask_urls(url) == f"postgresql://alice:{MASK}@db.host/optuna"
    assert mask_urls("postgresql://a@b:pw/x@h/db") == f"postgresql://a@b:{MASK}@h/db"  # as make_url reads it
    for text in (
        "https://example.org/a@b",
        "ssh://git@github.com:22/x",
        "http://host:8080/a and bob@example.com",
        "postgresql://alice:${oc.env:MEDSEG_ARGV_SECRET_1}@db/x",
    ):
        assert mask_urls(text) == text


@pytest.mark.slow
def test_a_password_typed_on_the_command_line_is_never_written_or_printed(run_cli, tmp_path: Path) -> None:
    """A multirun job with a URL password among its overrides: every file under the run folders and the
    whole console output are searched for it (Hydra's .hydra/*.yaml, multirun.yaml, its per-job console
    line, run.log, the csv tracker, the checkpoints)."""
    fast = [*TINY, "model.channels=[4,8]", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1"]
    proc = run_cli(
        "hydra.mode=MULTIRUN",
        *[o for o in fast if not o.startswith(("logger=", "print_config="))],
        "logger=csv",
        "trainer.log_images_every_n_epochs=0",
        f"tags=[{URL}]",
        "seed=1",
        check=True,
    )
    console = proc.stdout + proc.stderr
    assert PASSWORD not in console
    job_line = next(line for line in console.splitlines() if "#0 : " in line)  # Hydra's per-job console line
    assert "MEDSEG_ARGV_SECRET_1" in job_line
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and PASSWORD.encode() in p.read_bytes()]
    assert leaks == []
    job = tmp_path / "multirun" / "0"
    assert (tmp_path / "multirun" / "multirun.yaml").is_file() and (job / ".hydra" / "hydra.yaml").is_file()
    stored = torch.load(job / "checkpoints" / "last.pt", weights_only=True)
    # the job's config held the real URL (resolved from the environment), masked when written
    assert OmegaConf.create(stored["config_yaml"]).tags == [f"postgresql://alice:{MASK}@dbhost:5432/optuna"]


# ------------------------------------------------------------------ values checked before any work
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("data.batch_size=0", "data.batch_size=0 must be an integer >= 1"),
        ("data.val_batch_size=0", "data.val_batch_size=0 must be an integer >= 1 or null"),
        ("trainer.max_epochs=-3", "trainer.max_epochs=-3 must be an integer >= 1"),
        ("data.scale=0", "data.scale=0.0 must be in (0, 1]"),
        ("data.val_percent=0", "data.val_percent=0.0 must be in (0, 100)"),
        ("optimizer.lr=0", "optimizer.lr=0 must be > 0"),
        ("data.image_size=[64,0]", "data.image_size=[64,0] must be a list of integers >= 1 or null"),
        ("hardware.num_workers=-1", "hardware.num_workers=-1 must be an integer >= 0"),
        ("predict.threshold=1.5", "predict.threshold=1.5 must be in [0, 1]"),
        ("trainer.gradient_clip_val=0", "trainer.gradient_clip_val=0.0 must be > 0 or null"),
        ("seed=-1", "seed=-1 must be an integer in [0, 4294967295]"),
        ("lr_find.max_lr=1e-9", "lr_find.min_lr=1e-07 must be below lr_find.max_lr=1e-09"),
    ],
)
def test_a_value_out_of_range_names_the_key_and_the_range(compose, override: str, message: str) -> None:
    from medseg.config.validate import validate_config

    with pytest.raises(ConfigError) as err:
        validate_config(compose(override))
    assert str(err.value) == message


def test_context_slices_and_keys_missing_from_older_configs() -> None:
    from medseg.config.validate import validate_config

    validate_config(OmegaConf.create({"data": {"batch_size": 2}}))  # absent keys are not checked
    validate_config(OmegaConf.create({"data": {"context_slices": 2}}))
    with pytest.raises(ConfigError, match=r"data\.context_slices=-1 must be an integer >= 0"):
        validate_config(OmegaConf.create({"data": {"context_slices": -1}}))


def test_every_shipped_config_is_in_range() -> None:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from medseg.config import register_configs
    from medseg.config.validate import validate_config

    register_configs()
    groups = ["model", "hardware", "experiment", "data", "optimizer", "scheduler"]
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        for group in groups:
            for path in sorted((CONF / group).glob("*.yaml")):
                if (group, path.stem) == ("data", "base"):  # not a layout: the keys every layout shares
                    continue
                validate_config(hydra_compose("config", overrides=[f"{group}={path.stem}"]))


# ------------------------------------------------------------------ durable writes
def test_atomic_write_syncs_the_file_then_the_folder_and_keeps_the_umask(tmp_path, monkeypatch) -> None:
    """fsync is recorded, not bypassed (a power loss cannot be staged here): the file's data is synced
    before the rename and the folder after it; the process umask is never changed."""
    import medseg.io_utils as io_utils

    synced: list[tuple[str, bool]] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        synced.append((target, (tmp_path / "out.json").exists()))
        real_fsync(fd)

    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask called: it changes the mask of every thread for a moment")

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "umask", no_umask)
    io_utils.write_json(tmp_path / "out.json", {"a": 1})
    assert len(synced) == 2
    (tmp_file, renamed_yet), (folder, renamed_after) = synced
    assert Path(tmp_file).name.startswith(".out.json.") and not renamed_yet
    assert Path(folder) == tmp_path and renamed_after
    mode = stat.S_IMODE((tmp_path / "out.json").stat().st_mode)
    assert mode == 0o666 & ~io_utils._UMASK
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
