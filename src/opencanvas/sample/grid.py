"""Contact sheet: images in a grid with their prompts written under them."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

MIN_CELL = 128  # small samples are upscaled (nearest) so the prompt text stays readable


def contact_sheet(images: Sequence[Image.Image], captions: Sequence[str], columns: int | None = None,
                  caption_lines: int = 3, font_size: int = 12, pad: int = 4) -> Image.Image:
    """A white sheet of cells: image on top, wrapped caption (at most `caption_lines` lines) below."""
    if len(images) != len(captions):
        raise ValueError(f"{len(images)} images but {len(captions)} captions")
    if not images:
        raise ValueError("no images for a contact sheet")
    columns = columns or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / columns)
    w, h = images[0].size
    if min(w, h) < MIN_CELL:
        factor = math.ceil(MIN_CELL / min(w, h))
        w, h = w * factor, h * factor
    font = ImageFont.load_default(size=font_size)
    line_h = font_size + 2
    chars = max(8, int(w / (font_size * 0.55)))
    cell_w, cell_h = w + 2 * pad, h + 2 * pad + caption_lines * line_h
    sheet = Image.new("RGB", (columns * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, caption) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell_w + pad, (i // columns) * cell_h + pad
        sheet.paste(image.convert("RGB").resize((w, h), Image.Resampling.NEAREST), (x, y))
        lines = textwrap.wrap(caption, chars) or [""]
        if len(lines) > caption_lines:
            lines = lines[:caption_lines]
            lines[-1] = lines[-1][: max(0, chars - 1)] + "…"
        for j, line in enumerate(lines):
            draw.text((x, y + h + 2 + j * line_h), line, fill="black", font=font)
    return sheet
