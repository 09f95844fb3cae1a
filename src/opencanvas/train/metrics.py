"""UNet training metrics: FLOPs and MFU (the log itself is opencanvas.training.metrics_log).

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOP/s / peak
FLOP/s. Model FLOPs per image are counted once by torch's FlopCounterMode on a
forward pass (x3 for forward + backward); the peak is known only for GPUs in
`PEAK_BF16_FLOPS`, so on CPU the log has achieved TFLOP/s but no MFU.
"""

from __future__ import annotations

import resource

import torch
from torch import nn

from opencanvas.diffusion.conditioning import Conditioning, unet_inputs

# Dense bf16 tensor-core peaks (no sparsity), from the vendors' datasheets.
PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def peak_flops(device: torch.device, bf16: bool) -> float | None:
    """Per-device peak for the MFU denominator (None where unknown, e.g. CPUs)."""
    if device.type != "cuda" or not bf16:
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


@torch.no_grad()
def train_flops_per_image(unet: nn.Module, latent_shape: tuple[int, int, int], text_shape: tuple[int, int],
                          device: torch.device, cond: Conditioning | None = None) -> float:
    """3x the forward FLOPs of one image (backward costs about twice the forward).

    cond: a batch-1 conditioning of the run's mode (class labels, several captions), else zero text of text_shape.
    """
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = latent_shape
    x = torch.zeros(1, c, h, w, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    cond = cond if cond is not None else Conditioning(torch.zeros(1, *text_shape, device=device))
    counter = FlopCounterMode(display=False)
    with counter:
        unet(x, t, **unet_inputs(unet, cond.to(device)))
    return 3.0 * counter.get_total_flops()


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
