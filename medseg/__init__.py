"""medseg: a Hydra-composed experiment platform for medical image segmentation."""

__version__ = "0.1.0"
