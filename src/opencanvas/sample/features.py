"""Image feature extractors for distribution metrics.

- `InceptionFeatures`: the FID Inception-v3 (TF 2015-12-05 weights) as the
  TorchScript file clean-fid uses, with clean-fid's "clean" preprocessing:
  PIL bicubic resize to 299x299 per channel in float, no quantisation, values
  in [0, 255] (Parmar et al. 2022, "On Aliased Resizing and Surprising
  Subtleties in GAN Evaluation"). The weights are given by path; nothing is
  downloaded.
- `ClipFeatures`: a `ClipEvaluator` (opencanvas.components) viewed as a feature
  extractor; its scores are named FD-CLIP / KID-CLIP, never FID.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image

INCEPTION_FILE = "inception-2015-12-05.pt"
INCEPTION_URL = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/inception-2015-12-05.pt"
INCEPTION_SIZE = 299


class FeatureExtractor(Protocol):
    name: str             # e.g. "inception-2015-12-05" or the CLIP's name
    fd_name: str          # "FID" for Inception features, "FD-CLIP" for CLIP features
    kid_name: str         # "KID" / "KID-CLIP"

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


def clean_resize(image: Image.Image, size: int = INCEPTION_SIZE) -> np.ndarray:
    """clean-fid's PIL bicubic resize, each channel in float32 ('F' mode): (size, size, 3) float32 in [0, 255]."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    channels = [np.asarray(Image.fromarray(arr[:, :, c], mode="F").resize((size, size), Image.Resampling.BICUBIC))
                for c in range(3)]
    return np.clip(np.stack(channels, axis=2), 0, 255)


class InceptionFeatures:
    """2048-d pool features of the FID Inception network (clean-fid's TorchScript file)."""

    fd_name, kid_name = "FID", "KID"

    def __init__(self, path: Path, device: str = "cpu", batch_size: int = 32) -> None:
        import torch

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"Inception weights not found at {path}: FID/KID need clean-fid's TorchScript file {INCEPTION_FILE} "
                f"(from {INCEPTION_URL}); download it on a machine with internet and pass --inception PATH, "
                "or leave out --inception to get FD-CLIP/KID-CLIP instead")
        # TorchScript, not pickle: the file holds a graph and tensors, no arbitrary Python. torch
        # deprecates TorchScript, but clean-fid's reference network ships only in this form.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            self.model = torch.jit.load(str(path), map_location=device).eval()
        self.device, self.batch_size = device, batch_size
        self.name = path.stem

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                batch = np.stack([clean_resize(im) for im in images[i:i + self.batch_size]])   # (B, 299, 299, 3)
                x = torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device)                # (B, 3, 299, 299)
                out.append(self.model(x, return_features=True).reshape(len(batch), -1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 2048), np.float32)


class ClipFeatures:
    """L2-normalised CLIP image embeddings of a ClipEvaluator."""

    fd_name, kid_name = "FD-CLIP", "KID-CLIP"

    def __init__(self, evaluator: Any) -> None:
        self.evaluator = evaluator
        self.name = str(evaluator.name)

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        return np.asarray(self.evaluator.image_features(list(images)), dtype=np.float64)
