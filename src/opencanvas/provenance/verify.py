"""`opencanvas verify`: does an image carry a valid C2PA manifest and the IPTC mark, and does its
claimed model match the run in this workspace?"""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from opencanvas.marking.manifest import ManifestCheck, read_manifest
from opencanvas.marking.xmp import TRAINED_ALGORITHMIC_MEDIA, read_xmp_fields
from opencanvas.workspace import Workspace


@dataclass
class RunCheck:
    """The claimed weights hash against the run of that name in this workspace."""

    run: str
    matches: bool | None  # None: the run is not in this workspace
    detail: str


@dataclass
class ImageVerdict:
    path: str
    valid: bool
    reasons: list[str]
    manifest: ManifestCheck
    xmp: dict[str, str] = field(default_factory=dict)
    workspace: RunCheck | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_weights_hashes(ws: Workspace, run: str) -> set[str]:
    """tensors_hash of the raw and EMA weights of every checkpoint the run kept (what `sample` reports)."""
    from opencanvas.train.checkpoint import list_checkpoints, load_checkpoint, tensors_hash

    hashes: set[str] = set()
    for path in list_checkpoints(ws.run_dir(run)):
        ckpt = load_checkpoint(path, parts=("model", "ema"))
        hashes |= {tensors_hash(state) for state in (ckpt.model, ckpt.ema) if state}
    return hashes


def check_run(ws: Workspace, run: str, weights_sha256: str) -> RunCheck:
    if not ws.run_dir(run).is_dir():
        return RunCheck(run, None, f"run {run!r} is not in this workspace; weights not cross-checked")
    if weights_sha256 in run_weights_hashes(ws, run):
        return RunCheck(run, True, f"weights match a checkpoint of run {run!r}")
    return RunCheck(run, False, f"claimed weights {weights_sha256[:16]}… match no checkpoint of run {run!r}")


def verify_image(path: Path, ws: Workspace | None = None) -> ImageVerdict:
    """Read the manifest and XMP of one image and say whether it holds, and why not."""
    data = Path(path).read_bytes()
    check = read_manifest(data)
    try:
        with Image.open(io.BytesIO(data)) as img:
            xmp = read_xmp_fields(img.info.get("xmp") or img.info.get("XML:com.adobe.xmp"))
    except (UnidentifiedImageError, OSError):
        xmp = {}
    reasons = list(check.reasons)
    if check.present and check.digital_source_type != TRAINED_ALGORITHMIC_MEDIA:
        reasons.append(f"manifest's c2pa.created action has source type {check.digital_source_type!r}, "
                       "not trainedAlgorithmicMedia")
    if xmp.get("digital_source_type") != TRAINED_ALGORITHMIC_MEDIA:
        reasons.append("no XMP Iptc4xmpExt:DigitalSourceType trainedAlgorithmicMedia")
    run_check = None
    run, weights = check.generation.get("run"), check.generation.get("weights_sha256")
    if ws is not None and check.valid and run and weights:
        run_check = check_run(ws, str(run), str(weights))
        if run_check.matches is False:
            reasons.append(run_check.detail)
    return ImageVerdict(str(path), not reasons, reasons, check, xmp, run_check)
