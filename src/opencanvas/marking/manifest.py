"""C2PA manifests on generated images, written and read with c2pa-python.

Each image gets a `c2pa.created` action with the IPTC digital source type `trainedAlgorithmicMedia`
and our own assertion (`org.opencanvas.generation`) naming the run, weights, training data and,
unless left out, the prompt and seed. The manifest hashes the image bytes, so changing a pixel
after signing makes `read_manifest` report a data-hash mismatch.
"""

from __future__ import annotations

import io
import json
from dataclasses import asdict, dataclass, field
from functools import cache
from typing import Any

import c2pa

from opencanvas import __version__
from opencanvas.marking.certificates import SigningCredentials
from opencanvas.marking.xmp import TRAINED_ALGORITHMIC_MEDIA

GENERATION_LABEL = "org.opencanvas.generation"
# Failures that say nothing against the image: a local certificate is on no trust list, and
# revocation (OCSP) is not fetched offline. Trust is reported on its own.
_TRUST_ONLY = {"signingCredential.untrusted", "signingCredential.ocsp.skipped"}
MIME_BY_MAGIC = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"), (b"RIFF", "image/webp"))


def sniff_mime(data: bytes) -> str:
    for magic, mime in MIME_BY_MAGIC:
        if data.startswith(magic):
            return mime
    raise ValueError("not a PNG, JPEG or WebP image")


@cache
def _context() -> c2pa.Context:
    # The default claim thumbnail costs ~270 ms per 512-px image; the image is its own thumbnail.
    return c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}})


def _signer(creds: SigningCredentials) -> c2pa.Signer:
    info = c2pa.C2paSignerInfo(creds.alg, creds.cert_chain_pem, creds.private_key_pem, None)
    return c2pa.Signer.from_info(info)


def manifest_definition(claims: dict[str, Any], title: str, mime: str) -> dict[str, Any]:
    return {
        "claim_generator_info": [{"name": "opencanvas", "version": __version__}],
        "title": title,
        "format": mime,
        "assertions": [
            {"label": "c2pa.actions", "data": {"actions": [
                {"action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                 "softwareAgent": {"name": "opencanvas", "version": __version__}}]}},
            {"label": GENERATION_LABEL, "data": claims},
        ],
    }


def sign_image(data: bytes, mime: str, claims: dict[str, Any], creds: SigningCredentials,
               title: str = "image") -> bytes:
    """`data` with an embedded, signed C2PA manifest holding `claims` (raises c2pa.C2paError on failure)."""
    out = io.BytesIO()
    with c2pa.Builder(manifest_definition(claims, title, mime), context=_context()) as builder, \
            _signer(creds) as signer:
        builder.sign(signer, mime, io.BytesIO(data), out)
    return out.getvalue()


@dataclass
class ManifestCheck:
    """What an image's C2PA manifest says, and whether it holds."""

    present: bool
    valid: bool
    reasons: list[str] = field(default_factory=list)  # why not valid
    trusted: bool = False  # signer on a C2PA trust list (never, for a local test certificate)
    signer: str | None = None
    issuer: str | None = None
    digital_source_type: str | None = None
    generation: dict[str, Any] = field(default_factory=dict)  # our assertion

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def read_manifest(data: bytes) -> ManifestCheck:
    """Read and validate the active C2PA manifest embedded in `data` (PNG, JPEG or WebP)."""
    try:
        reader = c2pa.Reader.try_create(sniff_mime(data), io.BytesIO(data))
    except (ValueError, c2pa.C2paError) as e:
        return ManifestCheck(present=False, valid=False, reasons=[f"cannot read the manifest: {e}"])
    if reader is None:
        return ManifestCheck(present=False, valid=False, reasons=["no C2PA manifest"])
    with reader:
        active = reader.get_active_manifest() or {}
        state = reader.get_validation_state() or "Invalid"
        results = (reader.get_validation_results() or {}).get("activeManifest", {})
    failures = results.get("failure", [])
    reasons = [f"{f.get('code')}: {f.get('explanation')}" for f in failures if f.get("code") not in _TRUST_ONLY]
    if state not in ("Valid", "Trusted") and not reasons:
        reasons = [f"validation state {state}"]
    check = ManifestCheck(present=True, valid=not reasons, reasons=reasons, trusted=state == "Trusted")
    sig = active.get("signature_info") or {}
    check.signer, check.issuer = sig.get("common_name"), sig.get("issuer")
    for assertion in active.get("assertions", []):
        label, body = assertion.get("label", ""), assertion.get("data") or {}
        if label.startswith("c2pa.actions"):
            created = [a for a in body.get("actions", []) if a.get("action") == "c2pa.created"]
            if created:
                check.digital_source_type = created[0].get("digitalSourceType")
        elif label == GENERATION_LABEL:
            check.generation = body if isinstance(body, dict) else json.loads(body)
    return check
