"""User errors raise MedsegError subclasses with messages that name the problem and the fix."""

from __future__ import annotations

import pytest

from medseg.app import main
from medseg.cli import describe_user_error
from medseg.engine.checkpoint import load_checkpoint
from medseg.errors import CheckpointError, ConfigError


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(bad)
    import torch

    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a medseg checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_predict_without_checkpoint_names_the_key(compose):
    with pytest.raises(ConfigError, match="ckpt="):
        main(compose("mode=predict"))


def test_unknown_mode(compose):
    with pytest.raises(ConfigError, match="mode="):
        main(compose("mode=dance"))


def test_bad_values_are_user_errors(compose):
    from medseg.tasks.train import run_train

    with pytest.raises(ConfigError, match="data.scale"):
        run_train(compose("data.scale=1.5"))
    with pytest.raises(ConfigError, match="trainer.precision"):
        run_train(compose("trainer.precision=fp8"))


def test_describe_user_error_is_one_line():
    msg = describe_user_error(ConfigError("a\nb   c"))
    assert msg == "a b c"
    assert describe_user_error(RuntimeError("bug")) is None
