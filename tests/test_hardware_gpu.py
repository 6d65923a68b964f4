"""On a GPU: the 4gb and 8gb presets train the default model at their scale within their memory.

The card is shrunk with torch.cuda.set_per_process_memory_fraction to emulate a 4 GB and an 8 GB
card. Skipped without CUDA.
"""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.gpu

# 512 x 512 slices: the 4gb preset trains at 128 x 128, the 8gb preset at 256 x 256.
DATA = ["data.synthetic.num_cases=4", "data.synthetic.shape=[512,512,8]", "data.val_percent=25"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("preset", ["4gb", "8gb"])
def test_preset_trains_within_its_memory(compose, preset):
    from medseg.tasks.train import run_train

    gib = {"4gb": 4, "8gb": 8}[preset]
    total = torch.cuda.get_device_properties(0).total_memory
    if total < gib * 2**30:
        pytest.skip(f"the GPU has less than {gib} GiB")
    cfg = compose(
        f"hardware={preset}",
        *DATA,
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=32",  # a few optimizer steps at the preset's accumulation
        "trainer.limit_val_batches=4",
        "trainer.oom_recovery=false",  # running out of memory fails the test instead of being absorbed
        "hardware.num_workers=0",
        "logger=none",
        "print_config=false",
        tiny=False,
    )
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.set_per_process_memory_fraction(gib * 2**30 / total)
    try:
        best = run_train(cfg)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    assert best is not None
    assert torch.cuda.max_memory_reserved() <= gib * 2**30
