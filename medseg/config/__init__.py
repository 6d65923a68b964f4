"""Config schemas (structured configs) and their registration with Hydra's ConfigStore."""

from medseg.config.registry import register_configs

__all__ = ["register_configs"]
