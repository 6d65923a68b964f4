"""Optional parameter and gradient histograms every N epochs (trainer.log_histograms_every_n_epochs).

Gradients are those of the last optimizer step of the epoch (after unscaling and clipping): a
post-accumulate-grad hook keeps a reference to each parameter's gradient, no copy.
"""

from __future__ import annotations

from typing import Any

from medseg.engine.callbacks import Callback

BINS = 64


class ParameterHistograms(Callback):
    def __init__(self, trackers: list[Any], every_n_epochs: int) -> None:
        self.trackers, self.every_n_epochs = trackers, int(every_n_epochs)
        self.grads: dict[str, Any] = {}
        self.handles: list[Any] = []

    def on_fit_start(self, trainer: Any) -> None:
        if self.every_n_epochs <= 0 or not trainer.is_main_process:
            return
        for name, param in trainer._unwrapped().named_parameters():
            if param.requires_grad:
                self.handles.append(param.register_post_accumulate_grad_hook(self._keeper(name)))

    def _keeper(self, name: str) -> Any:
        def keep(param: Any) -> None:
            self.grads[name] = param.grad

        return keep

    def on_epoch_end(self, trainer: Any, record: dict[str, Any]) -> None:
        if self.every_n_epochs <= 0 or not trainer.is_main_process or trainer.epoch % self.every_n_epochs:
            return
        histograms = {}
        for name, param in trainer._unwrapped().named_parameters():
            histograms[f"params/{name}"] = histogram(param.detach())
            if self.grads.get(name) is not None:
                histograms[f"grads/{name}"] = histogram(self.grads[name].detach())
        self.grads.clear()
        for tracker in self.trackers:
            tracker.log_histograms(histograms, step=trainer.global_step)

    def on_fit_end(self, trainer: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles, self.grads = [], {}


def histogram(values: Any) -> tuple[Any, Any]:
    """(counts, edges) as numpy arrays, computed on the tensor's own device."""
    import torch

    v = values.float().flatten()
    v = v[torch.isfinite(v)]
    if v.numel() == 0:
        v = torch.zeros(1, device=values.device)
    lo, hi = v.min(), v.max()
    lo_f, hi_f = (float(x) for x in torch.stack([lo, hi]).tolist())
    if hi_f <= lo_f:
        lo_f, hi_f = lo_f - 0.5, hi_f + 0.5
    counts = torch.histc(v, bins=BINS, min=lo_f, max=hi_f)
    edges = torch.linspace(lo_f, hi_f, BINS + 1)
    return counts.cpu().numpy(), edges.numpy()
