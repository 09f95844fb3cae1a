"""LPIPS perceptual distance (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric", arXiv 1801.03924), VGG16 variant, in plain torch (no torchvision).

    d(x, y) = sum_l mean_hw  w_l . (n(f_l(x)) - n(f_l(y)))^2

f_l: VGG16 (Simonyan & Zisserman 2015) activations at relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 of
inputs in [-1, 1] shifted/scaled to ImageNet statistics; n: unit L2 norm over channels; w_l >= 0: the
learned 1x1 "lin" layers. The weights are ImageNet-trained, so they are never downloaded here: the
user supplies ONE file by path (`--lpips-weights`), safetensors (preferred) or a `.pth` read with
`torch.load(weights_only=True)`, holding

    features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}  the 13 convs of torchvision's vgg16
    lin{0..4}.model.1.weight  (1, C, 1, 1), C = 64, 128, 256, 512, 512   the LPIPS v0.1 lin layers

Keys may carry a prefix (`loss.perceptual_loss.` ...); `net.slice{1..5}.N.*` (the lpips package and
taming-transformers naming, which keeps torchvision's index N) and `lins.K.model.1.weight` are read as
`features.N.*` and `linK.model.1.weight`; other keys (vgg's classifier) are ignored. To build the file
from the public weights (on a machine with internet):

    import torch; from safetensors.torch import save_file
    vgg = torch.load("vgg16-397923af.pth", weights_only=True)  # download.pytorch.org/models/vgg16-397923af.pth
    # github.com/richzhang/PerceptualSimilarity lpips/weights/v0.1/vgg.pth
    lin = torch.load("vgg.pth", weights_only=True)
    save_file({k: v for k, v in vgg.items() if k.startswith("features.")} | lin, "lpips_vgg16.safetensors")
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

# torchvision's vgg16 `features` config "D": output channels per conv, "M" a 2x2 max-pool
VGG16_CONFIG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                       512, 512, 512, "M", 512, 512, 512)
TAP_CHANNELS = (64, 128, 256, 512, 512)   # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3 (the ReLU before a pool)
SHIFT = (-0.030, -0.088, -0.188)          # LPIPS ScalingLayer: [-1, 1] inputs -> ImageNet-normalised
SCALE = (0.458, 0.448, 0.450)
_RENAMES = ((re.compile(r"(?:^|\.)net\.slice\d\.(\d+)\.(weight|bias)$"), r"features.\1.\2"),
            (re.compile(r"(?:^|\.)features\.(\d+)\.(weight|bias)$"), r"features.\1.\2"),
            (re.compile(r"(?:^|\.)lins?\.?(\d)\.model\.1\.weight$"), r"lin\1.model.1.weight"))


def vgg16_features() -> nn.Sequential:
    """VGG16 `features` up to relu5_3, with torchvision's module indices (so keys are `features.N.*`)."""
    layers: list[nn.Module] = []
    channels = 3
    for item in VGG16_CONFIG:
        if item == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, int(item), 3, padding=1), nn.ReLU()]
            channels = int(item)
    return nn.Sequential(*layers)


class LinLayer(nn.Module):
    """LPIPS NetLinLayer: (dropout, 1x1 conv to one channel, no bias); dropout is a no-op when frozen."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """Frozen LPIPS-VGG16: forward(x, y) with x, y (B, 3, H, W) in [-1, 1] -> distances (B,)."""

    shift: torch.Tensor  # buffers, (1, 3, 1, 1)
    scale: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.features = vgg16_features()
        for i, channels in enumerate(TAP_CHANNELS):
            setattr(self, f"lin{i}", LinLayer(channels))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Activations at the ReLU before each max-pool, and at the last ReLU."""
        out, h = [], (x - self.shift) / self.scale
        for layer in self.features:
            if isinstance(layer, nn.MaxPool2d):
                out.append(h)
            h = layer(h)
        return out + [h]

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        both = self.taps(torch.cat([x, y]))                                     # one pass for the pair
        total = x.new_zeros(len(x))
        for i, f in enumerate(both):
            fx, fy = (f / (f.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)).chunk(2)  # unit norm over channels
            total = total + getattr(self, f"lin{i}")((fx - fy) ** 2).mean((1, 2, 3))
        return total

    def train(self, mode: bool = True) -> LPIPS:
        return super().train(False)  # always frozen (eval), whatever the caller's model.train() does


def _read(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS weights file {path} not found: give the path of a safetensors or .pth "
                                f"file built as described in opencanvas/components/lpips.py")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- pickle errors come in many types
        raise ValueError(f"cannot read {path} as a torch state dict ({err}): convert it to safetensors as "
                         f"described in opencanvas/components/lpips.py") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a state dict of tensors")
    return data


def lpips_state_dict(raw: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The documented keys of `raw` (renamed as in the module docstring); other keys are dropped."""
    out = {}
    for key, value in raw.items():
        for pattern, repl in _RENAMES:
            if (m := pattern.search(key)) is not None:
                out[m.expand(repl)] = value
                break
    return out


def load_lpips(path: Path | str) -> LPIPS:
    """LPIPS-VGG16 with the weights of `path`; errors name the missing or malformed keys."""
    path = Path(path)
    model = LPIPS()
    weights = lpips_state_dict(_read(path))
    expected = model.state_dict()
    missing = [k for k in expected if k not in weights]
    if missing:
        raise ValueError(f"{path} lacks {len(missing)} LPIPS-VGG16 key(s): {', '.join(missing[:8])}"
                         f"{' ...' if len(missing) > 8 else ''}; build the file as described in "
                         f"opencanvas/components/lpips.py")
    wrong = [f"{k} {tuple(weights[k].shape)} (want {tuple(v.shape)})" for k, v in expected.items()
             if weights[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path} has tensors of the wrong shape: {', '.join(wrong[:4])}")
    if any((weights[f"lin{i}.model.1.weight"] < 0).any() for i in range(len(TAP_CHANNELS))):
        raise ValueError(f"{path} has negative lin-layer weights: LPIPS lin weights are non-negative; is "
                         f"this the LPIPS v0.1 vgg.pth?")
    model.load_state_dict({k: weights[k].float() for k in expected})
    return model
