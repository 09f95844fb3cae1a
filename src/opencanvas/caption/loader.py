"""Background decoding: images are decoded, center-cropped and resized in worker processes.

CommonCanvas captions a center crop resized to 512 px (the stored image keeps
its resolution). Decoding and resizing are CPU work that would otherwise stall
the GPU, so a torch DataLoader runs them in `workers` processes while the model
generates, keeping `prefetch` batches ready.

With a fixed-size image processor (BLIP, BLIP-2) the workers also run it, so a
batch arrives as one (B, 3, H, W) float tensor; otherwise as a list of PIL images
for the model's own processor.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from PIL import Image

from opencanvas import pixels
from opencanvas.fetch.decode import load_rgb


def describe_preprocessing(crop_size: int) -> str:
    """The preprocessing string recorded on every caption row."""
    return f"center-crop {crop_size}" if crop_size > 0 else "full image"


def center_crop_resize(img: Image.Image, size: int) -> Image.Image:
    """The largest centred square, resized to `size` x `size` (bicubic); `size` 0 keeps the image."""
    return pixels.center_crop_resize(img, size) if size > 0 else img


@dataclass(frozen=True)
class DecodedItem:
    index: int
    pixels: Any          # (3, H, W) float tensor, PIL image, or None when decoding failed
    error: str = ""


class ImageRecords:
    """Map-style dataset over encoded images (picklable, so DataLoader workers can run it)."""

    def __init__(self, images: Sequence[bytes], crop_size: int, image_processor: Any = None) -> None:
        self.images = images
        self.crop_size = crop_size
        self.image_processor = image_processor

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> DecodedItem:
        try:
            # A large JPEG is decoded at a reduced DCT scale (~4x faster) that still covers the crop.
            img = center_crop_resize(load_rgb(self.images[i], min_side=self.crop_size), self.crop_size)
        except Exception as e:  # noqa: BLE001 -- corrupt bytes: the row is kept and flagged, the batch goes on
            return DecodedItem(i, None, f"unreadable: {type(e).__name__}")
        if self.image_processor is None:
            return DecodedItem(i, img)
        pixel_values = self.image_processor(images=[img], return_tensors="pt")["pixel_values"]  # (1, 3, H, W)
        return DecodedItem(i, pixel_values[0])


@dataclass(frozen=True)
class DecodedBatch:
    indices: list[int]        # positions of decoded images in the input order
    pixels: Any               # (B, 3, H, W) tensor or list of PIL images, B = len(indices)
    failed: list[tuple[int, str]]


def collate(items: list[DecodedItem]) -> DecodedBatch:
    import torch

    ok = [it for it in items if it.pixels is not None]
    failed = [(it.index, it.error) for it in items if it.pixels is None]
    if ok and isinstance(ok[0].pixels, torch.Tensor):
        pixels: Any = torch.stack([it.pixels for it in ok])
    else:
        pixels = [it.pixels for it in ok]
    return DecodedBatch([it.index for it in ok], pixels, failed)


def decoded_batches(images: Sequence[bytes], *, batch_size: int, crop_size: int, workers: int,
                    image_processor: Any = None, prefetch: int = 2) -> Iterator[DecodedBatch]:
    """Batches in input order, decoded by `workers` background processes (0: in this process)."""
    from torch.utils.data import DataLoader

    dataset = ImageRecords(images, crop_size, image_processor)
    workers = min(workers, max(1, len(images) // max(1, batch_size)))
    # ImageRecords is a map-style dataset without torch's base class (this module loads without torch).
    loader: DataLoader[Any] = DataLoader(cast(Any, dataset), batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate, prefetch_factor=prefetch if workers > 0 else None,
                        pin_memory=False)
    yield from loader
