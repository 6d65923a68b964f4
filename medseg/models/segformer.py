"""SegFormer (Xie et al. 2021) from a local Hugging Face `SegformerConfig`: random initialisation,
or weights from `pretrained_path` (a state-dict file or a `save_pretrained` folder); never the hub.

The decoder predicts at 1/4 of the input size; logits are upsampled bilinearly to the input size.
2D only. Needs the optional extra: pip install -e ".[segformer]".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from medseg.errors import CheckpointError, ConfigError
from medseg.models.checkpointing import BlockCheckpointing, scale_channels

log = logging.getLogger(__name__)


def _transformers() -> tuple[type, type, type]:
    try:
        from transformers import SegformerConfig, SegformerForSemanticSegmentation
        from transformers.models.segformer.modeling_segformer import SegformerLayer
    except ImportError as exc:
        raise ConfigError(
            f'model=segformer_* needs the transformers package ({exc}); install it with pip install -e ".[segformer]"'
        ) from exc
    return SegformerConfig, SegformerForSemanticSegmentation, SegformerLayer


class SegFormer(BlockCheckpointing, nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        spatial_dims: int = 2,
        variant: str = "b0",
        hidden_sizes: Sequence[int] = (32, 64, 160, 256),
        depths: Sequence[int] = (2, 2, 2, 2),
        num_attention_heads: Sequence[int] = (1, 2, 5, 8),
        sr_ratios: Sequence[int] = (8, 4, 2, 1),
        decoder_hidden_size: int = 256,
        dropout: float = 0.1,
        drop_path: float = 0.1,
        pretrained_path: str | None = None,
        width: float = 1.0,
        grad_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if spatial_dims != 2:
            raise ConfigError(f"model=segformer_{variant} is 2D only; set data.dims=2 or choose a 3D model")
        config_cls, model_cls, layer_cls = _transformers()
        hidden = [
            int(h) if width == 1 else scale_channels(int(h), width, 8 * int(n))
            for h, n in zip(hidden_sizes, num_attention_heads)
        ]
        config = config_cls(
            num_channels=in_channels,
            num_labels=out_channels,
            hidden_sizes=hidden,
            depths=list(depths),
            num_attention_heads=list(num_attention_heads),
            sr_ratios=list(sr_ratios),
            decoder_hidden_size=int(decoder_hidden_size) if width == 1 else scale_channels(decoder_hidden_size, width),
            classifier_dropout_prob=dropout,
            drop_path_rate=drop_path,
        )
        self.variant = variant
        if pretrained_path:
            self.net = _load_pretrained(model_cls, config, Path(str(pretrained_path)), variant)
        else:
            self.net = model_cls(config)
        self.checkpoint_blocks = (layer_cls,)
        self._setup_checkpointing(grad_checkpointing)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(pixel_values=x).logits  # (B, C, H/4, W/4)
        return F.interpolate(logits, size=x.shape[2:], mode="bilinear", align_corners=False)


def _load_pretrained(model_cls: type, config: object, path: Path, variant: str) -> nn.Module:
    """Hugging Face's own loader (it maps older key names); tensors of another shape, such as the
    classifier for another number of classes, stay randomly initialised."""
    import tempfile

    path = path.expanduser()
    if not path.exists():
        raise CheckpointError(f"model.pretrained_path={path} does not exist; give a weights file or a folder")
    with tempfile.TemporaryDirectory() as tmp:
        folder = path
        if path.is_file():  # a bare state dict: present it as a save_pretrained folder
            name = "model.safetensors" if path.suffix == ".safetensors" else "pytorch_model.bin"
            (Path(tmp) / name).symlink_to(path.resolve())
            folder = Path(tmp)
        try:
            net, info = model_cls.from_pretrained(
                str(folder),
                config=config,
                ignore_mismatched_sizes=True,
                local_files_only=True,
                output_loading_info=True,
            )
        except (OSError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"model.pretrained_path={path}: {' '.join(str(exc).split())[:300]}") from exc
    total = len(net.state_dict())
    fresh = len(info.get("missing_keys", [])) + len(info.get("mismatched_keys", []))
    if fresh >= total:
        raise CheckpointError(f"model.pretrained_path={path}: no tensor matches segformer_{variant}; check the variant")
    log.info(
        "segformer_%s: %d of %d tensors from %s (the rest initialised randomly)", variant, total - fresh, total, path
    )
    return net
