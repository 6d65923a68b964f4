"""MONAI's LoadImage / LoadImaged, built without the noise of a GPU decoder that cannot be present.

With pydicom installed, every LoadImage constructs MONAI's NvImgCodecPydicomReader among its default
readers; on a machine without nvImageCodec and CUDA it logs "nvImageCodec is not available" and warns
that it falls back to pydicom's own decoders, once per transform. That fallback is what medseg wants,
so the two messages are silenced while the transform is built (only there: no global filter).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

_PLUGIN_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"


@contextlib.contextmanager
def _quiet_gpu_decoder() -> Iterator[None]:
    logger = logging.getLogger(_PLUGIN_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            yield
    finally:
        logger.setLevel(level)


def load_image(**kwargs: Any) -> Any:
    """monai.transforms.LoadImage(**kwargs)."""
    from monai.transforms import LoadImage

    with _quiet_gpu_decoder():
        return LoadImage(**kwargs)


def load_imaged(**kwargs: Any) -> Any:
    """monai.transforms.LoadImaged(**kwargs)."""
    from monai.transforms import LoadImaged

    with _quiet_gpu_decoder():
        return LoadImaged(**kwargs)
