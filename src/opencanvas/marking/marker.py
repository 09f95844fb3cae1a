"""The one hook that marks every image `sample`, `eval` and the web app write.

The writer of an image (sample.pngmeta) calls `mark_image_bytes`; the command that starts the
run chooses how to sign with `use_marker(...)` around it. Without credentials the image still
gets XMP; with them it also gets a signed C2PA manifest.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar, Token
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from opencanvas.marking.xmp import PNG_XMP_KEY, xmp_packet

if TYPE_CHECKING:  # c2pa and cryptography load when an image is signed, not with the CLI
    from opencanvas.marking.certificates import SigningCredentials

NO_C2PA_NOTICE = ("note: images carry XMP (IPTC trainedAlgorithmicMedia) but no C2PA manifest; to sign them, "
                  "run `opencanvas c2pa make-test-cert` and pass --c2pa-cert/--c2pa-key (or set [c2pa] cert/key "
                  "in opencanvas.toml)")
FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}


@dataclass(frozen=True)
class Marker:
    credentials: SigningCredentials | None = None
    omit_prompt: bool = False  # --c2pa-omit-prompt: the manifest leaves out prompt and seed


_ACTIVE: ContextVar[Marker | None] = ContextVar("opencanvas_marker", default=None)
# A server (`opencanvas serve`) writes images from worker threads, which start with an empty
# context; the marker it is started with applies to the whole process.
_process_marker: Marker | None = None


def set_process_marker(marker: Marker | None) -> None:
    """Mark every image this process writes with `marker` (unless a block chose another); None clears it."""
    global _process_marker
    _process_marker = marker


def activate(marker: Marker) -> Token[Marker | None]:
    """Mark every image written from now on with `marker`, until `deactivate(token)`."""
    return _ACTIVE.set(marker)


def deactivate(token: Token[Marker | None]) -> None:
    _ACTIVE.reset(token)


@contextmanager
def use_marker(marker: Marker) -> Iterator[Marker]:
    """Mark every image written inside the block with `marker`."""
    token = activate(marker)
    try:
        yield marker
    finally:
        deactivate(token)


def resolve_marker(settings: dict[str, Any], root: Path, cert: Path | None, key: Path | None,
                   omit_prompt: bool = False) -> Marker:
    """Marker from --c2pa-cert/--c2pa-key, else `[c2pa] cert/key` in opencanvas.toml (relative to the
    workspace); ValueError (before any image is written) when they cannot sign."""
    table = settings.get("c2pa", {}) if isinstance(settings.get("c2pa"), dict) else {}
    cert = cert or (root / table["cert"] if table.get("cert") else None)
    key = key or (root / table["key"] if table.get("key") else None)
    omit_prompt = omit_prompt or bool(table.get("omit_prompt", False))
    if cert is None and key is None:
        return Marker(None, omit_prompt)
    if cert is None or key is None:
        raise ValueError("C2PA signing needs both a certificate and a key: give --c2pa-cert and --c2pa-key")
    from opencanvas.marking.certificates import load_credentials

    return Marker(load_credentials(cert, key), omit_prompt)


def generation_claims(meta: dict[str, Any], omit_prompt: bool) -> dict[str, Any]:
    """Our C2PA assertion: run, weights, training data and (unless omitted) prompt and seed."""
    claims = {"run": meta.get("model", "unknown"), "weights_sha256": meta.get("weights_hash", "unknown"),
              "catalog_hash": meta.get("catalog_hash", "unknown"),
              "license_policy": meta.get("license_policy", "unknown")}
    if not omit_prompt:
        claims |= {"prompt": meta.get("prompt", ""), "negative_prompt": meta.get("negative_prompt", ""),
                   "seed": meta.get("seed")}
    return claims


def png_info_with_xmp(info: PngInfo, meta: dict[str, Any]) -> PngInfo:
    info.add_itxt(PNG_XMP_KEY, xmp_packet(meta))
    return info


def mark_image_bytes(data: bytes, mime: str, meta: dict[str, Any], title: str = "image") -> bytes:
    """Sign encoded image bytes (which already carry XMP) with the active marker; unchanged without one."""
    marker = _ACTIVE.get() or _process_marker
    if marker is None or marker.credentials is None:
        return data
    from opencanvas.marking.manifest import sign_image

    return sign_image(data, mime, generation_claims(meta, marker.omit_prompt), marker.credentials, title)


def encode_marked(image: Image.Image, meta: dict[str, Any], fmt: str = "png", quality: int = 95) -> bytes:
    """`image` encoded as png, jpeg or webp with XMP, then signed by the active marker."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}: choose one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    if fmt == "png":
        image.save(buf, format="PNG", pnginfo=png_info_with_xmp(PngInfo(), meta))
    else:
        xmp = xmp_packet(meta, with_generation=True).encode("utf-8")
        image.convert("RGB").save(buf, format=fmt.upper(), quality=quality, xmp=xmp)
    return mark_image_bytes(buf.getvalue(), FORMATS[fmt], meta)
