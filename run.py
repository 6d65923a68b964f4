"""medseg entry point: `python run.py [group=option] [key=value ...]`; see README.md."""

import hydra
from omegaconf import DictConfig

from medseg.app import main as medseg_main
from medseg.cli import exit_on_user_error, one_line_errors
from medseg.config import register_configs

register_configs()


@one_line_errors
@hydra.main(version_base="1.3", config_path="conf", config_name="config")
@exit_on_user_error
def main(cfg: DictConfig):
    return medseg_main(cfg)


if __name__ == "__main__":
    main()
