"""Training metrics: metrics.jsonl, TensorBoard scalars, FLOPs and MFU.

MFU (model FLOPs utilisation, PaLM appendix B) = achieved model FLOP/s / peak
FLOP/s. Model FLOPs per image are counted once by torch's FlopCounterMode on a
forward pass (x3 for forward + backward); the peak is known only for GPUs in
`PEAK_BF16_FLOPS`, so on CPU the log has achieved TFLOP/s but no MFU.
"""

from __future__ import annotations

import json
import math
import resource
from pathlib import Path
from typing import Any

import torch
from torch import nn

from opencanvas.storage import atomic_write_text

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
                          device: torch.device) -> float:
    """3x the forward FLOPs of one image (backward costs about twice the forward)."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = latent_shape
    x = torch.zeros(1, c, h, w, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    ehs = torch.zeros(1, *text_shape, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        unet(x, t, encoder_hidden_states=ehs)
    return 3.0 * counter.get_total_flops()


def memory_gb(device: torch.device) -> float:
    """Peak memory: CUDA allocator peak, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class MetricsLog:
    """metrics.jsonl + TensorBoard, keyed by images seen (rank 0 only)."""

    def __init__(self, run_dir: Path, images_seen: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.path = Path(run_dir) / "metrics.jsonl"
        truncate_after(self.path, images_seen)
        # purge_step drops events a killed run logged after its last checkpoint.
        self.tb = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=images_seen or None)
        self._file = self.path.open("a")

    def log(self, images_seen: int, scalars: dict[str, Any]) -> None:
        # Non-finite values (a skipped step's loss) become null: NaN is not JSON.
        clean = {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in scalars.items()}
        self._file.write(json.dumps({"images_seen": images_seen, **clean}) + "\n")
        self._file.flush()
        for k, v in clean.items():
            if isinstance(v, (int, float)):
                self.tb.add_scalar(f"train/{k}", v, images_seen)

    def image(self, tag: str, pixels_hwc: Any, images_seen: int) -> None:
        self.tb.add_image(tag, pixels_hwc, images_seen, dataformats="HWC")

    def close(self) -> None:
        self._file.close()
        self.tb.close()


def truncate_after(path: Path, images_seen: int) -> None:
    """Drop rows logged after `images_seen` (a killed run's steps that will be redone)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["images_seen"] <= images_seen:
                kept.append(line)
        except (json.JSONDecodeError, KeyError):
            continue  # a line cut by the kill
    atomic_write_text(path, "".join(line + "\n" for line in kept))
